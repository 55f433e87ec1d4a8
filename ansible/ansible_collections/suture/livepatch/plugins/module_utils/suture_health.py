# -*- coding: utf-8 -*-
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)
"""The host side of the health gates, shared by the `health` module and the
`patch` module's `gates` option: reading the kernel log, taint and boot id,
running the probe. The decisions themselves are in suture_core."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import time

from ansible_collections.suture.livepatch.plugins.module_utils.suture_core import (
    SutureError,
    bad_log_lines,
    parse_kmsg_record,
    taint_letters,
    transition_pending,
    unexpected_taint,
)


def read_kmsg():
    """Every record the kernel still holds, as (seq, message). Each read of
    /dev/kmsg returns one record; EPIPE means records were overwritten
    while reading, which only skips them."""
    records = []
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                raw = os.read(fd, 16384)
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    break
                if e.errno == errno.EPIPE:
                    continue
                raise
            if not raw:
                break
            rec = parse_kmsg_record(raw)
            if rec:
                records.append(rec)
    finally:
        os.close(fd)
    return records


def read_text(path):
    with open(path) as f:
        return f.read().strip()


def snapshot():
    """The baseline (kernel log cursor, taint, boot id) and the log itself."""
    records = read_kmsg()
    return dict(
        kmsg_seq=records[-1][0] if records else -1,
        taint=int(read_text("/proc/sys/kernel/tainted")),
        boot_id=read_text("/proc/sys/kernel/random/boot_id"),
    ), records


def check(module, base, status, allowed_taint, probe, soak):
    """Waits `soak` seconds, then evaluates every gate against `base`.
    `status` returns suture's status document or raises SutureError.
    Returns (gates, the new snapshot); raises IOError/OSError/ValueError
    when the host cannot be read."""
    if soak > 0:
        time.sleep(soak)
    now, records = snapshot()
    gates = []

    try:
        pending = transition_pending(status())
        gates.append(dict(gate="transition", ok=pending is None,
                          detail="in transition: %s" % pending if pending else "none in progress"))
    except SutureError as e:
        gates.append(dict(gate="transition", ok=False, detail=str(e)))

    rebooted = now["boot_id"] != base.get("boot_id")
    cursor = -1 if rebooted else int(base.get("kmsg_seq", -1))
    bad = bad_log_lines(records, cursor)
    gates.append(dict(gate="kernel_log", ok=not bad,
                      detail=bad[:20] if bad else "clean after seq %d%s" % (cursor, " (new boot)" if rebooted else "")))

    before = 0 if rebooted else int(base.get("taint", 0))
    extra = unexpected_taint(before, now["taint"], allowed_taint)
    gates.append(dict(gate="taint", ok=not extra,
                      detail="taint %s -> %s%s" % (taint_letters(before) or "-", taint_letters(now["taint"]) or "-",
                                                   "; unexpected: " + extra if extra else "")))

    if probe:
        t = time.time()
        rc, out, err = module.run_command(probe, use_unsafe_shell=True)
        gates.append(dict(gate="probe", ok=rc == 0, seconds=round(time.time() - t, 3),
                          detail="%r exited %d: %s" % (probe, rc, (out + err).strip()[-2000:])))
    return gates, now


def failure(gates):
    """The message of a failed check, or None when every gate held."""
    failed = [g for g in gates if not g["ok"]]
    if not failed:
        return None
    return "health gate failed: " + "; ".join("%s: %s" % (g["gate"], g["detail"]) for g in failed)
