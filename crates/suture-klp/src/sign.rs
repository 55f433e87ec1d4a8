//! Module signatures in the kernel's format: the module bytes, a PKCS#7
//! (CMS) detached signature, a `struct module_signature` trailer and the magic
//! string `~Module signature appended~\n`. Signing uses the release's own
//! `scripts/sign-file` (shipped in `linux-kbuild-SERIES`), so the result is what
//! the kernel's build would produce; reading the trailer back is pure.

use anyhow::{bail, ensure, Context, Result};
use std::path::Path;
use std::process::Command;

pub const MAGIC: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`: algo, hash, id_type, signer_len, key_id_len,
/// 3 bytes of padding, then the big-endian signature length.
const TRAILER: usize = 12;
const PKEY_ID_PKCS7: u8 = 2;

/// The parts of a signed module.
#[derive(Debug, PartialEq, Eq)]
pub struct Signed<'a> {
    pub module: &'a [u8],
    /// DER-encoded PKCS#7 signature over `module`.
    pub signature: &'a [u8],
}

/// Splits a signed module; `None` if it carries no signature.
pub fn split(ko: &[u8]) -> Result<Option<Signed<'_>>> {
    let Some(body) = ko.strip_suffix(MAGIC) else {
        return Ok(None);
    };
    ensure!(body.len() >= TRAILER, "signature trailer truncated");
    let t = &body[body.len() - TRAILER..];
    ensure!(
        t[2] == PKEY_ID_PKCS7,
        "signature is not PKCS#7 (id_type {})",
        t[2]
    );
    let len = u32::from_be_bytes(t[8..12].try_into().unwrap()) as usize;
    let rest = &body[..body.len() - TRAILER];
    ensure!(
        len <= rest.len(),
        "signature length {len} exceeds the module"
    );
    Ok(Some(Signed {
        module: &rest[..rest.len() - len],
        signature: &rest[rest.len() - len..],
    }))
}

/// Signs `ko` with `sign_file` (the release's `scripts/sign-file`), SHA-256.
pub fn sign(
    ko: &[u8],
    sign_file: &Path,
    key: &Path,
    cert: &Path,
    workdir: &Path,
) -> Result<Vec<u8>> {
    ensure!(split(ko)?.is_none(), "the module is already signed");
    for (what, p) in [("key", key), ("certificate", cert)] {
        ensure!(p.exists(), "signing {what} {} does not exist", p.display());
    }
    let tmp = workdir.join("to-sign.ko");
    std::fs::write(&tmp, ko)?;
    let out = Command::new(sign_file)
        .arg("sha256")
        .arg(key)
        .arg(cert)
        .arg(&tmp)
        .output()
        .with_context(|| {
            format!(
                "running {} (install linux-kbuild for this release)",
                sign_file.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "signing failed: {}\n(the key must be a PEM private key, the certificate a PEM or DER X.509 certificate)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let signed = std::fs::read(&tmp)?;
    ensure!(split(&signed)?.is_some(), "sign-file left no signature");
    Ok(signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_signature_trailer() {
        let mut ko = b"\x7fELF-module-bytes".to_vec();
        let sig = b"DER-SIGNATURE";
        ko.extend_from_slice(sig);
        ko.extend_from_slice(&[0, 0, PKEY_ID_PKCS7, 0, 0, 0, 0, 0]);
        ko.extend_from_slice(&(sig.len() as u32).to_be_bytes());
        ko.extend_from_slice(MAGIC);
        let s = split(&ko).unwrap().unwrap();
        assert_eq!(s.module, b"\x7fELF-module-bytes");
        assert_eq!(s.signature, sig);
        assert!(split(b"\x7fELF unsigned").unwrap().is_none());
        let mut bad = b"x".to_vec();
        bad.extend_from_slice(&[0, 0, PKEY_ID_PKCS7, 0, 0, 0, 0, 0]);
        bad.extend_from_slice(&100u32.to_be_bytes());
        bad.extend_from_slice(MAGIC);
        assert!(split(&bad).is_err());
    }
}
