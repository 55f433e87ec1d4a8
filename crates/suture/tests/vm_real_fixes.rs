//! Real fixes, as Debian's stable update ships them (issue 12, "VM tests"):
//! diffs between `linux-source-6.1` 6.1.170-3 (the source of
//! `SUTURE_TEST_RELEASE_OLD`, 6.1.0-47-amd64) and 6.1.176-1, cut down to the
//! files named below but otherwise the upstream code exactly as the update
//! changes it (`examples/real/`). Each is built for 6.1.0-47-amd64 on the
//! host, then loaded in a guest booted on Debian's own 6.1.0-47 kernel, used,
//! and unloaded; after every step the kernel log is searched for an oops or a
//! warning, and an oops panics the guest (`oops=panic`). Two boots: the seven
//! module fixes share one, the vmlinux fix of the PI futex path has its own
//! (a broken module there takes every later step down with it); the
//! nf_queue and fsmount fixes are refused at build time.
//!
//! The fixes (the upstream subject is the one in Debian's changelog of
//! 6.1.176-1):
//!
//! - `pkt-cls-base-ptr.patch`, `include/net/pkt_cls.h`: "net: sched: fix
//!   TCF_LAYER_TRANSPORT handling in tcf_get_base_ptr()". A changed static
//!   inline in a header (issue 12.3): 179 units of the release include the
//!   header, three have a functional change, each in another module:
//!   `em_cmp_match` (em_cmp), `em_nbyte_match` (em_nbyte), `em_text_match`
//!   (em_text), the packet scheduler's extended matches. The issue asks for
//!   two block I/O scheduler modules; but 6.1.170-3 to 6.1.176-1 changes no
//!   header the block layer's schedulers include (block/ changes only
//!   blk-cgroup.c and blk-mq.c; include/linux/blk*.h, elevator.h and
//!   blk-mq*.h are unchanged), nor does 6.1.176-1 to 6.1.187-1. The only other
//!   header inline fix that reaches two scheduler modules, `pie_vars_init()`
//!   in `include/net/pie.h` (sch_pie, sch_fq_pie: `WRITE_ONCE` of a 0), is
//!   correctly "no functional change": gcc emits the same code. So the
//!   modules here are the packet scheduler's classifier matches, loaded after
//!   the patch and used by a `prio` qdisc's `basic` filters on `lo`. The
//!   build compiles 179 units twice: about 5 minutes on 2 cores with a cold
//!   compiler cache, under a minute with a warm one.
//! - `vxlan-ecn-encap.patch`, `drivers/net/vxlan/vxlan_core.c`: "vxlan: do not
//!   reuse cached ip_hdr() value after skb_tunnel_check_pmtu()" (issue 12.5):
//!   `vxlan_xmit_one` reaches `jhash`, of which vxlan.ko has two byte-identical
//!   copies (`static inline`, not inlined), told apart by nothing: one is
//!   used, with a warning. (The issue's other candidates: drbd's
//!   `drbd_adm_dump_devices` fix, whose copies are not interchangeable, is
//!   (f); `fs/ext2/inode.c` is not built by Debian's config, CONFIG_EXT2_FS
//!   unset.)
//!   A vxlan device over `lo` sends through the patched `vxlan_xmit_one`.
//! - `ipmi-msghandler-srcu.patch`, `drivers/char/ipmi/ipmi_msghandler.c`:
//!   "ipmi: Fix rcu_read_unlock to srcu_read_unlock in handle_read_event_rsp"
//!   (issue 12.8: ipmi_msghandler.o is compiled through its directory's
//!   Makefile); replaces `handle_one_recv_msg` (which inlines
//!   `handle_read_event_rsp`) in ipmi_msghandler, loaded after the patch. The
//!   guest has no BMC, so the function is patched, not run.
//! - `rtmutex-remove-waiter.patch`, `kernel/locking/rtmutex.c`: "rtmutex: Use
//!   waiter::task instead of current in remove_waiter()" (issue 12.1).
//!   rtmutex.c is compiled only through `rtmutex_api.c`'s `#include`. Its
//!   functions are `__sched`: gcc puts them in one `.sched.text` section
//!   despite `-ffunction-sections`, and the assembler resolves their calls to
//!   each other (`try_to_take_rt_mutex`, `rt_mutex_adjust_prio_chain`)
//!   without relocations; the differ gives those calls relocations, so only
//!   `remove_waiter` changes. A PI futex lock that times out
//!   (`examples/real/pi_timeout.c`, built static) runs the patched
//!   `remove_waiter` through `rt_mutex_cleanup_proxy_lock`.
//! - `nf-queue-entry.patch`, `include/net/netfilter/nf_queue.h` and
//!   `net/netfilter/nf_queue.c`: "netfilter: nf_queue: hold bridge skb->dev
//!   while queued" (CVE-2026-52912) adds `skb_dev` to `struct
//!   nf_queue_entry`: a layout change (issue 12.4), refused by name, no boot.
//!
//! - `audit-nf-skb.patch`, from 6.1.187-1 (its three files' contexts are
//!   the same in 6.1.170-3): "audit: add audit_log_nf_skb helper function"
//!   (issue 12.6, a module patch calling a new vmlinux function).
//!   `kernel/audit.c` gains `audit_log_nf_skb()`, which the `nft_log` and
//!   `xt_AUDIT` modules' audit paths now call instead of their own copies.
//!   Upstream declares it in `include/linux/audit.h`; here each caller
//!   declares it, so that three units are compiled rather than the 600
//!   that include that header (header changes have their own test, (a)).
//!   Alone, kernel/audit.o replaces nothing (the new function is all it
//!   adds); it goes into the module because the other two units call it.
//!   The patch loads while nf_tables, nft_log, x_tables and xt_AUDIT are all
//!   absent (the module depends on none of them), they load after it, and
//!   an nftables `log level audit` rule runs the patched `nft_log_eval`
//!   and the new function (guest booted with `audit=1`).
//! - Copies of a static inline in several units of one module, told apart
//!   by where the module's symbol table puts them (issue 12.5): one module
//!   from three real fixes. `drbd-nl-rcu.patch` (6.1.176-1,
//!   `drivers/block/drbd/drbd_nl.c`: the dump functions' error path takes
//!   the RCU read lock it releases) reaches `put_ldev`, of which drbd.ko has
//!   ten copies, each calling its own `put_ldev.cold` and using its own
//!   unit's strings, so neither code nor references tell them apart;
//!   `drbd-receiver-data-size.patch` (6.1.187-1, `receive_DataReply`
//!   refuses a negative data size) reaches two copies each of
//!   `_dec_rs_pending.part.0` and `_dec_unacked.part.0`;
//!   `qede-fp-build-skb.patch` (6.1.187-1, `drivers/net/ethernet/qlogic/
//!   qede/qede_fp.c`: a failed `qede_build_skb` is not used) reaches
//!   `netdev_name`, six copies in qede.ko. A `.ko` keeps each unit's local
//!   symbols together and in the unit's order, so the copy between ORIG's
//!   own located neighbours is ORIG's. drbd and qede load after the patch,
//!   come up patched, and go away (no DRBD device or QLogic NIC to run them).
//! - `ext4-inline-size.patch`, 6.1.187-1, `fs/ext4/inline.c`:
//!   `ext4_read_inline_page` refuses an inline size beyond a page. gcc's
//!   out-of-line copy of the `static inline` `zero_user_segments` (a
//!   `.constprop` clone, `notrace`, no ftrace hook) changes with it; livepatch
//!   cannot redirect it, so its only callers, which call it,
//!   `ext4_read_inline_page` and `ext4_readpage_inline`, are replaced
//!   instead, and their replacements call its new code. In the module boot:
//!   ext4 loads after the patch, and reading a file whose data is inline in
//!   its inode (an image made with `mkfs.ext4 -O inline_data -d`) runs them.
//! - `conntrack-sctp-state.patch`, 6.1.187-1,
//!   `net/netfilter/nf_conntrack_proto_sctp.c` (issue 12.6, a module's own
//!   export): the fix newly calls `nf_ct_l4proto_log_invalid`, which
//!   another unit of nf_conntrack defines and exports. A normal relocation
//!   would make the patch depend on nf_conntrack itself (the real-fix
//!   bench's load failed: "Unknown symbol"); it is a klp relocation of
//!   nf_conntrack. Loaded before nf_conntrack, which comes up patched.
//! - `fsmount-nouser.patch`, 6.1.187-1, `fs/namespace.c`: `fsmount(2)`
//!   refuses an `SB_NOUSER` superblock, in `__do_sys_fsmount`, the
//!   `notrace` body `SYSCALL_DEFINE` makes; its caller `__x64_sys_fsmount`
//!   reaches it by a tail call, which leaves no caller on the stack of a
//!   task still in the old code for the transition to wait on: refused,
//!   saying so, no boot.
//!
//! That the replacement, not the original, ran is read from the kernel's
//! function tracer, filtered to the livepatch module's own copy
//! (`FUNC:mod:livepatch_...`): the original is never traced.

mod common;

use common::{build, examples, field, suture, Built};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use suture_lab::Vm;

/// `SUTURE_TEST_RELEASE_OLD` when it is set and installed; `None` (after
/// saying why) otherwise. Under `CI` it must be set.
fn release_old() -> Option<String> {
    let Ok(old) = std::env::var("SUTURE_TEST_RELEASE_OLD") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set SUTURE_TEST_RELEASE_OLD (scripts/test.sh does)"
        );
        eprintln!("SKIP: SUTURE_TEST_RELEASE_OLD is not set (these fixes are diffs against its source, linux-source-6.1 6.1.170-3)");
        return None;
    };
    suture_lab::require_kernel_or_skip(&old)
        .expect("kernel for the real-fix VM test")
        .then_some(old)
}

/// The fixes are diffs against 6.1.170-3: they apply to no other source.
fn source_version(release: &str) -> String {
    let o = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", &format!("linux-headers-{release}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn real(name: &str) -> PathBuf {
    examples().join("real").join(name)
}

/// Builds `examples/real/PATCH` as module `name`; the JSON report.
fn build_real(release: &str, patch: &str, name: &str, dir: &Path) -> (PathBuf, serde_json::Value) {
    let ko = dir.join(format!("{name}.ko"));
    let t = Instant::now();
    let b: Built = build(
        release,
        &real(patch),
        &ko,
        &["--json", "--name", name, "--max-units", "400"],
    );
    eprintln!("built {patch} in {:.1?}", t.elapsed());
    assert_eq!(
        b.status, 0,
        "suture build {patch} for {release} failed:\n{}\n{}",
        b.stdout, b.stderr
    );
    assert!(ko.exists());
    (ko, serde_json::from_str(&b.stdout).unwrap())
}

/// The livepatch symbols (`.klp.sym.*`) of a built module.
fn klp_symbols(ko: &Path) -> Vec<String> {
    let e = suture_klp::elf::Elf::parse(std::fs::read(ko).unwrap()).unwrap();
    let symtab = e.symtab().unwrap();
    let strtab = e.shdrs[symtab].link as usize;
    e.syms(symtab)
        .unwrap()
        .iter()
        .map(|s| e.str_at(strtab, s.name).unwrap().to_string())
        .filter(|n| n.starts_with(".klp.sym."))
        .collect()
}

/// `(objname, function)` of every function the module replaces.
fn replaced(report: &serde_json::Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = report["replaced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["objname"].as_str().unwrap().to_string(),
                f["function"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A release module's bytes, uncompressed (busybox insmod takes no .ko.xz).
fn release_module(release: &str, rel: &str) -> Vec<u8> {
    let base = format!("/lib/modules/{release}/kernel/{rel}");
    let data = std::fs::read(&base)
        .or_else(|_| std::fs::read(format!("{base}.xz")))
        .unwrap_or_else(|e| panic!("{base}: {e}"));
    suture_symbols::decompress_module(&data)
        .unwrap()
        .into_owned()
}

const PKT: &str = "livepatch_real_pkt_cls";
const RTMUTEX: &str = "livepatch_real_rtmutex";
const VXLAN: &str = "livepatch_real_vxlan";
const IPMI: &str = "livepatch_real_ipmi";
const AUDIT: &str = "livepatch_real_audit";
const COPIES: &str = "livepatch_real_copies";
const EXT4: &str = "livepatch_real_ext4_inline";
const SCTP: &str = "livepatch_real_conntrack_sctp";

/// Shell helpers of the guest script. `bad STEP` prints `OOPS_STEP:N`, the
/// count of kernel log lines that tell of an oops or a warning so far;
/// `trace FUNC MOD` traces only FUNC of module MOD (refusing when the filter
/// matches nothing, which would trace every function); `hits FUNC` counts
/// FUNC's entries in the trace.
const HELPERS: &str = r#"T=/sys/kernel/tracing
mount -t tracefs nodev $T 2>/dev/null
bad() { echo "OOPS_$1:$(dmesg | grep -cE 'Oops|BUG:|WARNING:|general protection|Call Trace')"; }
trace() {
  echo nop > $T/current_tracer; echo > $T/trace
  echo "$1:mod:$2" > $T/set_ftrace_filter || return 1
  [ -n "$(cat $T/set_ftrace_filter)" ] || return 1
  echo function > $T/current_tracer
}
untrace() { echo nop > $T/current_tracer; echo > $T/set_ftrace_filter; }
hits() { grep -c " $1 <-" $T/trace; }
lp=/sys/kernel/livepatch
"#;

/// The guest: Debian's kernel with `suture` in `/bin`; an oops panics it,
/// so a crash ends the run at once with the console in the error.
fn guest(release: &str, timeout: Duration) -> Vm {
    let mut vm = Vm::new(release)
        .unwrap()
        .memory_mb(1024)
        .timeout(timeout)
        .append("oops=panic");
    vm.add_executable(Path::new(suture()), "/bin/suture")
        .unwrap();
    vm
}

/// `Some(release)` when the test runs: `SUTURE_TEST_RELEASE_OLD` is
/// installed and built from 6.1.170-3, the source the fixes are diffs of.
fn ready() -> Option<String> {
    let release = release_old()?;
    let src = source_version(&release);
    if src != "6.1.170-3" {
        assert!(
            std::env::var_os("CI").is_none(),
            "SUTURE_TEST_RELEASE_OLD={release} is built from {src}, not 6.1.170-3"
        );
        eprintln!(
            "SKIP: {release} is built from linux {src}; the real fixes are diffs against 6.1.170-3"
        );
        return None;
    }
    Some(release)
}

/// (a), (c), (d), (e), (f), (g) and (h) in one boot: seven module patches, each loaded before
/// its target modules, which come up patched, are used and go away.
#[test]
fn real_module_fixes_of_a_debian_stable_update_go_live_in_modules_loaded_after_them() {
    let Some(release) = ready() else { return };
    let tc = Path::new("/usr/sbin/tc");
    let ip = Path::new("/usr/sbin/ip");
    let nft = Path::new("/usr/sbin/nft");
    assert!(
        tc.is_file() && ip.is_file(),
        "the guest needs iproute2's tc and ip: apt-get install iproute2"
    );
    assert!(
        nft.is_file(),
        "the guest needs nft: apt-get install nftables"
    );
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();

    // (a) a header's inline function, live in three modules.
    let (pkt, r) = build_real(&release, "pkt-cls-base-ptr.patch", PKT, tmp.path());
    assert_eq!(
        replaced(&r),
        [
            ("em_cmp", "em_cmp_match"),
            ("em_nbyte", "em_nbyte_match"),
            ("em_text", "em_text_match")
        ]
        .map(|(o, f)| (o.to_string(), f.to_string())),
        "{r}"
    );
    // (c) identical copies of a static inline, one chosen and said so.
    let (vxlan, r) = build_real(&release, "vxlan-ecn-encap.patch", VXLAN, tmp.path());
    assert_eq!(
        replaced(&r),
        [("vxlan".to_string(), "vxlan_xmit_one".to_string())],
        "{r}"
    );
    assert!(
        r["warnings"].as_array().unwrap().iter().any(|w| {
            let w = w.as_str().unwrap();
            w.contains("jhash") && w.contains("interchangeable")
        }),
        "{r}"
    );
    // (d) ipmi_msghandler, which kbuild cannot build as a single target.
    let (ipmi, r) = build_real(&release, "ipmi-msghandler-srcu.patch", IPMI, tmp.path());
    assert_eq!(
        replaced(&r),
        [(
            "ipmi_msghandler".to_string(),
            "handle_one_recv_msg".to_string()
        )],
        "{r}"
    );
    // (e) a new vmlinux function that two module patches call.
    let (audit, r) = build_real(&release, "audit-nf-skb.patch", AUDIT, tmp.path());
    assert_eq!(
        replaced(&r),
        [
            ("nft_log", "nft_log_eval"),
            ("xt_AUDIT", "audit_tg"),
            ("xt_AUDIT", "audit_tg.part.0"),
        ]
        .map(|(o, f)| (o.to_string(), f.to_string())),
        "{r}"
    );
    assert_eq!(
        r["new_functions"],
        serde_json::json!(["audit_log_nf_skb"]),
        "{r}"
    );
    let info = suture_host::modinfo::parse_module(&std::fs::read(&audit).unwrap()).unwrap();
    assert!(info.depends.is_empty(), "depends: {:?}", info.depends);
    // (f) copies told apart by their place in the module's symbol table.
    let copies = tmp.path().join(format!("{COPIES}.ko"));
    let b = build(
        &release,
        &real("drbd-nl-rcu.patch"),
        &copies,
        &[
            real("drbd-receiver-data-size.patch").to_str().unwrap(),
            real("qede-fp-build-skb.patch").to_str().unwrap(),
            "--json",
            "--name",
            COPIES,
        ],
    );
    assert_eq!(b.status, 0, "{}\n{}", b.stdout, b.stderr);
    let r: serde_json::Value = serde_json::from_str(&b.stdout).unwrap();
    let got = replaced(&r);
    for want in [
        ("drbd", "drbd_adm_dump_devices"),
        ("drbd", "drbd_adm_dump_peer_devices"),
        ("drbd", "receive_DataReply"),
        ("qede", "qede_poll"),
    ] {
        assert!(
            got.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} not in {got:?}"
        );
    }
    // The copies chosen, as read off the modules' symbol tables by hand:
    // drbd_nl.c's put_ldev is the 8th (between __disk_conf_from_attrs and
    // check_net_options, drbd_nl.c's own statics), drbd_receiver.c's is the
    // 4th and its _dec_* parts the 2nd, qede_fp.c's netdev_name the 2nd
    // (first of that unit's block, before qede_free_failed_tx_pkt).
    let klp = klp_symbols(&copies);
    for want in [
        ".klp.sym.drbd.put_ldev,8",
        ".klp.sym.drbd.put_ldev,4",
        ".klp.sym.drbd._dec_rs_pending.part.0,2",
        ".klp.sym.drbd._dec_unacked.part.0,2",
        ".klp.sym.qede.netdev_name,2",
    ] {
        assert!(klp.iter().any(|n| n == want), "{want} not in {klp:?}");
    }
    // (g) a notrace function reached through the functions that call it.
    let (ext4, r) = build_real(&release, "ext4-inline-size.patch", EXT4, tmp.path());
    assert_eq!(
        replaced(&r),
        [
            ("ext4".to_string(), "ext4_read_inline_page".to_string()),
            ("ext4".to_string(), "ext4_readpage_inline".to_string())
        ],
        "{r}"
    );
    assert!(
        r["warnings"].as_array().unwrap().iter().any(|w| {
            let w = w.as_str().unwrap();
            w.contains("zero_user_segments") && w.contains("no ftrace hook")
        }),
        "{r}"
    );
    let img = tmp.path().join("inline.img");
    let files = tmp.path().join("inline");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("small.txt"), "inline data\n").unwrap();
    common::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "inline_data,^has_journal", "-d"])
            .arg(&files)
            .arg(&img)
            .arg("4M"),
    );
    // (h) a new reference to the module's own export.
    let (sctp, r) = build_real(&release, "conntrack-sctp-state.patch", SCTP, tmp.path());
    assert_eq!(
        replaced(&r),
        [
            (
                "nf_conntrack".to_string(),
                "nf_conntrack_sctp_packet".to_string()
            ),
            ("nf_conntrack".to_string(), "sctp_new_state".to_string())
        ],
        "{r}"
    );
    let info = suture_host::modinfo::parse_module(&std::fs::read(&sctp).unwrap()).unwrap();
    assert!(info.depends.is_empty(), "depends: {:?}", info.depends);
    let klp = klp_symbols(&sctp);
    assert!(
        klp.iter()
            .any(|n| n == ".klp.sym.nf_conntrack.nf_ct_l4proto_log_invalid,0"),
        "{klp:?}"
    );
    eprintln!("seven modules built in {:.1?}", started.elapsed());

    let _g = common::vm_lock();
    let mut vm = guest(&release, Duration::from_secs(600));
    vm = vm.append("audit=1");
    vm.add_file(&img, "/root/inline.img").unwrap();
    vm.add_executable(tc, "/opt/iproute2/tc").unwrap();
    vm.add_executable(nft, "/opt/nft/nft").unwrap();
    vm.add_executable(ip, "/opt/iproute2/ip").unwrap();
    vm.add_file(
        Path::new("/etc/iproute2/ematch_map"),
        "/etc/iproute2/ematch_map",
    )
    .unwrap();
    for (ko, n) in [
        (&pkt, PKT),
        (&vxlan, VXLAN),
        (&ipmi, IPMI),
        (&audit, AUDIT),
        (&copies, COPIES),
        (&ext4, EXT4),
        (&sctp, SCTP),
    ] {
        vm.add_file(ko, &format!("/root/{n}.ko")).unwrap();
    }
    for m in [
        "net/sched/sch_prio.ko",
        "net/sched/cls_basic.ko",
        "net/sched/em_cmp.ko",
        "net/sched/em_nbyte.ko",
        "net/sched/em_text.ko",
        "net/ipv4/udp_tunnel.ko",
        "net/ipv6/ip6_udp_tunnel.ko",
        "drivers/net/vxlan/vxlan.ko",
        "drivers/char/ipmi/ipmi_msghandler.ko",
        "crypto/crc32c_generic.ko",
        "lib/libcrc32c.ko",
        "net/netfilter/nfnetlink.ko",
        "net/netfilter/nf_tables.ko",
        "net/netfilter/nft_log.ko",
        "net/netfilter/x_tables.ko",
        "net/netfilter/xt_AUDIT.ko",
        "lib/lru_cache.ko",
        "drivers/block/drbd/drbd.ko",
        "lib/crc8.ko",
        "drivers/net/ethernet/qlogic/qed/qed.ko",
        "drivers/net/ethernet/qlogic/qede/qede.ko",
        "drivers/block/loop.ko",
        "lib/crc16.ko",
        "fs/mbcache.ko",
        "fs/jbd2/jbd2.ko",
        "fs/ext4/ext4.ko",
        "net/ipv4/netfilter/nf_defrag_ipv4.ko",
        "net/ipv6/netfilter/nf_defrag_ipv6.ko",
        "net/netfilter/nf_conntrack.ko",
    ] {
        let name = Path::new(m).file_name().unwrap().to_str().unwrap();
        vm.add_bytes(
            &format!("/root/mods/{name}"),
            release_module(&release, m),
            0o644,
        );
    }
    let script = format!(
        "{HELPERS}\
         k=/root/mods; ipr=/opt/iproute2\n\
         ip link set lo up\n\
         bad START\n\
         \n\
         # (a) the header fix: the patch first, the three modules after it.\n\
         suture load /root/{PKT}.ko || exit 10\n\
         echo PKT_TRANSITION:$(cat $lp/{PKT}/transition)\n\
         echo PKT_EARLY:$(cat $lp/{PKT}/em_cmp/patched)\n\
         insmod $k/sch_prio.ko && insmod $k/cls_basic.ko || exit 11\n\
         insmod $k/em_cmp.ko && insmod $k/em_nbyte.ko && insmod $k/em_text.ko || exit 12\n\
         echo PKT_CMP:$(cat $lp/{PKT}/em_cmp/patched)\n\
         echo PKT_NBYTE:$(cat $lp/{PKT}/em_nbyte/patched)\n\
         echo PKT_TEXT:$(cat $lp/{PKT}/em_text/patched)\n\
         $ipr/tc qdisc add dev lo root handle 1: prio || exit 13\n\
         $ipr/tc filter add dev lo parent 1: protocol ip prio 1 basic \
           match 'cmp(u8 at 0 layer transport eq 8)' classid 1:3 || exit 14\n\
         $ipr/tc filter add dev lo parent 1: protocol ip prio 2 basic \
           match 'nbyte(\"E\" at 0 layer network)' classid 1:1 || exit 15\n\
         trace em_cmp_match {PKT} || exit 16\n\
         echo 'em_nbyte_match:mod:{PKT}' >> $T/set_ftrace_filter || exit 16\n\
         ping -c 3 127.0.0.1 > /dev/null || exit 17\n\
         echo PKT_CMP_RAN:$(hits em_cmp_match)\n\
         echo PKT_NBYTE_RAN:$(hits em_nbyte_match)\n\
         untrace\n\
         $ipr/tc -s class show dev lo > /tmp/classes\n\
         echo PKT_ECHO_REQUESTS:$(grep -A1 'prio 1:3 ' /tmp/classes | sed -n 's/.*bytes \\([0-9]*\\) pkt.*/\\1/p')\n\
         echo PKT_OTHER_IP:$(grep -A1 'prio 1:1 ' /tmp/classes | sed -n 's/.*bytes \\([0-9]*\\) pkt.*/\\1/p')\n\
         $ipr/tc qdisc del dev lo root || exit 18\n\
         rmmod em_text em_nbyte em_cmp cls_basic sch_prio || exit 19\n\
         suture unload {PKT} || exit 20\n\
         bad PKT\n\
         \n\
         # (c) identical copies: vxlan, loaded after the patch.\n\
         insmod $k/udp_tunnel.ko && insmod $k/ip6_udp_tunnel.ko || exit 40\n\
         suture load /root/{VXLAN}.ko || exit 41\n\
         echo VX_TRANSITION:$(cat $lp/{VXLAN}/transition)\n\
         insmod $k/vxlan.ko || exit 42\n\
         echo VX_PATCHED:$(cat $lp/{VXLAN}/vxlan/patched)\n\
         $ipr/ip link add vx0 type vxlan id 42 remote 127.0.0.1 dstport 4789 dev lo || exit 43\n\
         $ipr/ip addr add 10.42.0.1/24 dev vx0 && $ipr/ip link set vx0 up || exit 44\n\
         trace vxlan_xmit_one {VXLAN} || exit 45\n\
         ping -c 2 -W 1 10.42.0.2 > /dev/null\n\
         echo VX_RAN:$(hits vxlan_xmit_one)\n\
         untrace\n\
         $ipr/ip link del vx0 || exit 46\n\
         rmmod vxlan || exit 47\n\
         echo VX_GONE:$(cat $lp/{VXLAN}/vxlan/patched)\n\
         suture unload {VXLAN} || exit 48\n\
         bad VX\n\
         \n\
         # (d) ipmi_msghandler, loaded after the patch.\n\
         suture load /root/{IPMI}.ko || exit 50\n\
         echo IPMI_TRANSITION:$(cat $lp/{IPMI}/transition)\n\
         echo IPMI_EARLY:$(cat $lp/{IPMI}/ipmi_msghandler/patched)\n\
         insmod $k/ipmi_msghandler.ko || exit 51\n\
         echo IPMI_PATCHED:$(cat $lp/{IPMI}/ipmi_msghandler/patched)\n\
         rmmod ipmi_msghandler || exit 52\n\
         suture unload {IPMI} || exit 53\n\
         bad IPMI\n\
         \n\
         # (e) a new vmlinux function, called from two module patches: the\n\
         # patch first, every module it patches or they need after it.\n\
         nfmods() {{ grep -cE '^(nfnetlink|nf_tables|nft_log|x_tables|xt_AUDIT) ' /proc/modules; }}\n\
         suture load /root/{AUDIT}.ko || exit 60\n\
         echo AUDIT_TRANSITION:$(cat $lp/{AUDIT}/transition)\n\
         echo AUDIT_ALONE:$(nfmods)\n\
         insmod $k/crc32c_generic.ko && insmod $k/libcrc32c.ko || exit 61\n\
         insmod $k/nfnetlink.ko && insmod $k/nf_tables.ko && insmod $k/nft_log.ko || exit 62\n\
         insmod $k/x_tables.ko && insmod $k/xt_AUDIT.ko || exit 63\n\
         echo AUDIT_NFT_LOG:$(cat $lp/{AUDIT}/nft_log/patched)\n\
         echo AUDIT_XT:$(cat $lp/{AUDIT}/xt_AUDIT/patched)\n\
         /opt/nft/nft add table ip t || exit 64\n\
         /opt/nft/nft add chain ip t c '{{ type filter hook output priority 0; }}' || exit 64\n\
         /opt/nft/nft add rule ip t c ip protocol icmp log level audit || exit 64\n\
         trace nft_log_eval {AUDIT} || exit 65\n\
         echo 'audit_log_nf_skb:mod:{AUDIT}' >> $T/set_ftrace_filter || exit 65\n\
         ping -c 2 127.0.0.1 > /dev/null || exit 66\n\
         echo AUDIT_EVAL_RAN:$(hits nft_log_eval)\n\
         echo AUDIT_NEW_RAN:$(hits audit_log_nf_skb)\n\
         untrace\n\
         echo AUDIT_RECORDS:$(dmesg | grep -c 'mark=0x0 saddr=127.0.0.1 daddr=127.0.0.1 proto=1')\n\
         /opt/nft/nft delete table ip t || exit 67\n\
         rmmod xt_AUDIT x_tables nft_log nf_tables nfnetlink || exit 68\n\
         suture unload {AUDIT} || exit 69\n\
         bad AUDIT\n\
         \n\
         # (f) copies: drbd and qede after the patch (libcrc32c from (e)).\n\
         suture load /root/{COPIES}.ko || exit 70\n\
         echo COPIES_TRANSITION:$(cat $lp/{COPIES}/transition)\n\
         insmod $k/lru_cache.ko && insmod $k/drbd.ko || exit 71\n\
         insmod $k/crc8.ko && insmod $k/qed.ko && insmod $k/qede.ko || exit 72\n\
         echo COPIES_DRBD:$(cat $lp/{COPIES}/drbd/patched)\n\
         echo COPIES_QEDE:$(cat $lp/{COPIES}/qede/patched)\n\
         rmmod qede qed crc8 drbd lru_cache || exit 73\n\
         suture unload {COPIES} || exit 74\n\
         bad COPIES\n\
         \n\
         # (g) ext4 after the patch (crc32c from (e)); a file inline in its inode.\n\
         suture load /root/{EXT4}.ko || exit 80\n\
         echo EXT4_TRANSITION:$(cat $lp/{EXT4}/transition)\n\
         insmod $k/loop.ko && insmod $k/crc16.ko && insmod $k/mbcache.ko || exit 81\n\
         insmod $k/jbd2.ko && insmod $k/ext4.ko || exit 81\n\
         echo EXT4_PATCHED:$(cat $lp/{EXT4}/ext4/patched)\n\
         mkdir -p /mnt/inl && mount -t ext4 -o loop,ro /root/inline.img /mnt/inl || exit 82\n\
         trace ext4_readpage_inline {EXT4} || exit 83\n\
         echo 'ext4_read_inline_page:mod:{EXT4}' >> $T/set_ftrace_filter || exit 83\n\
         echo EXT4_READ:$(cat /mnt/inl/small.txt)\n\
         echo EXT4_RAN:$(hits ext4_readpage_inline)\n\
         echo EXT4_PAGE_RAN:$(hits ext4_read_inline_page)\n\
         untrace\n\
         umount /mnt/inl || exit 84\n\
         rmmod ext4 jbd2 mbcache crc16 loop || exit 85\n\
         suture unload {EXT4} || exit 86\n\
         bad EXT4\n\
         \n\
         # (h) nf_conntrack after the patch (libcrc32c from (e)).\n\
         suture load /root/{SCTP}.ko || exit 90\n\
         echo SCTP_TRANSITION:$(cat $lp/{SCTP}/transition)\n\
         insmod $k/nf_defrag_ipv4.ko && insmod $k/nf_defrag_ipv6.ko || exit 91\n\
         insmod $k/nf_conntrack.ko || exit 92\n\
         echo SCTP_PATCHED:$(cat $lp/{SCTP}/nf_conntrack/patched)\n\
         rmmod nf_conntrack nf_defrag_ipv6 nf_defrag_ipv4 || exit 93\n\
         suture unload {SCTP} || exit 94\n\
         bad SCTP\n\
         \n\
         echo LEFT:$(ls $lp | wc -w)\n\
         dmesg | grep -E 'Oops|BUG:|WARNING:|general protection|Call Trace' -A3 | head -40\n"
    );
    let t = Instant::now();
    let run = vm
        .run(&script)
        .unwrap_or_else(|e| panic!("the guest died (an oops panics it) or hung:\n{e:#}"));
    let out = run.script_output();
    eprintln!("{out}");
    eprintln!(
        "guest run {:.1?}; whole test {:.1?}",
        t.elapsed(),
        started.elapsed()
    );
    assert_eq!(run.exit_status, 0, "{out}");
    assert_eq!(field(out, "OOPS_START"), "0", "{out}");
    let n = |k: &str| field(out, k).parse::<u64>().unwrap_or(0);

    // (a) Loaded before its modules: patched appears as each loads.
    assert_eq!(field(out, "PKT_TRANSITION"), "0", "{out}");
    assert_eq!(field(out, "PKT_EARLY"), "0", "{out}");
    for k in ["PKT_CMP", "PKT_NBYTE", "PKT_TEXT"] {
        assert_eq!(field(out, k), "1", "{k}:\n{out}");
    }
    // The filters matched (echo requests by their ICMP type at the transport
    // layer, the rest of IPv4 by its first byte), through the patched copies:
    // em_cmp_match for every packet, em_nbyte_match for the replies.
    assert!(n("PKT_ECHO_REQUESTS") >= 3, "{out}");
    assert!(n("PKT_OTHER_IP") >= 3, "{out}");
    assert!(n("PKT_CMP_RAN") >= 6, "{out}");
    assert!(n("PKT_NBYTE_RAN") >= 3, "{out}");
    assert_eq!(field(out, "OOPS_PKT"), "0", "{out}");

    // (c)
    assert_eq!(field(out, "VX_TRANSITION"), "0", "{out}");
    assert_eq!(field(out, "VX_PATCHED"), "1", "{out}");
    assert!(n("VX_RAN") >= 1, "the patched vxlan_xmit_one ran:\n{out}");
    assert_eq!(field(out, "VX_GONE"), "0", "{out}");
    assert_eq!(field(out, "OOPS_VX"), "0", "{out}");

    // (d)
    assert_eq!(field(out, "IPMI_TRANSITION"), "0", "{out}");
    assert_eq!(field(out, "IPMI_EARLY"), "0", "{out}");
    assert_eq!(field(out, "IPMI_PATCHED"), "1", "{out}");
    assert_eq!(field(out, "OOPS_IPMI"), "0", "{out}");

    // (e) Loaded alone, pulling in none of the modules it patches; each
    // came up patched; the rule ran the patched nft_log_eval and, from it,
    // the new function, whose records the kernel logged.
    assert_eq!(field(out, "AUDIT_TRANSITION"), "0", "{out}");
    assert_eq!(field(out, "AUDIT_ALONE"), "0", "{out}");
    assert_eq!(field(out, "AUDIT_NFT_LOG"), "1", "{out}");
    assert_eq!(field(out, "AUDIT_XT"), "1", "{out}");
    assert!(n("AUDIT_EVAL_RAN") >= 2, "{out}");
    assert!(n("AUDIT_NEW_RAN") >= 2, "{out}");
    assert!(n("AUDIT_RECORDS") >= 1, "{out}");
    assert_eq!(field(out, "OOPS_AUDIT"), "0", "{out}");

    // (f)
    assert_eq!(field(out, "COPIES_TRANSITION"), "0", "{out}");
    assert_eq!(field(out, "COPIES_DRBD"), "1", "{out}");
    assert_eq!(field(out, "COPIES_QEDE"), "1", "{out}");
    assert_eq!(field(out, "OOPS_COPIES"), "0", "{out}");

    // (g) The inline file read through the replaced ext4_readpage_inline
    // and ext4_read_inline_page, which call the new zero_user_segments copy.
    assert_eq!(field(out, "EXT4_TRANSITION"), "0", "{out}");
    assert_eq!(field(out, "EXT4_PATCHED"), "1", "{out}");
    assert_eq!(field(out, "EXT4_READ"), "inline data", "{out}");
    assert!(n("EXT4_RAN") >= 1, "{out}");
    assert!(n("EXT4_PAGE_RAN") >= 1, "{out}");
    assert_eq!(field(out, "OOPS_EXT4"), "0", "{out}");

    // (h)
    assert_eq!(field(out, "SCTP_TRANSITION"), "0", "{out}");
    assert_eq!(field(out, "SCTP_PATCHED"), "1", "{out}");
    assert_eq!(field(out, "OOPS_SCTP"), "0", "{out}");
    assert_eq!(field(out, "LEFT"), "0", "{out}");
}

/// (b) in a boot of its own: the rtmutex fix replaces vmlinux code that
/// every PI futex runs, so a broken module takes the guest down with it.
/// Its functions are `__sched` code sharing `.sched.text`, whose calls to
/// each other the assembler fixed in place: the module (built before the
/// differ gave those calls relocations) replaced 11 functions and oopsed
/// in `__rt_mutex_start_proxy_lock`. Now it replaces `remove_waiter` alone,
/// and a PI lock that times out runs it.
#[test]
fn the_real_rtmutex_fix_goes_live_in_vmlinux_and_runs() {
    let Some(release) = ready() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (rtmutex, r) = build_real(&release, "rtmutex-remove-waiter.patch", RTMUTEX, tmp.path());
    assert_eq!(
        replaced(&r),
        [("vmlinux".to_string(), "remove_waiter".to_string())],
        "{r}"
    );
    let pi = tmp.path().join("pi_timeout");
    common::run(
        Command::new("gcc")
            .args(["-static", "-O2", "-pthread", "-o"])
            .arg(&pi)
            .arg(real("pi_timeout.c")),
    );
    let _g = common::vm_lock();
    let mut vm = guest(&release, Duration::from_secs(300));
    vm.add_file(&rtmutex, &format!("/root/{RTMUTEX}.ko"))
        .unwrap();
    vm.add_file(&pi, "/root/pi_timeout").unwrap();
    let script = format!(
        "{HELPERS}\
         bad START\n\
         suture load /root/{RTMUTEX}.ko || exit 30\n\
         echo RT_TRANSITION:$(cat $lp/{RTMUTEX}/transition)\n\
         echo RT_PATCHED:$(cat $lp/{RTMUTEX}/vmlinux/patched)\n\
         trace remove_waiter {RTMUTEX} || exit 31\n\
         /root/pi_timeout || exit 32\n\
         echo RT_RAN:$(hits remove_waiter)\n\
         untrace\n\
         suture unload {RTMUTEX} || exit 33\n\
         /root/pi_timeout | sed 's/^PI_/UNPATCHED_PI_/' || exit 34\n\
         bad RT\n\
         echo LEFT:$(ls $lp | wc -w)\n"
    );
    let run = vm
        .run(&script)
        .unwrap_or_else(|e| panic!("the guest died (an oops panics it) or hung:\n{e:#}"));
    let out = run.script_output();
    eprintln!("whole test {:.1?}", started.elapsed());
    assert_eq!(run.exit_status, 0, "{out}");
    assert_eq!(field(out, "OOPS_START"), "0", "{out}");
    assert_eq!(field(out, "RT_TRANSITION"), "0", "{out}");
    assert_eq!(field(out, "RT_PATCHED"), "1", "{out}");
    // Three PI lock attempts timed out, each through the patched
    // remove_waiter (rt_mutex_cleanup_proxy_lock takes the waiter off).
    assert_eq!(field(out, "PI_TIMEOUTS"), "3", "{out}");
    let ran: u64 = field(out, "RT_RAN").parse().unwrap_or(0);
    assert!(ran >= 3, "the patched remove_waiter ran:\n{out}");
    assert_eq!(field(out, "UNPATCHED_PI_TIMEOUTS"), "3", "{out}");
    assert_eq!(field(out, "OOPS_RT"), "0", "{out}");
    assert_eq!(field(out, "LEFT"), "0", "{out}");
}

/// The update's real `struct nf_queue_entry` fix (a new member, `skb_dev`,
/// before `id`) cannot be live-patched: every queued entry the running
/// kernel made has the old layout. Refused by name, nothing built, no boot.
#[test]
fn the_real_nf_queue_entry_fix_is_refused_naming_the_struct() {
    let Some(release) = ready() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ko = tmp.path().join("x.ko");
    let b = build(&release, &real("nf-queue-entry.patch"), &ko, &["--json"]);
    assert_eq!(b.status, 2, "{}\n{}", b.stdout, b.stderr);
    let doc: serde_json::Value = serde_json::from_str(&b.stdout).unwrap();
    assert_eq!(doc["status"], "refused", "{doc}");
    let reasons = doc["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{doc}");
    let why = reasons[0].as_str().unwrap();
    assert!(
        why.starts_with("include/net/netfilter/nf_queue.h: struct nf_queue_entry: layout changed")
            && why.contains("first member moved: id")
            && why.contains("shadow variables"),
        "{why}"
    );
    assert!(!ko.exists());

    // A notrace function behind a tail call: refused, the reason says why
    // its caller cannot stand in for it.
    let b = build(&release, &real("fsmount-nouser.patch"), &ko, &["--json"]);
    assert_eq!(b.status, 2, "{}\n{}", b.stdout, b.stderr);
    let doc: serde_json::Value = serde_json::from_str(&b.stdout).unwrap();
    let why = doc["reasons"][0].as_str().unwrap_or_default();
    assert!(
        why.contains("__do_sys_fsmount")
            && why.contains("no ftrace hook")
            && why.contains("__x64_sys_fsmount reaches it other than by a call"),
        "{doc}"
    );
    assert!(!ko.exists());
}
