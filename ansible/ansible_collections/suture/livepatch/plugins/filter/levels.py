# -*- coding: utf-8 -*-
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: patch_levels
short_description: Group hosts by their suture patch level
description:
  - From a list of host names and the hostvars, a dict of patch level to the sorted hosts at that level;
    hosts with no C(suture_patch_level) fact are under C(unknown).
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
summary: "{{ ansible_play_hosts_all | suture.livepatch.patch_levels(hostvars) }}"
"""

RETURN = r"""
_value:
  description: Patch level to hosts.
  type: dict
"""

from ansible_collections.suture.livepatch.plugins.module_utils.suture_core import patch_levels


def _patch_levels(hosts, hostvars):
    return patch_levels([(h, hostvars[h].get("suture_patch_level")) for h in hosts])


class FilterModule(object):
    def filters(self):
        return {"patch_levels": _patch_levels}
