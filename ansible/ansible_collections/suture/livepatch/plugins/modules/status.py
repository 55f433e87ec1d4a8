#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: status
short_description: A host's kernel release, boot id and livepatch level as facts
description:
  - Runs C(suture status --json) and reads the boot id. Never changes the host.
  - Sets the facts C(suture_release), C(suture_boot_id), C(suture_patch_level), C(suture_applied_patches) and
    C(suture_update) (the update an applied cumulative patch brings the code to, with its live and reboot counts; null without one).
version_added: "0.1.0"
author: suture developers (@suture)
options:
  suture:
    description: The suture command on the host.
    type: path
    default: suture
"""

EXAMPLES = r"""
- name: Where each host stands
  suture.livepatch.status:
"""

RETURN = r"""
status:
  description: suture's status document (release, build_id, effective_version, patches, ...).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.suture.livepatch.plugins.module_utils.suture_core import (
    SutureError,
    applied_names,
    parse_suture_json,
    update_of,
)


def main():
    module = AnsibleModule(argument_spec=dict(suture=dict(type="path", default="suture")), supports_check_mode=True)
    rc, out, err = module.run_command([module.params["suture"], "status", "--json"])
    try:
        st = parse_suture_json(out, rc, "suture status")["status"]
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
    except (SutureError, IOError, OSError) as e:
        module.fail_json(msg="%s%s" % (e, ("; stderr: " + err.strip()) if err.strip() else ""))
    module.exit_json(
        changed=False,
        status=st,
        ansible_facts=dict(
            suture_release=st["release"],
            suture_boot_id=boot_id,
            suture_patch_level=st["effective_version"],
            suture_applied_patches=applied_names(st),
            suture_update=update_of(st),
        ),
    )


if __name__ == "__main__":
    main()
