//! kbuild's own answer, on the release's prepared tree, to "does this
//! configuration build this file, and into what": vmlinux objects, modules,
//! parts of composite modules, and files Debian's config leaves out, named
//! by their option.

use std::path::Path;
use std::process::Command;
use suture_kernel::kbuild::{applicability, Applicability, Target};

use suture_kernel::{Release, Tree};

/// The release under test (`SUTURE_TEST_RELEASE`, else 6.1.0-57) and its
/// prepared tree from the cache; `None` (a failure under CI) when the
/// release is not installed.
fn tree() -> Option<(String, Tree)> {
    let r = std::env::var("SUTURE_TEST_RELEASE").unwrap_or_else(|_| "6.1.0-57-amd64".into());
    if !Path::new(&format!("/boot/vmlinuz-{r}")).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the kernel {r}"
        );
        eprintln!("SKIP: /boot/vmlinuz-{r} is not installed");
        return None;
    }
    let rel = Release::find(&r, Path::new("/")).unwrap();
    let tree = Tree::open(rel, &suture_kernel::tree::cache_root(), &|m| {
        eprintln!("{m}")
    })
    .unwrap();
    Some((r, tree))
}

#[test]
fn kbuild_decides_what_the_release_builds() {
    let Some((r, tree)) = tree() else { return };
    let config = std::fs::read_to_string(&tree.release.config).unwrap();
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(&tree.dir)
        .arg(format!("CC={}", tree.release.cc))
        .arg(format!("KERNELRELEASE={r}"));
    let objects: Vec<String> = [
        "fs/proc/cmdline.o",
        "fs/btrfs/inode.o",
        "drivers/char/ipmi/ipmi_si_intf.o",
        "drivers/char/ipmi/ipmi_msghandler.o",
        "drivers/tty/serial/altera_jtaguart.o",
        "net/xfrm/espintcp.o",
        "kernel/locking/rtmutex.o",
        "kernel/locking/rtmutex_api.o",
        "arch/x86/kvm/x86.o",
    ]
    .map(String::from)
    .to_vec();
    let t0 = std::time::Instant::now();
    let a = applicability(&tree.dir, make, &config, &objects).unwrap();
    eprintln!(
        "kbuild answered for {} objects in {:.2?}",
        objects.len(),
        t0.elapsed()
    );
    let built = |o: &str| match &a[o] {
        Applicability::Built { targets, .. } => targets.clone(),
        other => panic!("{o}: {other:?}"),
    };
    let not_built = |o: &str| match &a[o] {
        Applicability::NotBuilt(why) => why.clone(),
        other => panic!("{o}: {other:?}"),
    };
    assert_eq!(built("fs/proc/cmdline.o"), [Target::Vmlinux]);
    assert_eq!(built("kernel/locking/rtmutex_api.o"), [Target::Vmlinux]);
    assert_eq!(built("fs/btrfs/inode.o"), [Target::Module("btrfs".into())]);
    assert_eq!(
        built("drivers/char/ipmi/ipmi_si_intf.o"),
        [Target::Module("ipmi_si".into())]
    );
    assert_eq!(
        built("drivers/char/ipmi/ipmi_msghandler.o"),
        [Target::Module("ipmi_msghandler".into())]
    );
    assert_eq!(built("arch/x86/kvm/x86.o"), [Target::Module("kvm".into())]);
    assert_eq!(
        not_built("drivers/tty/serial/altera_jtaguart.o"),
        "CONFIG_SERIAL_ALTERA_JTAGUART is not set"
    );
    assert_eq!(
        not_built("net/xfrm/espintcp.o"),
        "CONFIG_XFRM_ESPINTCP is not set"
    );
    // Built only through another unit's #include, never as an object.
    assert!(
        not_built("kernel/locking/rtmutex.o").contains("rtmutex.o"),
        "{}",
        not_built("kernel/locking/rtmutex.o")
    );
    let inc =
        suture_kernel::kbuild::including_units(&tree.dir, "kernel/locking/rtmutex.c").unwrap();
    for u in [
        "kernel/locking/rtmutex_api.c",
        "kernel/locking/rwsem.c",
        "kernel/locking/spinlock_rt.c",
        "kernel/locking/ww_rt_mutex.c",
    ] {
        assert!(inc.iter().any(|i| i == u), "{u} not in {inc:?}");
    }
}

#[test]
fn every_unit_of_the_configuration_is_found() {
    let Some((_, tree)) = tree() else { return };
    let t0 = std::time::Instant::now();
    let units = tree.all_units(&|m| eprintln!("{m}")).unwrap();
    eprintln!("{} units in {:.1?}", units.len(), t0.elapsed());
    let has = |o: &str, d: &str| units.iter().any(|(u, l)| u == o && l == d);
    assert!(has("fs/proc/cmdline.o", "fs/proc"));
    assert!(has(
        "drivers/char/ipmi/ipmi_msghandler.o",
        "drivers/char/ipmi"
    ));
    assert!(has("kernel/locking/rtmutex_api.o", "kernel/locking"));
    assert!(has("fs/btrfs/inode.o", "fs/btrfs"));
    assert!(!units
        .iter()
        .any(|(u, _)| u == "drivers/tty/serial/altera_jtaguart.o"));
    assert!(!units.iter().any(|(u, _)| u == "kernel/locking/rtmutex.o"));
    // A distribution kernel builds thousands of units.
    assert!(units.len() > 10_000, "{}", units.len());
    // The second call reads the cache.
    let t1 = std::time::Instant::now();
    assert_eq!(tree.all_units(&|_| {}).unwrap().len(), units.len());
    eprintln!("cached: {:.1?}", t1.elapsed());
}

#[test]
fn the_include_graph_finds_the_units_of_a_header() {
    let Some((_, tree)) = tree() else { return };
    let t0 = std::time::Instant::now();
    let g = tree.include_graph(&|m| eprintln!("{m}")).unwrap();
    eprintln!("graph of {} files in {:.1?}", g.file_count(), t0.elapsed());
    let t1 = std::time::Instant::now();
    let g = tree.include_graph(&|_| {}).unwrap();
    let proc_units = g.units_including("fs/proc/internal.h");
    eprintln!("cached graph and one query: {:.1?}", t1.elapsed());
    assert!(
        proc_units.iter().any(|u| u == "fs/proc/base.c"),
        "{proc_units:?}"
    );
    assert!(
        proc_units.iter().all(|u| u.starts_with("fs/")),
        "{proc_units:?}"
    );
    // rtmutex.c is included by rtmutex_api.c.
    assert!(g
        .units_including("kernel/locking/rtmutex.c")
        .iter()
        .any(|u| u == "kernel/locking/rtmutex_api.c"));
    // A core header: thousands.
    let n = g.units_including("include/linux/sched.h").len();
    assert!(n > 3000, "{n}");
    eprintln!(
        "fs/proc/internal.h: {} units; include/linux/sched.h: {n}",
        proc_units.len()
    );
}
