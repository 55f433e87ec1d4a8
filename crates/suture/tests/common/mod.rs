//! What the VM test files share: which releases to test, the real `suture`
//! binary, building example patches with it, booting a guest of a release and
//! reading the guest's `KEY:value` lines. Each test file is its own crate and
//! uses part of this, hence `dead_code` is allowed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use suture_lab::Vm;

pub fn suture() -> &'static str {
    env!("CARGO_BIN_EXE_suture")
}

/// Runs a host command that must succeed; its stdout and stderr together.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// A throw-away RSA signing key and its self-signed certificate in `dir`
/// (`WHO.key`, `WHO.pem`), as `scripts/sign-file` and suture's trust store
/// take them.
pub fn signing_key(dir: &Path, who: &str) -> (PathBuf, PathBuf) {
    let (key, cert) = (
        dir.join(format!("{who}.key")),
        dir.join(format!("{who}.pem")),
    );
    run(Command::new("openssl")
        .args([
            "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "2", "-batch", "-x509",
        ])
        .args(["-newkey", "rsa:2048", "-subj", &format!("/CN=suture {who}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (key, cert)
}

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// One guest at a time keeps each within its timeout on a 2-core machine.
pub static VM_LOCK: Mutex<()> = Mutex::new(());

pub fn vm_lock() -> std::sync::MutexGuard<'static, ()> {
    VM_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The 6.1 release: `SUTURE_TEST_RELEASE`, else the one `linux-image-amd64`
/// depends on.
pub fn release_61() -> String {
    if let Ok(r) = std::env::var("SUTURE_TEST_RELEASE") {
        return r;
    }
    let o = Command::new("dpkg-query")
        .args(["-W", "-f=${Depends}", "linux-image-amd64"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    o.split([',', ' '])
        .find_map(|w| w.strip_prefix("linux-image-"))
        .map(str::to_string)
        .unwrap_or_else(|| "6.1.0-56-amd64".to_string())
}

/// The 6.1 release, or `None` when it is not installed (a failure under `CI`).
pub fn ready_61() -> Option<String> {
    let r = release_61();
    suture_lab::require_kernel_or_skip(&r)
        .expect("kernel for the VM tests")
        .then_some(r)
}

/// The 6.12 release under test (`SUTURE_TEST_RELEASE_612`), or `None` (after
/// saying why) when the tests skip. Under `CI` a missing release is a failure.
pub fn ready_612() -> Option<String> {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let Ok(r) = std::env::var("SUTURE_TEST_RELEASE_612") else {
        assert!(
            !ci,
            "CI must set SUTURE_TEST_RELEASE_612 (scripts/test.sh does, from setup.sh --with-612)"
        );
        eprintln!("SKIP: SUTURE_TEST_RELEASE_612 is not set (bash scripts/setup.sh --with-612 installs a 6.12 release and prints it)");
        return None;
    };
    assert!(
        r.starts_with("6.12."),
        "SUTURE_TEST_RELEASE_612={r} is not a 6.12 release"
    );
    suture_lab::require_kernel_or_skip(&r)
        .expect("kernel for the 6.12 VM tests")
        .then_some(r)
}

pub fn is_612(release: &str) -> bool {
    release.starts_with("6.12.")
}

/// Command-line switches that make a 6.12 guest use call-depth tracking (the
/// kernel then rewrites module calls and returns at load time).
pub const CALL_DEPTH: [&str; 2] = ["retbleed=force,stuff", "spectre_v2=retpoline"];

/// A guest of `release` with `suture` in `/bin`; 6.12 guests run with
/// call-depth tracking on.
pub fn vm(release: &str) -> Vm {
    let mut vm = Vm::new(release).unwrap();
    if is_612(release) {
        for a in CALL_DEPTH {
            vm = vm.append(a);
        }
    }
    vm.add_executable(Path::new(suture()), "/bin/suture")
        .unwrap();
    vm
}

/// `examples/NAME`, or its port to 6.12's sources (`examples/6.12/NAME`) when
/// there is one and `release` is a 6.12 release.
pub fn example(release: &str, name: &str) -> PathBuf {
    let port = examples().join("6.12").join(name);
    if is_612(release) && port.is_file() {
        port
    } else {
        examples().join(name)
    }
}

pub struct Built {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn build(release: &str, patch: &Path, out: &Path, extra: &[&str]) -> Built {
    let o = Command::new(suture())
        .arg("build")
        .arg(patch)
        .args(["--kernel", release, "-o"])
        .arg(out)
        .args(extra)
        .output()
        .expect("running suture build");
    Built {
        status: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Builds example `patch` (see [`example`]) as module `name` into `dir/name.ko`.
pub fn build_ok(
    release: &str,
    patch: &str,
    name: &str,
    dir: &Path,
    extra: &[&str],
) -> (PathBuf, Built) {
    let ko = dir.join(format!("{name}.ko"));
    let mut args = vec!["--name", name];
    args.extend_from_slice(extra);
    let b = build(release, &example(release, patch), &ko, &args);
    assert_eq!(
        b.status, 0,
        "suture build {patch} for {release} failed:\n{}\n{}",
        b.stdout, b.stderr
    );
    assert!(ko.exists());
    (ko, b)
}

/// Guest shell lines printing `COMPLAINTS:N`, the oopses, BUGs and warnings
/// in the kernel log, then the first few of them.
pub const KERNEL_LOG_CHECK: &str =
    "echo COMPLAINTS:$(dmesg | grep -cE 'Oops|BUG:|WARNING:|general protection|Call Trace')\n\
     dmesg | grep -E 'Oops|BUG:|WARNING:|general protection|Call Trace' | head -5\n";

/// The value after `KEY:` on its own line of the guest's output.
pub fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {key}: line in guest output:\n{out}"))
        .trim()
}

/// Functions of the finished module `ko` without ORC data: no ORC entry from
/// their padding (16 bytes before the entry on CALL_PADDING kernels, where
/// objtool starts the function's first entry) to their end. The kernel's
/// unwinder cannot walk a stack through such a function, so a task inside one
/// has no reliable stack for the livepatch transition.
pub fn functions_without_orc(ko: &Path) -> Vec<String> {
    use suture_klp::elf::{Elf, SHN_LORESERVE, SHN_UNDEF};
    let elf = Elf::parse(std::fs::read(ko).unwrap()).unwrap();
    let symtab = elf.symtab().unwrap();
    let strtab = elf.shdrs[symtab].link as usize;
    let syms = elf.syms(symtab).unwrap();
    let Some(ip) =
        (0..elf.shdrs.len()).find(|&i| elf.section_name(i).is_ok_and(|n| n == ".orc_unwind_ip"))
    else {
        return vec!["(the module has no .orc_unwind_ip at all)".into()];
    };
    let rela = (0..elf.shdrs.len())
        .find(|&i| {
            elf.shdrs[i].kind == suture_klp::elf::SHT_RELA && elf.shdrs[i].info as usize == ip
        })
        .expect(".orc_unwind_ip without relocations");
    let covered: Vec<(u16, u64)> = elf
        .relas(rela)
        .unwrap()
        .iter()
        .map(|r| {
            let s = syms[r.sym()];
            (s.shndx, s.value.wrapping_add(r.addend as u64))
        })
        .collect();
    let mut missing = Vec::new();
    for s in &syms {
        let name = elf.str_at(strtab, s.name).unwrap();
        // `__pfx_` padding is NOPs before a function, never executed by itself.
        if s.info & 0xf != 2
            || s.shndx == SHN_UNDEF
            || s.shndx >= SHN_LORESERVE
            || name.starts_with("__pfx_")
        {
            continue;
        }
        let from = s.value.saturating_sub(16);
        if !covered
            .iter()
            .any(|&(sec, at)| sec == s.shndx && at >= from && at < s.value + s.size.max(1))
        {
            missing.push(name.to_string());
        }
    }
    missing
}

/// `examples/DIR` (an out-of-tree module's source) copied under `tmp` and
/// built there with the release's kbuild, as hosts build it; returns the copy.
pub fn make_example_module(release: &str, dir: &str, files: &[&str], tmp: &Path) -> PathBuf {
    let src = tmp.join(dir);
    std::fs::create_dir_all(&src).unwrap();
    for f in files {
        std::fs::copy(examples().join(dir).join(f), src.join(f)).unwrap();
    }
    let st = Command::new("make")
        .arg("-C")
        .arg(format!("/usr/src/linux-headers-{release}"))
        .arg(format!("M={}", src.display()))
        .arg("modules")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    src
}
