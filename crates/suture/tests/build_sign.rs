//! What `suture build` records in and around the module: a signature in the
//! kernel's format (`--sign-key/--sign-cert`) that verifies with openssl
//! against the certificate over exactly the module's bytes, and the build
//! metadata in `.modinfo` that the host side reads.

mod common;

use std::path::Path;
use std::process::Command;

fn release() -> Option<String> {
    let r = std::env::var("SUTURE_TEST_RELEASE").unwrap_or_else(|_| "6.1.0-56-amd64".into());
    if Path::new(&format!("/boot/vmlinuz-{r}")).exists() {
        return Some(r);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install the kernel {r}"
    );
    eprintln!("SKIP: /boot/vmlinuz-{r} is not installed");
    None
}

#[test]
fn a_signed_module_verifies_against_its_certificate() {
    let Some(r) = release() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (key, cert) = common::signing_key(d, "test");
    let ko = d.join("signed.ko");
    let o = Command::new(env!("CARGO_BIN_EXE_suture"))
        .arg("build")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cmdline.patch"))
        .args(["--kernel", &r, "-o"])
        .arg(&ko)
        .arg("--sign-key")
        .arg(&key)
        .arg("--sign-cert")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&ko).unwrap();
    let signed = suture_klp::sign::split(&bytes)
        .unwrap()
        .expect("the module is signed");
    assert_eq!(&signed.module[..4], b"\x7fELF");
    std::fs::write(d.join("sig.der"), signed.signature).unwrap();
    std::fs::write(d.join("mod.bin"), signed.module).unwrap();
    let verify = |content: &Path| {
        Command::new("openssl")
            .args([
                "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any",
            ])
            .arg("-in")
            .arg(d.join("sig.der"))
            .arg("-content")
            .arg(content)
            .arg("-certfile")
            .arg(&cert)
            .arg("-CAfile")
            .arg(&cert)
            .args(["-out", "/dev/null"])
            .output()
            .unwrap()
    };
    let ok = verify(&d.join("mod.bin"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The signature covers the module: one changed byte fails verification.
    let mut tampered = signed.module.to_vec();
    tampered[100] ^= 1;
    std::fs::write(d.join("tampered.bin"), tampered).unwrap();
    assert!(!verify(&d.join("tampered.bin")).status.success());
}

#[test]
fn build_metadata_is_recorded_in_modinfo() {
    let Some(r) = release() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ko = tmp.path().join("m.ko");
    let patch = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/serial-type-show.patch");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_suture"))
            .arg("build")
            .arg(&patch)
            .args(["--kernel", &r, "-o"])
            .arg(&ko)
            .args(extra)
            .output()
            .unwrap()
    };
    let bad = run(&["--cve", "CVE-24-1"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a CVE id"));
    assert!(!ko.exists());

    let o = run(&[
        "--cve",
        "CVE-2024-12345",
        "--cve",
        "CVE-2025-0001",
        "--description",
        "mark serial port types",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info = suture_klp::modinfo::read_modinfo(&std::fs::read(&ko).unwrap()).unwrap();
    let all = |k: &str| {
        info.iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("suture_cve"), ["CVE-2024-12345", "CVE-2025-0001"]);
    assert_eq!(all("suture_description"), ["mark serial port types"]);
    assert_eq!(all("suture_release"), [r.as_str()]);
    assert_eq!(all("livepatch"), ["Y"]);
    // The replaced function with its position among the 17 `type_show`s.
    let funcs = all("suture_func");
    assert_eq!(funcs.len(), 1);
    let f: Vec<&str> = funcs[0].split_whitespace().collect();
    assert_eq!(&f[..2], ["vmlinux", "type_show"]);
    assert!(f[2].parse::<u32>().unwrap() > 0);
    // The build-id is the image's own, as the running kernel reports it.
    let id = all("suture_release_build_id");
    assert_eq!(id.len(), 1);
    assert_eq!(id[0].len(), 40, "{id:?}");
    let mut h = sha2_hex(&std::fs::read(&patch).unwrap());
    h.make_ascii_lowercase();
    assert_eq!(all("suture_patch_sha256"), [h.as_str()]);
    // modinfo(8) reads the same.
    let m = Command::new("modinfo")
        .args(["-F", "suture_cve"])
        .arg(&ko)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&m.stdout),
        "CVE-2024-12345\nCVE-2025-0001\n"
    );
}

fn sha2_hex(b: &[u8]) -> String {
    let o = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    o.stdin.as_ref().unwrap().write_all(b).unwrap();
    let out = o.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
