#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: health
short_description: Health gates around a livepatch or a kexec on a host
description:
  - O(mode=baseline) records what the gates compare against later, before the change, and returns it as the fact
    C(suture_health_baseline) - the kernel log's last sequence number (from C(/dev/kmsg)), the taint value and the
    boot id.
  - O(mode=check) waits O(soak) seconds, then fails unless every gate holds - no livepatch transition in progress;
    no C(WARNING:), C(BUG:), C(Oops), soft lockup or RCU stall in the kernel log after the baseline's cursor (the
    whole log when the host booted since the baseline); taint grew only by the flags in O(allowed_taint); the
    O(probe) command exits 0.
  - Never changes the host.
version_added: "0.1.0"
author: suture developers (@suture)
options:
  mode:
    description: Record the baseline, or check against it.
    type: str
    choices: [baseline, check]
    default: check
  baseline:
    description: The baseline a previous O(mode=baseline) returned. Required with O(mode=check).
    type: dict
  allowed_taint:
    description:
      - Taint flags (letters, as the kernel prints them) that may appear after the baseline. C(K) is the livepatch
        flag; a module built out of tree adds C(O), an unsigned one C(E).
    type: str
    default: K
  probe:
    description: A shell command that must exit 0 (the service's own health check). Empty for none.
    type: str
    default: ""
  soak:
    description: Seconds to wait before checking, so that slow failures have time to show.
    type: float
    default: 0
  suture:
    description: The suture command on the host (for the transition gate).
    type: path
    default: suture
"""

EXAMPLES = r"""
- name: Before the patch
  suture.livepatch.health:
    mode: baseline
  register: before

- name: After it
  suture.livepatch.health:
    baseline: "{{ before.baseline }}"
    allowed_taint: KOE
    probe: systemctl is-active nginx
    soak: 30
"""

RETURN = r"""
baseline:
  description: The kernel log cursor (C(kmsg_seq)), C(taint) and C(boot_id).
  returned: always
  type: dict
gates:
  description: Each gate's name and outcome, with the evidence (and the probe's C(seconds)).
  returned: mode == 'check'
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.suture.livepatch.plugins.module_utils.suture_core import (
    SutureError,
    parse_suture_json,
)
from ansible_collections.suture.livepatch.plugins.module_utils.suture_health import (
    check,
    failure,
    snapshot,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            mode=dict(type="str", default="check", choices=["baseline", "check"]),
            baseline=dict(type="dict"),
            allowed_taint=dict(type="str", default="K"),
            probe=dict(type="str", default=""),
            soak=dict(type="float", default=0),
            suture=dict(type="path", default="suture"),
        ),
        required_if=[("mode", "check", ["baseline"])],
        supports_check_mode=True,
    )
    p = module.params

    def status():
        rc, out, err = module.run_command([p["suture"], "status", "--json"])
        return parse_suture_json(out, rc, "suture status")["status"]

    try:
        if p["mode"] == "baseline":
            base, dummy = snapshot()
            module.exit_json(changed=False, baseline=base, ansible_facts=dict(suture_health_baseline=base))
        gates, now = check(module, p["baseline"], status, p["allowed_taint"], p["probe"], p["soak"])
    except (IOError, OSError, SutureError, ValueError) as e:
        module.fail_json(msg="health gate could not run: %s" % e)

    msg = failure(gates)
    if msg:
        module.fail_json(msg=msg, gates=gates, baseline=now)
    module.exit_json(changed=False, gates=gates, baseline=now)


if __name__ == "__main__":
    main()
