//! `suture build --sign-key --sign-cert`: the module carries a signature in the
//! kernel's format that verifies with openssl against the certificate, over
//! exactly the module's bytes.

use std::path::Path;
use std::process::Command;

fn release() -> Option<String> {
    let r = std::env::var("SUTURE_TEST_RELEASE").unwrap_or_else(|_| "6.1.0-56-amd64".into());
    if Path::new(&format!("/boot/vmlinuz-{r}")).exists() {
        return Some(r);
    }
    assert!(std::env::var_os("CI").is_none(), "CI must install the kernel {r}");
    eprintln!("SKIP: /boot/vmlinuz-{r} is not installed");
    None
}

#[test]
fn a_signed_module_verifies_against_its_certificate() {
    let Some(r) = release() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let st = Command::new("openssl")
        .args(["req", "-new", "-nodes", "-utf8", "-sha256", "-days", "1", "-batch", "-x509"])
        .args(["-newkey", "rsa:2048", "-subj", "/CN=suture test"])
        .arg("-keyout")
        .arg(d.join("key.pem"))
        .arg("-out")
        .arg(d.join("cert.pem"))
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let ko = d.join("signed.ko");
    let o = Command::new(env!("CARGO_BIN_EXE_suture"))
        .arg("build")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cmdline.patch"))
        .args(["--kernel", &r, "-o"])
        .arg(&ko)
        .arg("--sign-key")
        .arg(d.join("key.pem"))
        .arg("--sign-cert")
        .arg(d.join("cert.pem"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&ko).unwrap();
    let signed = suture_klp::sign::split(&bytes).unwrap().expect("the module is signed");
    assert_eq!(&signed.module[..4], b"\x7fELF");
    std::fs::write(d.join("sig.der"), signed.signature).unwrap();
    std::fs::write(d.join("mod.bin"), signed.module).unwrap();
    let verify = |content: &Path| {
        Command::new("openssl")
            .args(["cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any"])
            .arg("-in")
            .arg(d.join("sig.der"))
            .arg("-content")
            .arg(content)
            .arg("-certfile")
            .arg(d.join("cert.pem"))
            .arg("-CAfile")
            .arg(d.join("cert.pem"))
            .args(["-out", "/dev/null"])
            .output()
            .unwrap()
    };
    let ok = verify(&d.join("mod.bin"));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // The signature covers the module: one changed byte fails verification.
    let mut tampered = signed.module.to_vec();
    tampered[100] ^= 1;
    std::fs::write(d.join("tampered.bin"), tampered).unwrap();
    assert!(!verify(&d.join("tampered.bin")).status.success());
}
