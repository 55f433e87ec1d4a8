#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: patch
short_description: Apply or remove a suture livepatch on a host
description:
  - Runs C(suture ... --json) on the host. With O(state=present) it installs (or only loads) a livepatch module
    from a C(.ko) or a C(.deb) made by C(suture package), waiting for the kernel's patching transition up to
    O(timeout) seconds (suture reverses the transition at the deadline and names the blocking tasks).
  - With O(state=absent) it unloads and uninstalls the patch.
  - Idempotent. A patch whose exact build (srcversion) is already applied is left alone.
version_added: "0.1.0"
author: suture developers (@suture)
options:
  src:
    description:
      - Path on the host of the livepatch module (C(.ko)) or of its package (C(.deb)).
      - Required with O(state=present); with O(state=absent) it may stand in for O(name).
    type: path
  name:
    description:
      - The patch's name (its module name, as C(suture list) shows it). Read from O(src) when not given.
    type: str
  state:
    description: Whether the patch should be applied or gone.
    type: str
    choices: [present, absent]
    default: present
  persist:
    description:
      - Install the patch so the boot unit loads it again after a reboot (C(suture install)); when false it is
        only loaded (C(suture load)). Ignored for a C(.deb), whose scripts always install.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for the patching or unpatching transition.
    type: float
    default: 60
  suture:
    description: The suture command on the host.
    type: path
    default: suture
  gates:
    description:
      - Health gates around the change, in the same run on the host (each task is a Python start there, which is
        most of a task's time on a busy host). The baseline is taken before the change; after it, the task fails
        unless every gate of M(suture.livepatch.health) holds (no transition in progress, a clean kernel log, only
        the allowed taint, the probe exits 0). They run when nothing had to change too, and never in check mode.
      - Unset, no gates run (M(suture.livepatch.health) runs them as tasks of their own).
    type: dict
    suboptions:
      allowed_taint:
        description: Taint flags that may appear after the baseline (C(K) livepatch, C(O) out of tree, C(E) unsigned).
        type: str
        default: K
      probe:
        description: A shell command that must exit 0. Empty for none.
        type: str
        default: ""
      soak:
        description: Seconds to wait after the change before checking.
        type: float
        default: 0
notes:
  - Supports check mode; the result then says what would change.
  - Returns the facts C(suture_patch_level) and C(suture_applied_patches).
"""

EXAMPLES = r"""
- name: Apply the fix and keep it across reboots
  suture.livepatch.patch:
    src: /var/tmp/fix.ko
    timeout: 120

- name: Apply it and check the host's health in the same run
  suture.livepatch.patch:
    src: /var/tmp/fix.ko
    gates:
      probe: systemctl is-active nginx
      allowed_taint: KOE
  register: applied

- name: Remove it
  suture.livepatch.patch:
    name: fix
    state: absent
"""

RETURN = r"""
name:
  description: The patch's name.
  returned: always
  type: str
patch_level:
  description: The effective patch level, release plus the applied patches (as C(suture status) prints it).
  returned: always
  type: str
  sample: 6.1.0-56-amd64+fix
applied:
  description: Names of the applied patches after the task.
  returned: always
  type: list
  elements: str
result:
  description: suture's JSON document for the change made (absent when nothing changed).
  returned: changed
  type: dict
seconds:
  description: Wall-clock time of the change, from reading the patch to suture's return (transition included).
  returned: changed
  type: float
gates:
  description: With O(gates), each gate's name and outcome, with the evidence (as M(suture.livepatch.health) returns them).
  returned: O(gates) set and not check mode
  type: list
  elements: dict
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.suture.livepatch.plugins.module_utils.suture_core import (
    SutureError,
    absent_is_satisfied,
    applied_names,
    modinfo,
    parse_suture_json,
    patch_identity,
    present_is_satisfied,
    update_of,
)
from ansible_collections.suture.livepatch.plugins.module_utils import suture_health


def run_json(module, args, what):
    rc, out, err = module.run_command(args)
    try:
        return parse_suture_json(out, rc, what)
    except SutureError as e:
        module.fail_json(msg="%s%s" % (e, ("; stderr: " + err.strip()) if err.strip() else ""), rc=rc)


def status(module, suture):
    return run_json(module, [suture, "status", "--json"], "suture status")["status"]


def deb_identity(module, deb):
    """(package, version, patch name) of a package `suture package` made:
    the module it ships is usr/lib/suture/patches/RELEASE/NAME.ko."""
    fields = {}
    for f in ("Package", "Version"):
        rc, out, err = module.run_command(["dpkg-deb", "-f", deb, f])
        if rc != 0:
            module.fail_json(msg="%s is not a readable .deb: %s" % (deb, err.strip()))
        fields[f] = out.strip()
    rc, out, err = module.run_command(["dpkg-deb", "-c", deb])
    names = [
        os.path.basename(line.split()[-1])[:-3]
        for line in out.splitlines()
        if "/usr/lib/suture/patches/" in line and line.rstrip().endswith(".ko")
    ]
    if rc != 0 or len(names) != 1:
        module.fail_json(
            msg="%s does not ship exactly one module under /usr/lib/suture/patches/ (make it with `suture package`)" % deb
        )
    return fields["Package"], fields["Version"], names[0].replace("-", "_")


def installed_version(module, package):
    rc, out, dummy = module.run_command(["dpkg-query", "-W", "-f=${Status} ${Version}", package])
    if rc != 0 or not out.startswith("install ok installed"):
        return None
    return out.split()[-1]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path"),
            name=dict(type="str"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            persist=dict(type="bool", default=True),
            timeout=dict(type="float", default=60),
            suture=dict(type="path", default="suture"),
            gates=dict(
                type="dict",
                options=dict(
                    allowed_taint=dict(type="str", default="K"),
                    probe=dict(type="str", default=""),
                    soak=dict(type="float", default=0),
                ),
            ),
        ),
        required_if=[("state", "present", ["src"])],
        required_one_of=[("src", "name")],
        supports_check_mode=True,
    )
    p = module.params
    started = time.time()
    suture = p["suture"]
    if os.sep in suture and not os.access(suture, os.X_OK):
        module.fail_json(msg="%s is not an executable suture binary: copy it to the host first" % suture)
    elif os.sep not in suture and module.get_bin_path(suture) is None:
        module.fail_json(msg="%s not found on the host's PATH: install the suture package or set suture=PATH" % suture)

    src = p["src"]
    is_deb = bool(src) and src.endswith(".deb")
    if src and not os.path.isfile(src):
        module.fail_json(msg="%s does not exist on the host: copy it there first (ansible.builtin.copy)" % src)
    name, srcversion, package, version = p["name"], None, None, None
    if src and is_deb:
        package, version, name_from_src = deb_identity(module, src)
    elif src:
        try:
            with open(src, "rb") as f:
                name_from_src, srcversion, dummy = patch_identity(modinfo(f.read()))
        except (IOError, OSError, SutureError) as e:
            module.fail_json(msg="%s: %s" % (src, e))
    if src:
        if name and name != name_from_src:
            module.fail_json(msg="name=%s but %s is the patch %s" % (name, src, name_from_src))
        name = name_from_src

    before = status(module, suture)
    gates = p["gates"] if not module.check_mode else None
    try:
        baseline = suture_health.snapshot()[0] if gates is not None else None
    except (IOError, OSError, ValueError) as e:
        module.fail_json(msg="health gate could not run: %s" % e)
    persist = p["persist"] or is_deb
    timeout = "%g" % p["timeout"]
    if p["state"] == "present":
        done = present_is_satisfied(before, name, srcversion, persist)
        if done and is_deb:
            done = installed_version(module, package) == version
    else:
        done = absent_is_satisfied(before, name)
        if done and package:
            done = installed_version(module, package) is None

    result = dict(changed=not done, name=name)
    after = before
    if not done and not module.check_mode:
        result["result"] = change(module, p, suture, src, name, package, version, persist, is_deb, timeout)
        result["seconds"] = round(time.time() - started, 3)
        after = status(module, suture)
    level = after["effective_version"]
    applied = applied_names(after)
    result.update(patch_level=level, applied=applied)
    if not done and not module.check_mode:
        if p["state"] == "present" and name not in applied:
            module.fail_json(msg="%s was loaded but is not applied (suture status: %s)" % (name, level), **result)
        if p["state"] == "absent" and name in applied:
            module.fail_json(msg="%s is still applied after removal (suture status: %s)" % (name, level), **result)

    if gates is not None:
        try:
            result["gates"], dummy = suture_health.check(
                module, baseline, lambda: status(module, suture), gates["allowed_taint"], gates["probe"], gates["soak"]
            )
        except (IOError, OSError, ValueError) as e:
            module.fail_json(msg="health gate could not run: %s" % e, **result)
        msg = suture_health.failure(result["gates"])
        if msg:
            module.fail_json(msg=msg, **result)
    module.exit_json(ansible_facts=dict(suture_patch_level=level, suture_applied_patches=applied, suture_update=update_of(after)), **result)


def change(module, p, suture, src, name, package, version, persist, is_deb, timeout):
    """Installs or removes the patch; suture's (or dpkg's) account of it."""
    if p["state"] == "present" and is_deb:
        rc, out, err = module.run_command(["dpkg", "-i", src], environ_update={"DEBIAN_FRONTEND": "noninteractive"})
        if rc != 0:
            module.fail_json(msg="dpkg -i %s failed: %s" % (src, (err or out).strip()), rc=rc)
        return dict(package=package, version=version)
    if p["state"] == "present":
        verb = "install" if persist else "load"
        return run_json(module, [suture, verb, "--json", "--timeout", timeout, src], "suture " + verb)
    if package and installed_version(module, package) is not None:
        rc, out, err = module.run_command(["dpkg", "-r", package])
        if rc != 0:
            module.fail_json(msg="dpkg -r %s failed: %s" % (package, (err or out).strip()), rc=rc)
        return dict(removed_package=package)
    return run_json(
        module, [suture, "uninstall", "--json", "--missing-ok", "--timeout", timeout, name], "suture uninstall"
    )


if __name__ == "__main__":
    main()
