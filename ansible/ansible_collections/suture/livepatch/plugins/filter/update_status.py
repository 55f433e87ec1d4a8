# -*- coding: utf-8 -*-
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: update_status
short_description: Each host's distribution update coverage
description:
  - From a list of host names and the hostvars, a dict of host to one line saying which distribution update
    an applied cumulative patch (C(suture triage --build)) brings the host's code to, how many of its objects
    are live and how many still need a reboot (the C(suture_update) fact).
options:
  _input:
    description: Host names.
    type: list
    elements: str
    required: true
  hostvars:
    description: The play's C(hostvars).
    type: raw
    required: true
"""

EXAMPLES = r"""
coverage: "{{ ansible_play_hosts_all | suture.livepatch.update_status(hostvars) }}"
"""

RETURN = r"""
_value:
  description: Host to its update coverage.
  type: dict
"""

from ansible_collections.suture.livepatch.plugins.module_utils.suture_core import update_summary


def _update_status(hosts, hostvars):
    return update_summary([(h, hostvars[h].get("suture_update")) for h in hosts])


class FilterModule(object):
    def filters(self):
        return {"update_status": _update_status}
