# -*- coding: utf-8 -*-
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: batch_failed
short_description: Whether a batch of hosts exceeded its failure budget
description:
  - True when the hosts of the batch whose C(suture_gate_failed) fact is set make up strictly more than the
    given percentage of the batch, as Ansible counts O(max_fail_percentage).
options:
  _input:
    description: The batch's host names (C(ansible_play_batch)).
    type: list
    elements: str
    required: true
  hostvars:
    description: The play's C(hostvars).
    type: raw
    required: true
  max_fail_percentage:
    description: The budget in percent.
    type: float
    required: true
"""

EXAMPLES = r"""
failed: "{{ ansible_play_batch | suture.livepatch.batch_failed(hostvars, 0) }}"
"""

RETURN = r"""
_value:
  description: Whether the batch failed.
  type: bool
"""

from ansible_collections.suture.livepatch.plugins.module_utils.suture_core import batch_failed


def _batch_failed(batch, hostvars, max_fail_percentage):
    failed = sum(1 for h in batch if hostvars[h].get("suture_gate_failed"))
    return batch_failed(failed, len(batch), max_fail_percentage)


class FilterModule(object):
    def filters(self):
        return {"batch_failed": _batch_failed}
