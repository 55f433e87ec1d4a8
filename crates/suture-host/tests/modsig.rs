//! The signature check on real signatures: a module Debian shipped for the
//! release, stripped of Debian's signature and signed again with a key made
//! here by the release's own `scripts/sign-file` (and by `openssl cms`, which
//! adds signed attributes). Each kind of tampering is refused with its reason.

use std::path::{Path, PathBuf};
use std::process::Command;
use suture_host::modsig::{check, split, SigError, TrustStore, MAGIC};

fn release() -> Option<String> {
    let r = std::env::var("SUTURE_TEST_RELEASE").unwrap_or_else(|_| "6.1.0-56-amd64".into());
    if Path::new(&format!("/usr/src/linux-headers-{r}/scripts/sign-file")).exists() {
        return Some(r);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install linux-headers-{r}"
    );
    eprintln!("SKIP: linux-headers-{r} is not installed");
    None
}

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A key pair and a self-signed certificate, `NAME.key` and `NAME.pem`.
fn keypair(d: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, cert) = (d.join(format!("{name}.key")), d.join(format!("{name}.pem")));
    run(Command::new("openssl")
        .args([
            "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "1", "-batch", "-x509",
        ])
        .args([
            "-newkey",
            "rsa:2048",
            "-subj",
            &format!("/CN=suture test {name}"),
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (key, cert)
}

/// A real module of the release without Debian's signature.
fn unsigned_module(r: &str) -> Vec<u8> {
    let shipped = std::fs::read(format!("/lib/modules/{r}/kernel/fs/binfmt_misc.ko")).unwrap();
    let app = split(&shipped).unwrap().expect("Debian signs its modules");
    app.content.to_vec()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    release: String,
    unsigned: Vec<u8>,
    key: PathBuf,
    cert: PathBuf,
    store: TrustStore,
}

fn fixture() -> Option<Fixture> {
    let release = release()?;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (key, cert) = keypair(&dir, "a");
    let store = TrustStore::from_files(&[("a.pem".into(), std::fs::read(&cert).unwrap())]).unwrap();
    assert!(!store.is_empty());
    Some(Fixture {
        unsigned: unsigned_module(&release),
        _tmp: tmp,
        dir,
        release,
        key,
        cert,
        store,
    })
}

impl Fixture {
    fn sign_file(&self, hash: &str, extra: &[&str], key: &Path, cert: &Path) -> Vec<u8> {
        let ko = self.dir.join("m.ko");
        std::fs::write(&ko, &self.unsigned).unwrap();
        run(Command::new(format!(
            "/usr/src/linux-headers-{}/scripts/sign-file",
            self.release
        ))
        .args(extra)
        .arg(hash)
        .arg(key)
        .arg(cert)
        .arg(&ko));
        std::fs::read(&ko).unwrap()
    }
    fn signed(&self) -> Vec<u8> {
        self.sign_file("sha256", &[], &self.key, &self.cert)
    }
}

/// Appends a detached DER signature in the kernel's format.
fn append(content: &[u8], cms: &[u8]) -> Vec<u8> {
    let mut out = content.to_vec();
    out.extend_from_slice(cms);
    out.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&(cms.len() as u32).to_be_bytes());
    out.extend_from_slice(MAGIC);
    out
}

#[test]
fn a_good_signature_is_accepted_and_names_its_signer() {
    let Some(f) = fixture() else { return };
    let ko = f.signed();
    let rep = check(&ko, &f.store).unwrap().expect("signed");
    assert!(rep.signer.contains("CN=suture test a"), "{}", rep.signer);
    assert!(rep.verified_by.as_deref().unwrap().contains("a.pem"));
    // With an empty store the signature is read but not verified.
    let rep = check(&ko, &TrustStore::default()).unwrap().unwrap();
    assert_eq!(rep.verified_by, None);
    // SHA-512, signer named by subject key id (`sign-file -k`).
    let ko = f.sign_file("sha512", &["-k"], &f.key, &f.cert);
    let rep = check(&ko, &f.store).unwrap().unwrap();
    assert!(rep.signer.starts_with("key id "), "{}", rep.signer);
    assert!(rep.verified_by.is_some());
}

#[test]
fn a_flipped_byte_in_the_signed_content_is_a_modified_module() {
    let Some(f) = fixture() else { return };
    let mut ko = f.signed();
    ko[1000] ^= 1;
    let e = check(&ko, &f.store).unwrap_err();
    assert!(matches!(e, SigError::Modified { .. }), "{e:?}");
    assert!(
        e.to_string().contains("modified after it was signed"),
        "{e}"
    );
}

#[test]
fn a_flipped_byte_in_the_signature_is_a_bad_signature() {
    let Some(f) = fixture() else { return };
    let mut ko = f.signed();
    // The RSA signature value ends the SignerInfo, so it ends the CMS,
    // right before the trailer.
    let at = ko.len() - MAGIC.len() - 12 - 10;
    ko[at] ^= 0x40;
    let e = check(&ko, &f.store).unwrap_err();
    assert!(matches!(e, SigError::BadSignature { .. }), "{e:?}");
}

#[test]
fn an_unknown_signer_is_named() {
    let Some(f) = fixture() else { return };
    let (bkey, bcert) = keypair(&f.dir, "b");
    let ko = f.sign_file("sha256", &[], &bkey, &bcert);
    match check(&ko, &f.store).unwrap_err() {
        SigError::UnknownSigner { signer } => {
            assert!(
                signer.contains("CN=suture test b") && signer.contains("serial"),
                "{signer}"
            )
        }
        e => panic!("{e:?}"),
    }
    // Debian's own signature on the shipped module: a key not in the store.
    let shipped = std::fs::read(format!(
        "/lib/modules/{}/kernel/fs/binfmt_misc.ko",
        f.release
    ))
    .unwrap();
    let e = check(&shipped, &f.store).unwrap_err();
    assert!(matches!(e, SigError::UnknownSigner { .. }), "{e:?}");
    assert!(
        e.to_string().contains("issuer \"CN=") && e.to_string().contains("serial"),
        "{e}"
    );
}

#[test]
fn an_unsigned_module_is_refused_only_when_the_store_has_certificates() {
    let Some(f) = fixture() else { return };
    assert_eq!(
        check(&f.unsigned, &f.store).unwrap_err(),
        SigError::Unsigned
    );
    assert_eq!(check(&f.unsigned, &TrustStore::default()).unwrap(), None);
}

#[test]
fn a_truncated_or_malformed_signature_block_is_refused_even_without_a_store() {
    let Some(f) = fixture() else { return };
    let ko = f.signed();
    let body = ko.len() - MAGIC.len();
    let empty = TrustStore::default();
    // The trailer lost its first 4 bytes; and a file too short for one.
    let lost = [&ko[..body - 12], &ko[body - 8..]].concat();
    let tiny = [&b"xyz"[..], &ko[body - 5..]].concat();
    for bad in [lost, tiny] {
        let r = check(&bad, &empty);
        assert!(matches!(r, Err(SigError::Malformed(_))), "{r:?}");
    }
    // The CMS cut in the middle, the trailer intact (its length shortened).
    let len = u32::from_be_bytes(ko[body - 4..body].try_into().unwrap()) as usize;
    let cms = &ko[body - 12 - len..body - 12];
    let content = &ko[..body - 12 - len];
    let short = append(content, &cms[..len / 2]);
    let e = check(&short, &empty).unwrap_err();
    assert!(matches!(e, SigError::Malformed(_)), "{e:?}");
    assert!(e.to_string().contains("malformed"), "{e}");
    // A length larger than the file.
    let mut long = ko.clone();
    long[body - 4..body].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        check(&long, &f.store),
        Err(SigError::Malformed(_))
    ));
    // Non-zero fields the kernel rejects.
    let mut odd = ko.clone();
    odd[body - 12] = 1;
    assert!(matches!(check(&odd, &empty), Err(SigError::Malformed(_))));
}

#[test]
fn signed_attributes_are_checked_through_the_message_digest() {
    let Some(f) = fixture() else { return };
    let content = f.dir.join("content.bin");
    std::fs::write(&content, &f.unsigned).unwrap();
    let sig = f.dir.join("sig.der");
    run(Command::new("openssl")
        .args([
            "cms", "-sign", "-binary", "-nocerts", "-outform", "DER", "-md", "sha384",
        ])
        .arg("-in")
        .arg(&content)
        .arg("-signer")
        .arg(&f.cert)
        .arg("-inkey")
        .arg(&f.key)
        .arg("-out")
        .arg(&sig));
    let cms = std::fs::read(&sig).unwrap();
    let ko = append(&f.unsigned, &cms);
    let rep = check(&ko, &f.store).unwrap().unwrap();
    assert!(rep.verified_by.is_some());
    let mut changed = ko.clone();
    changed[2000] ^= 1;
    let e = check(&changed, &f.store).unwrap_err();
    assert!(matches!(e, SigError::Modified { .. }), "{e:?}");
    let mut badsig = ko.clone();
    let at = f.unsigned.len() + cms.len() - 7;
    badsig[at] ^= 0x40;
    let e = check(&badsig, &f.store).unwrap_err();
    assert!(matches!(e, SigError::BadSignature { .. }), "{e:?}");
}

#[test]
fn a_store_file_that_is_no_certificate_is_an_error() {
    let Some(f) = fixture() else { return };
    let e = TrustStore::from_files(&[(
        "junk.pem".into(),
        b"-----BEGIN CERTIFICATE-----\nnope\n".to_vec(),
    )])
    .unwrap_err();
    assert!(e.contains("junk.pem"), "{e}");
    assert!(TrustStore::from_files(&[("k.der".into(), std::fs::read(&f.key).unwrap())]).is_err());
    // Loading a directory: certificates by extension, other files ignored.
    let store_dir = f.dir.join("certs");
    std::fs::create_dir(&store_dir).unwrap();
    let text = [
        &b"Certificate:\n    Data: (openssl x509 -text)\n"[..],
        &std::fs::read(&f.cert).unwrap(),
    ]
    .concat();
    std::fs::write(store_dir.join("a.crt"), text).unwrap();
    std::fs::write(store_dir.join("README"), "not a certificate").unwrap();
    let s = TrustStore::load(&store_dir).unwrap();
    assert_eq!(s.certs.len(), 1);
    assert!(TrustStore::load(&f.dir.join("absent")).unwrap().is_empty());
}
