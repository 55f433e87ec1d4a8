//! Against an installed kernel of Debian's 6.12 series (`X86_KERNEL_IBT`,
//! `CALL_PADDING`), named by `SUTURE_TEST_RELEASE_612` (`scripts/test.sh` sets
//! it). Unset: skipped with a printed reason, except under `CI`, where the
//! tests must run.

use std::path::Path;
use std::sync::OnceLock;

use suture_abi::target::TargetSym;
use suture_symbols::*;

struct Real {
    vmlinux: Vec<u8>,
    kallsyms: Kallsyms,
    exports: Exports,
}

fn real() -> Option<&'static Real> {
    static R: OnceLock<Option<Real>> = OnceLock::new();
    R.get_or_init(|| {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty());
        let Ok(release) = std::env::var("SUTURE_TEST_RELEASE_612") else {
            assert!(!ci, "CI must set SUTURE_TEST_RELEASE_612 (scripts/test.sh does)");
            eprintln!("SKIPPED: SUTURE_TEST_RELEASE_612 is not set (scripts/setup.sh --with-612 installs a 6.12 release)");
            return None;
        };
        let image = format!("/boot/vmlinuz-{release}");
        assert!(Path::new(&image).exists(), "SUTURE_TEST_RELEASE_612={release}, but {image} is missing");
        let paths = ReleasePaths::new(Path::new("/"), &release);
        let (vmlinux, kallsyms) = paths.load_vmlinux().unwrap_or_else(|e| panic!("{e}"));
        let exports = paths.load_exports().unwrap_or_else(|e| panic!("{e}"));
        Some(Real { vmlinux, kallsyms, exports })
    })
    .as_ref()
}

/// ORIG for drivers/tty/serial/serial_core.c, compiled in the 6.12.117+deb12
/// source tree with the Debian config and `-ffunction-sections
/// -fdata-sections` (debug sections stripped). Only meaningful against that
/// release: the tests using it check the release first.
const SERIAL_CORE_612_O: &[u8] = include_bytes!("data/serial_core_612.o");
const SERIAL_CORE_612_RELEASE: &str = "6.12.117+deb12-amd64";

fn sealed(r: &Real) -> Vec<u64> {
    ibt_sealed_sites(&r.vmlinux, &r.kallsyms).unwrap()
}

/// The kernel seals thousands of `endbr64` at boot, but the image file is
/// never sealed: every listed site still holds `endbr64`, at the start of a
/// function. A byte comparison against the image therefore does not see the
/// sealing at all.
#[test]
fn sealed_endbr_sites_are_still_endbr_in_the_image() {
    let Some(r) = real() else { return };
    let sites = sealed(r);
    assert!(
        sites.len() > 1000,
        "only {} sealed sites: is this an IBT kernel?",
        sites.len()
    );
    let image = Image::parse(&r.vmlinux).unwrap();
    let starts: std::collections::HashSet<u64> = r
        .kallsyms
        .symbols()
        .iter()
        .filter(|s| matches!(s.kind, 't' | 'T' | 'w' | 'W'))
        .map(|s| s.addr)
        .collect();
    for &a in &sites {
        assert_eq!(
            image.bytes_at(a, 4),
            Some(&ENDBR64[..]),
            "sealed site {a:#x} does not hold endbr64 in the image"
        );
        assert!(
            starts.contains(&a),
            "sealed site {a:#x} is not the start of a function"
        );
    }
    // A 6.1 kernel has no IBT, hence no list: not an error.
    let r61 = std::env::var("SUTURE_TEST_RELEASE").unwrap_or_else(|_| "6.1.0-57-amd64".into());
    let old = format!("/boot/vmlinuz-{r61}");
    if Path::new(&old).exists() {
        let (v, k) = ReleasePaths::new(Path::new("/"), &r61)
            .load_vmlinux()
            .unwrap();
        assert!(ibt_sealed_sites(&v, &k).unwrap().is_empty());
    }
}

/// serial_core.c's `serial_core_register_port` is global and only called
/// directly, so the kernel seals its `endbr64`; compiled by us it starts with
/// `endbr64`. The reproduction check compares with the image and so finds it
/// identical, as it should. The target also names the `__pfx_` padding of the
/// functions a patch reaches through kallsyms, at the same position as the
/// function.
#[test]
fn a_sealed_function_reproduces_and_prefixes_are_in_the_target() {
    let Some(r) = real() else { return };
    if std::env::var("SUTURE_TEST_RELEASE_612").as_deref() != Ok(SERIAL_CORE_612_RELEASE) {
        eprintln!("SKIPPED: the serial_core.o of this test is {SERIAL_CORE_612_RELEASE}'s");
        return;
    }
    let addr = r.kallsyms.unique_addr("serial_core_register_port").unwrap();
    assert!(
        sealed(r).binary_search(&addr).is_ok(),
        "serial_core_register_port is not sealed in this release"
    );
    let rep = build_target_report(
        TargetImage::Vmlinux {
            kallsyms: &r.kallsyms,
            vmlinux: Some(&r.vmlinux),
        },
        &r.exports,
        "vmlinux",
        SERIAL_CORE_612_O,
    )
    .unwrap();
    // uart_close, uart_hangup, ... hold jump labels: `jmp` in the object, the
    // NOP objtool made of it in vmlinux.o in the image; still identical.
    assert!(rep.mismatched.is_empty(), "{:?}", rep.mismatched);
    for f in [
        "uart_close",
        "uart_hangup",
        "uart_flush_buffer",
        "uart_wait_until_sent",
    ] {
        assert!(
            !rep.unverified_functions.iter().any(|u| u == f),
            "{f} not verified"
        );
    }
    assert!(!rep
        .unverified_functions
        .contains(&"serial_core_register_port".to_string()));
    assert!(
        rep.compared_code && rep.verified_functions > 50,
        "{}",
        rep.verified_functions
    );
    let t = &rep.target.symbols;
    assert_eq!(t["uart_get_info"], TargetSym::Unexported { sympos: 0 });
    assert_eq!(
        t["__pfx_uart_get_info"],
        TargetSym::Unexported { sympos: 0 }
    );
    // type_show is defined 18 times; its padding has the same position.
    let TargetSym::Unexported { sympos } = t["type_show"] else {
        panic!("type_show is exported?")
    };
    assert!(sympos > 0);
    assert_eq!(t["__pfx_type_show"], TargetSym::Unexported { sympos });
    // Exported functions are reached by name: no prefix needed.
    assert_eq!(t["uart_write_wakeup"], TargetSym::Exported);
    assert!(!t.contains_key("__pfx_uart_write_wakeup"));
}

/// The tables of what the kernel rewrites in its own code are all found in
/// the image: alternatives, static keys, and the seal list, every site within
/// the kernel image.
#[test]
fn runtime_rewritten_sites_come_from_the_images_own_tables() {
    let Some(r) = real() else { return };
    for t in [
        "__alt_instructions",
        "__alt_instructions_end",
        "__start___jump_table",
        "__stop___jump_table",
    ] {
        assert!(r.kallsyms.unique_addr(t).is_some(), "no {t} in kallsyms");
    }
    let sites = runtime_rewritten_sites(&r.vmlinux, &r.kallsyms).unwrap();
    let sealed = sealed(r);
    assert!(
        sites.len() > sealed.len() + 10_000,
        "{} sites, {} of them sealed endbr64",
        sites.len(),
        sealed.len()
    );
    let (lo, hi) = (
        r.kallsyms.unique_addr("_stext").unwrap(),
        r.kallsyms.unique_addr("_end").unwrap(),
    );
    let outside: Vec<_> = sites
        .iter()
        .filter(|(a, l)| *a < lo || a + *l as u64 > hi || *l > 64)
        .take(5)
        .collect();
    assert!(
        outside.is_empty(),
        "sites outside the kernel image: {outside:x?}"
    );
}
