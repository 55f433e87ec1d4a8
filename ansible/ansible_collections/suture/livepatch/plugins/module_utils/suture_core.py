# -*- coding: utf-8 -*-
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)
"""The pure part of the suture modules: bytes and text in, decisions out.

Nothing here touches the host, so the unit tests run it on plain data
without Ansible or a kernel.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re
import struct

# /proc/sys/kernel/tainted bits, named by the letters the kernel prints
# (Documentation/admin-guide/tainted-kernels.rst).
TAINT_LETTERS = {
    "P": 0, "F": 1, "S": 2, "R": 3, "M": 4, "B": 5, "U": 6, "D": 7,
    "A": 8, "W": 9, "C": 10, "I": 11, "O": 12, "E": 13, "L": 14, "K": 15,
    "X": 16, "T": 17, "N": 18,
}

# What a health gate refuses to see in the kernel log after a patch.
BAD_LOG = re.compile(
    r"WARNING:|BUG:|Oops|soft lockup|rcu.{0,40}detected stall|RCU stall",
)


class SutureError(Exception):
    """A failure to report as is: the message is meant for the operator."""


def parse_suture_json(stdout, rc, what):
    """suture's one JSON document (`--json`), or SutureError with its own
    error text and hint when it failed."""
    start = stdout.find("{")
    doc = None
    if start >= 0:
        try:
            doc = json.loads(stdout[start:])
        except ValueError:
            doc = None
    if doc is None:
        raise SutureError(
            "%s printed no JSON (exit status %s): %s" % (what, rc, stdout.strip()[:2000])
        )
    if rc != 0 or not doc.get("ok", False):
        err = doc.get("error") or {}
        msg = "%s failed (exit status %s): %s" % (what, rc, err.get("message", "no message"))
        if err.get("hint"):
            msg += " (%s)" % err["hint"]
        if err.get("kernel_log"):
            msg += "; kernel log: " + " | ".join(err["kernel_log"])
        raise SutureError(msg)
    return doc


def modinfo(ko_bytes):
    """The `.modinfo` section of a kernel module as a dict (the last value of
    a repeated key wins; repeated keys are not used here)."""
    data = ko_bytes
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise SutureError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise SutureError("not a little-endian ELF64 file (x86-64 modules are)")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shoff == 0 or shentsize < 64 or shoff + shnum * shentsize > len(data) or shstrndx >= shnum:
        raise SutureError("truncated or malformed section table")

    def section(i):
        off = shoff + i * shentsize
        name, _typ, _flags, _addr, s_off, s_size = struct.unpack_from("<IIQQQQ", data, off)
        if s_off + s_size > len(data):
            raise SutureError("section %d runs past the end of the file" % i)
        return name, data[s_off:s_off + s_size]

    dummy, names = section(shstrndx)
    for i in range(shnum):
        name_off, body = section(i)
        end = names.find(b"\0", name_off)
        if names[name_off:end] == b".modinfo":
            info = {}
            for entry in body.split(b"\0"):
                if b"=" in entry:
                    k, v = entry.split(b"=", 1)
                    info[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
            return info
    raise SutureError("no .modinfo section: not a kernel module")


def patch_identity(info):
    """(name, srcversion, release) of a livepatch module's modinfo."""
    if info.get("livepatch") != "Y":
        raise SutureError("not a livepatch module (no livepatch=Y in .modinfo)")
    name = info.get("name")
    if not name:
        raise SutureError("the module has no name in .modinfo")
    vermagic = info.get("vermagic", "")
    return name, info.get("srcversion"), vermagic.split(" ")[0] if vermagic else None


def find_patch(status, name):
    """The entry for `name` in `suture status --json`'s status, or None."""
    for p in status.get("patches", []):
        if p.get("name") == name:
            return p
    return None


def applied_names(status):
    return [p["name"] for p in status.get("patches", []) if p.get("applied")]


def present_is_satisfied(status, name, srcversion, persist):
    """True when `state: present` has nothing to do: this exact build is
    applied (and installed, when it must survive a reboot)."""
    p = find_patch(status, name)
    if p is None or not p.get("applied"):
        return False
    loaded_src = (p.get("module") or {}).get("srcversion")
    if srcversion and loaded_src and srcversion != loaded_src:
        return False
    if persist and not p.get("installed"):
        return False
    return True


def absent_is_satisfied(status, name):
    """True when `state: absent` has nothing to do."""
    p = find_patch(status, name)
    loaded = p is not None and (p.get("module") or {}).get("loaded", p.get("active", False))
    installed = (p is not None and p.get("installed")) or name in status.get("installed_not_loaded", [])
    return not loaded and not installed


def transition_pending(status):
    """The name of a patch still in transition, or None."""
    t = status.get("transition")
    if t:
        return t.get("patch") or "?"
    for p in status.get("patches", []):
        if p.get("transition"):
            return p.get("name")
    return None


def taint_mask(letters):
    mask = 0
    for ch in letters.replace(",", "").replace(" ", ""):
        if ch not in TAINT_LETTERS:
            raise SutureError("unknown taint flag %r (known: %s)" % (ch, "".join(sorted(TAINT_LETTERS))))
        mask |= 1 << TAINT_LETTERS[ch]
    return mask


def taint_letters(value):
    by_bit = dict((b, l) for l, b in TAINT_LETTERS.items())
    return "".join(by_bit.get(b, "?%d" % b) for b in range(64) if value >> b & 1)


def unexpected_taint(before, after, allowed_letters):
    """Taint bits set now that were not before and are not allowed, as
    letters ('' when the growth is acceptable). Bits that cleared are not a
    concern of the gate: taint only clears on reboot."""
    grown = after & ~before
    return taint_letters(grown & ~taint_mask(allowed_letters))


def parse_kmsg_record(raw):
    """(seq, message) of one /dev/kmsg record: "prio,seq,usec,flags;text",
    continuation lines (" KEY=value") dropped."""
    line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    head, sep, rest = line.partition(";")
    if not sep:
        return None
    fields = head.split(",")
    if len(fields) < 3:
        return None
    try:
        seq = int(fields[1])
    except ValueError:
        return None
    return seq, rest.split("\n", 1)[0]


def bad_log_lines(records, after_seq):
    """Messages after the cursor that a health gate refuses."""
    return [m for s, m in records if s > after_seq and BAD_LOG.search(m)]


def patch_levels(hosts):
    """{level: [hosts]} from (host, level) pairs; hosts without a level
    (unreachable, never reached) are under 'unknown'."""
    out = {}
    for host, level in hosts:
        out.setdefault(level or "unknown", []).append(host)
    for v in out.values():
        v.sort()
    return out


def update_of(status):
    """What an applied cumulative patch of a distribution update says
    (suture status's `update`: source_version, patch, objects_live,
    objects_need_reboot), or None; a malformed one is None too."""
    u = status.get("update")
    if not isinstance(u, dict):
        return None
    try:
        return dict(
            source_version=str(u["source_version"]),
            patch=str(u["patch"]),
            objects_live=int(u["objects_live"]),
            objects_need_reboot=int(u["objects_need_reboot"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def needs_kexec(update):
    """Whether a host's update leaves objects to a reboot."""
    return update is not None and update["objects_need_reboot"] > 0


def update_summary(hosts):
    """{host: line} from (host, update) pairs: the update each host's code
    is at and what still needs a reboot."""
    out = {}
    for host, u in hosts:
        if u is None:
            out[host] = "no cumulative update patch applied"
        else:
            out[host] = "%s (%s): %d object(s) live, %d need a reboot" % (
                u["source_version"], u["patch"], u["objects_live"], u["objects_need_reboot"])
    return out


def batch_failed(failed, batch_size, max_fail_percentage):
    """Whether a batch exceeded its failure budget, as Ansible decides it
    (strictly more than the percentage)."""
    if batch_size <= 0:
        return False
    return failed * 100.0 / batch_size > float(max_fail_percentage)
