# -*- coding: utf-8 -*-
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)
"""Unit tests of the collection's pure core. Run from ansible/:
python3 -m unittest discover -s ansible_collections/suture/livepatch/tests/unit -t .
(needs no Ansible)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import struct
import unittest

from ansible_collections.suture.livepatch.plugins.module_utils import suture_core as core


def elf_with_sections(sections):
    """A minimal little-endian ELF64 with the given (name, bytes) sections
    plus the null section and .shstrtab: enough for modinfo()."""
    names = b"\0"
    offs = []
    for name, dummy in sections + [(".shstrtab", b"")]:
        offs.append(len(names))
        names += name.encode() + b"\0"
    body = b""
    placed = []
    base = 64
    for (dummy, data) in sections:
        placed.append((base + len(body), len(data)))
        body += data
    placed.append((base + len(body), len(names)))
    body += names
    shoff = base + len(body)
    shnum = len(sections) + 2
    hdr = bytearray(64)
    hdr[0:4] = b"\x7fELF"
    hdr[4], hdr[5], hdr[6] = 2, 1, 1
    struct.pack_into("<HHI", hdr, 16, 1, 62, 1)
    struct.pack_into("<Q", hdr, 0x28, shoff)
    struct.pack_into("<HHHHHH", hdr, 0x34, 64, 0, 0, 64, shnum, shnum - 1)
    table = bytes(64)
    for i, (off, size) in enumerate(placed):
        table += struct.pack("<IIQQQQIIQQ", offs[i], 1, 0, 0, off, size, 0, 0, 1, 0)
    return bytes(hdr) + body + table


MODINFO = b"livepatch=Y\0license=GPL\0srcversion=ABC123\0name=fleet_fix\0vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions \0"

STATUS_APPLIED = {
    "release": "6.1.0-56-amd64",
    "effective_version": "6.1.0-56-amd64+fleet_fix",
    "patches": [{
        "name": "fleet_fix", "active": True, "enabled": True, "transition": False, "applied": True,
        "installed": True, "module": {"loaded": True, "srcversion": "ABC123"},
    }],
    "installed_not_loaded": [], "cves": [], "skipped": [], "pending": [],
}
STATUS_EMPTY = {"release": "6.1.0-56-amd64", "effective_version": "6.1.0-56-amd64", "patches": [],
                "installed_not_loaded": [], "cves": [], "skipped": [], "pending": []}


class ModinfoTest(unittest.TestCase):
    def test_reads_name_srcversion_release(self):
        ko = elf_with_sections([(".text", b"\x90" * 8), (".modinfo", MODINFO)])
        self.assertEqual(core.patch_identity(core.modinfo(ko)), ("fleet_fix", "ABC123", "6.1.0-56-amd64"))

    def test_refuses_non_livepatch_and_non_module(self):
        ko = elf_with_sections([(".modinfo", b"name=plain\0license=GPL\0")])
        with self.assertRaisesRegex(core.SutureError, "not a livepatch"):
            core.patch_identity(core.modinfo(ko))
        with self.assertRaisesRegex(core.SutureError, "no .modinfo"):
            core.modinfo(elf_with_sections([(".text", b"\x90")]))
        with self.assertRaisesRegex(core.SutureError, "not an ELF"):
            core.modinfo(b"!<arch>\n" + bytes(100))

    def test_truncated_file_is_an_error(self):
        ko = elf_with_sections([(".modinfo", MODINFO)])
        with self.assertRaises(core.SutureError):
            core.modinfo(ko[:-70])


class SutureJsonTest(unittest.TestCase):
    def test_ok_document_after_noise(self):
        doc = core.parse_suture_json('warning: x\n{"ok": true, "status": {"release": "r"}}', 0, "suture status")
        self.assertEqual(doc["status"]["release"], "r")

    def test_error_carries_message_hint_and_kernel_log(self):
        out = json.dumps({"ok": False, "error": {"kind": "ReleaseMismatch", "message": "built for kernel X",
                                                 "hint": "build it for Y", "kernel_log": ["livepatch: nope"]}})
        with self.assertRaises(core.SutureError) as cm:
            core.parse_suture_json(out, 2, "suture install")
        msg = str(cm.exception)
        for part in ("suture install failed (exit status 2)", "built for kernel X", "build it for Y", "livepatch: nope"):
            self.assertIn(part, msg)

    def test_no_json_is_an_error_with_the_output(self):
        with self.assertRaisesRegex(core.SutureError, "printed no JSON.*segfault"):
            core.parse_suture_json("segfault", 139, "suture status")
        with self.assertRaisesRegex(core.SutureError, "failed"):
            core.parse_suture_json('{"ok": true}', 1, "suture load")


class IdempotenceTest(unittest.TestCase):
    def test_present(self):
        self.assertTrue(core.present_is_satisfied(STATUS_APPLIED, "fleet_fix", "ABC123", True))
        self.assertFalse(core.present_is_satisfied(STATUS_APPLIED, "fleet_fix", "OTHER", True),
                         "another build of the same patch must be applied again")
        self.assertFalse(core.present_is_satisfied(STATUS_EMPTY, "fleet_fix", "ABC123", True))
        loaded_only = json.loads(json.dumps(STATUS_APPLIED))
        loaded_only["patches"][0]["installed"] = False
        self.assertFalse(core.present_is_satisfied(loaded_only, "fleet_fix", "ABC123", True))
        self.assertTrue(core.present_is_satisfied(loaded_only, "fleet_fix", "ABC123", False))
        in_transition = json.loads(json.dumps(STATUS_APPLIED))
        in_transition["patches"][0]["applied"] = False
        self.assertFalse(core.present_is_satisfied(in_transition, "fleet_fix", "ABC123", False))

    def test_absent(self):
        self.assertTrue(core.absent_is_satisfied(STATUS_EMPTY, "fleet_fix"))
        self.assertFalse(core.absent_is_satisfied(STATUS_APPLIED, "fleet_fix"))
        stored = dict(STATUS_EMPTY, installed_not_loaded=["fleet_fix"])
        self.assertFalse(core.absent_is_satisfied(stored, "fleet_fix"), "installed for the next boot is not absent")

    def test_applied_and_transition(self):
        self.assertEqual(core.applied_names(STATUS_APPLIED), ["fleet_fix"])
        self.assertIsNone(core.transition_pending(STATUS_APPLIED))
        busy = dict(STATUS_APPLIED, transition={"patch": "fleet_fix", "direction": "patching", "tasks": []})
        self.assertEqual(core.transition_pending(busy), "fleet_fix")


class TaintTest(unittest.TestCase):
    def test_letters_and_masks(self):
        self.assertEqual(core.taint_mask("K"), 1 << 15)
        self.assertEqual(core.taint_mask("KOE"), (1 << 15) | (1 << 12) | (1 << 13))
        self.assertEqual(core.taint_letters((1 << 15) | (1 << 12) | 1), "POK")
        with self.assertRaisesRegex(core.SutureError, "unknown taint flag"):
            core.taint_mask("Kz")

    def test_growth(self):
        k, o, e, w = 1 << 15, 1 << 12, 1 << 13, 1 << 9
        self.assertEqual(core.unexpected_taint(0, k | o | e, "KOE"), "")
        self.assertEqual(core.unexpected_taint(0, k | o | e, "K"), "OE")
        self.assertEqual(core.unexpected_taint(0, k | w, "KOE"), "W", "a kernel warning taints W")
        self.assertEqual(core.unexpected_taint(w, w | k, "K"), "", "taint present before is not the patch's")


class KernelLogTest(unittest.TestCase):
    def test_records(self):
        self.assertEqual(core.parse_kmsg_record(b"6,1234,5678,-;livepatch: 'fix': patching complete\n"),
                         (1234, "livepatch: 'fix': patching complete"))
        self.assertEqual(core.parse_kmsg_record("4,7,1,c;line\n SUBSYSTEM=x\n DEVICE=y\n"), (7, "line"))
        self.assertIsNone(core.parse_kmsg_record(b"garbage"))
        self.assertIsNone(core.parse_kmsg_record(b"6,x,1,-;m"))

    def test_only_new_bad_lines(self):
        recs = [(1, "WARNING: CPU: 0 PID: 1 at old"), (2, "livepatch: enabling patch"),
                (3, "BUG: kernel NULL pointer dereference"), (4, "watchdog: BUG: soft lockup - CPU#0 stuck"),
                (5, "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"), (6, "Oops: 0002 [#1] SMP"),
                (7, "all is well")]
        self.assertEqual(core.bad_log_lines(recs, 1), [recs[2][1], recs[3][1], recs[4][1], recs[5][1]])
        self.assertEqual(core.bad_log_lines(recs, 7), [])
        self.assertEqual(core.bad_log_lines(recs, -1)[0], recs[0][1])


class FleetTest(unittest.TestCase):
    def test_levels(self):
        self.assertEqual(core.patch_levels([("g2", "r+fix"), ("g1", "r+fix"), ("g3", "r"), ("g4", None)]),
                         {"r+fix": ["g1", "g2"], "r": ["g3"], "unknown": ["g4"]})

    def test_update_coverage(self):
        st = {"update": {"source_version": "6.1.187-1", "patch": "livepatch_linux_6_1_187_1",
                         "objects_live": 6, "objects_need_reboot": 9}}
        u = core.update_of(st)
        self.assertEqual(u["objects_need_reboot"], 9)
        self.assertTrue(core.needs_kexec(u))
        self.assertFalse(core.needs_kexec(dict(u, objects_need_reboot=0)))
        self.assertIsNone(core.update_of({}))
        self.assertIsNone(core.update_of({"update": {"source_version": "x"}}))
        self.assertFalse(core.needs_kexec(None))
        self.assertEqual(core.update_summary([("g1", u), ("g2", None)]), {
            "g1": "6.1.187-1 (livepatch_linux_6_1_187_1): 6 object(s) live, 9 need a reboot",
            "g2": "no cumulative update patch applied",
        })

    def test_batch_budget(self):
        self.assertTrue(core.batch_failed(1, 1, 0))
        self.assertFalse(core.batch_failed(0, 1, 0))
        self.assertFalse(core.batch_failed(1, 10, 10), "exactly the budget is not over it")
        self.assertTrue(core.batch_failed(2, 10, 10))
        self.assertFalse(core.batch_failed(0, 0, 0))


if __name__ == "__main__":
    unittest.main()
