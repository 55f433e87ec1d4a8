//! Module signatures checked by suture itself, against a trust store of its
//! own. The kernel checks them only under `module.sig_enforce`, and against
//! its built-in keyring; `scripts/sign-file` embeds no certificate
//! (CMS_NOCERTS), so the signer's certificate must come from the store.
//!
//! Layout of a signed module (the kernel's `mod_check_sig`,
//! `module_signature.h`): the module's bytes, a DER PKCS#7/CMS SignedData
//! with detached content, a 12-byte `struct module_signature` (algo, hash,
//! id_type, signer_len, key_id_len, 3 pad bytes, big-endian sig_len) and
//! the magic `~Module signature appended~\n`.
//!
//! Everything here is pure: bytes in, a verdict out. [`TrustStore::load`] is
//! the only function touching the file system.

use cms::cert::IssuerAndSerialNumber;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPublicKey};
use serde::Serialize;
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::collections::HashMap;
use std::path::Path;
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::Certificate;

pub const MAGIC: &[u8] = b"~Module signature appended~\n";
const TRAILER: usize = 12;
/// `PKEY_ID_PKCS7` in `struct module_signature`'s `id_type`.
const PKEY_ID_PKCS7: u8 = 2;

const OID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const OID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const OID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const OID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_SKID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");

/// Why a module's signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// The trailer or the CMS structure cannot be read.
    #[error("its signature block is malformed: {0}")]
    Malformed(String),
    /// The trust store holds certificates but the module carries no signature.
    #[error("it is not signed")]
    Unsigned,
    /// No certificate in the store matches the signer.
    #[error("it is signed by {signer}, which no certificate in the trust store matches")]
    UnknownSigner { signer: String },
    /// The signature is made with something suture cannot check.
    #[error("its signature uses {0}, which suture cannot verify (RSA PKCS#1 v1.5 with SHA-256/384/512 only)")]
    Unsupported(String),
    /// The content's digest is not the one that was signed.
    #[error("the module was modified after it was signed (its digest is not the signed one; signer {signer})")]
    Modified { signer: String },
    /// The signature value itself does not verify with the signer's key.
    #[error("its signature does not verify with the key of {signer} (the signature bytes are damaged, or were made with another key)")]
    BadSignature { signer: String },
}

/// The parts of a signed module.
#[derive(Debug, PartialEq, Eq)]
pub struct Appended<'a> {
    /// The bytes the signature covers.
    pub content: &'a [u8],
    /// DER CMS SignedData.
    pub cms: &'a [u8],
}

/// Splits off an appended signature with the kernel's own checks
/// (`mod_check_sig`): `None` when there is no magic.
pub fn split(ko: &[u8]) -> Result<Option<Appended<'_>>, SigError> {
    let Some(body) = ko.strip_suffix(MAGIC) else {
        return Ok(None);
    };
    let bad = |m: String| Err(SigError::Malformed(m));
    if body.len() < TRAILER {
        return bad(format!(
            "the {TRAILER}-byte trailer before the magic is truncated ({} bytes)",
            body.len()
        ));
    }
    let (rest, t) = body.split_at(body.len() - TRAILER);
    if t[2] != PKEY_ID_PKCS7 {
        return bad(format!("id_type is {}, not PKCS#7 ({PKEY_ID_PKCS7})", t[2]));
    }
    // The kernel rejects PKCS#7 trailers whose other fields are set.
    if t[0] != 0 || t[1] != 0 || t[3] != 0 || t[4] != 0 || t[5..8] != [0, 0, 0] {
        return bad("the trailer's algo/hash/signer_len/key_id_len/pad fields are not zero".into());
    }
    let len = u32::from_be_bytes([t[8], t[9], t[10], t[11]]) as usize;
    if len == 0 || len > rest.len() {
        return bad(format!(
            "the signature length {len} does not fit the {} bytes before the trailer",
            rest.len()
        ));
    }
    let (content, cms) = rest.split_at(rest.len() - len);
    Ok(Some(Appended { content, cms }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn from_oid(oid: &ObjectIdentifier) -> Option<Hash> {
        Some(match oid.to_string().as_str() {
            "2.16.840.1.101.3.4.2.1" => Hash::Sha256,
            "2.16.840.1.101.3.4.2.2" => Hash::Sha384,
            "2.16.840.1.101.3.4.2.3" => Hash::Sha512,
            _ => return None,
        })
    }
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha384 => Sha384::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
    fn scheme(self) -> Pkcs1v15Sign {
        match self {
            Hash::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
            Hash::Sha384 => Pkcs1v15Sign::new::<Sha384>(),
            Hash::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
        }
    }
    /// The `sha*WithRSAEncryption` OID naming this hash.
    fn rsa_with(self) -> &'static str {
        match self {
            Hash::Sha256 => "1.2.840.113549.1.1.11",
            Hash::Sha384 => "1.2.840.113549.1.1.12",
            Hash::Sha512 => "1.2.840.113549.1.1.13",
        }
    }
}

/// Who signed, as the SignerInfo names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SignerId {
    /// DER of the issuer Name, and the serial number's bytes.
    IssuerSerial {
        issuer: Vec<u8>,
        serial: Vec<u8>,
        shown: String,
    },
    KeyId(Vec<u8>),
}

impl std::fmt::Display for SignerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignerId::IssuerSerial { shown, .. } => f.write_str(shown),
            SignerId::KeyId(k) => write!(f, "key id {}", hex(k)),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn issuer_serial(ias: &IssuerAndSerialNumber) -> Result<SignerId, der::Error> {
    let serial = ias.serial_number.as_bytes().to_vec();
    Ok(SignerId::IssuerSerial {
        issuer: ias.issuer.to_der()?,
        shown: format!("issuer \"{}\" serial {}", ias.issuer, hex(&serial)),
        serial,
    })
}

/// A parsed appended signature: the one SignerInfo of a module signature.
#[derive(Debug, Clone)]
pub struct ModuleSignature {
    pub signer: SignerId,
    pub hash: Hash,
    /// The DER SET of signed attributes, when there are any (`openssl cms
    /// -sign` adds them; `sign-file` does not), with the message digest
    /// they carry.
    signed_attrs: Option<(Vec<u8>, Vec<u8>)>,
    signature: Vec<u8>,
}

fn malformed(what: &str) -> impl Fn(der::Error) -> SigError + '_ {
    move |e| SigError::Malformed(format!("{what}: {e}"))
}

/// Reads the CMS SignedData of a module signature. The kernel requires
/// exactly what `sign-file` produces: detached `data` content, one signer.
pub fn parse_cms(der_bytes: &[u8]) -> Result<ModuleSignature, SigError> {
    let ci = ContentInfo::from_der(der_bytes).map_err(malformed("not a DER CMS ContentInfo"))?;
    if ci.content_type != OID_SIGNED_DATA {
        return Err(SigError::Malformed(format!(
            "content type {} is not SignedData",
            ci.content_type
        )));
    }
    let sd: SignedData = ci
        .content
        .decode_as()
        .map_err(malformed("not a CMS SignedData"))?;
    if sd.encap_content_info.econtent.is_some() {
        return Err(SigError::Malformed(
            "the signature embeds its content instead of signing the module (not detached)".into(),
        ));
    }
    let signers: Vec<&SignerInfo> = sd.signer_infos.0.iter().collect();
    let [si] = signers[..] else {
        return Err(SigError::Malformed(format!(
            "{} signers, the kernel wants exactly one",
            signers.len()
        )));
    };
    let signer = match &si.sid {
        SignerIdentifier::IssuerAndSerialNumber(ias) => {
            issuer_serial(ias).map_err(malformed("re-encoding the issuer"))?
        }
        SignerIdentifier::SubjectKeyIdentifier(k) => SignerId::KeyId(k.0.as_bytes().to_vec()),
    };
    let hash = Hash::from_oid(&si.digest_alg.oid)
        .ok_or_else(|| SigError::Unsupported(format!("digest algorithm {}", si.digest_alg.oid)))?;
    let sig_alg = si.signature_algorithm.oid.to_string();
    if si.signature_algorithm.oid != OID_RSA && sig_alg != hash.rsa_with() {
        return Err(SigError::Unsupported(format!(
            "signature algorithm {sig_alg} with digest {:?}",
            hash
        )));
    }
    let signed_attrs = match &si.signed_attrs {
        None => None,
        Some(attrs) => {
            let mut digest = None;
            for a in attrs.iter() {
                let one = || match a.values.as_slice() {
                    [v] => Ok(v),
                    _ => Err(SigError::Malformed(format!(
                        "signed attribute {} has {} values, not one",
                        a.oid,
                        a.values.len()
                    ))),
                };
                if a.oid == OID_MESSAGE_DIGEST {
                    let v: OctetString = one()?
                        .decode_as()
                        .map_err(malformed("the message-digest attribute"))?;
                    digest = Some(v.as_bytes().to_vec());
                } else if a.oid == OID_CONTENT_TYPE {
                    let v: ObjectIdentifier = one()?
                        .decode_as()
                        .map_err(malformed("the content-type attribute"))?;
                    if v != OID_DATA {
                        return Err(SigError::Malformed(format!(
                            "the signed content type is {v}, not data"
                        )));
                    }
                }
            }
            let digest = digest.ok_or_else(|| {
                SigError::Malformed("signed attributes without a message-digest attribute".into())
            })?;
            // RFC 5652 5.4: the signature covers the attributes' DER with
            // the SET OF tag, not the [0] IMPLICIT tag they travel under.
            let set = attrs
                .to_der()
                .map_err(malformed("re-encoding the signed attributes"))?;
            Some((set, digest))
        }
    };
    Ok(ModuleSignature {
        signer,
        hash,
        signed_attrs,
        signature: si.signature.as_bytes().to_vec(),
    })
}

/// One certificate of the store.
#[derive(Debug, Clone)]
pub struct TrustedCert {
    /// The file it came from.
    pub file: String,
    pub subject: String,
    key: Result<RsaPublicKey, String>,
}

/// The certificates suture accepts module signers from, indexed by how a
/// SignerInfo names its signer.
#[derive(Debug, Default)]
pub struct TrustStore {
    pub certs: Vec<TrustedCert>,
    by_signer: HashMap<SignerId, usize>,
}

/// Where, under the host root, the store is kept.
pub const STORE_DIR: &str = "etc/suture/certs";

impl TrustStore {
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Builds a store from files' contents: PEM (one or more certificates)
    /// or DER. A file that is not a certificate is an error: a store the
    /// operator believes holds a key must not silently hold none.
    pub fn from_files(files: &[(String, Vec<u8>)]) -> Result<TrustStore, String> {
        let mut store = TrustStore::default();
        for (name, data) in files {
            // `openssl x509 -text` puts a text dump before the PEM block.
            let pem_at = data.windows(10).position(|w| w == b"-----BEGIN");
            let certs = if let Some(at) = pem_at {
                Certificate::load_pem_chain(&data[at..])
                    .map_err(|e| format!("{name}: not a PEM certificate: {e}"))?
            } else {
                vec![Certificate::from_der(data)
                    .map_err(|e| format!("{name}: not a DER certificate: {e}"))?]
            };
            if certs.is_empty() {
                return Err(format!("{name}: holds no certificate"));
            }
            for c in certs {
                store.add(name, &c).map_err(|e| format!("{name}: {e}"))?;
            }
        }
        Ok(store)
    }

    fn add(&mut self, file: &str, c: &Certificate) -> Result<(), der::Error> {
        let tbs = &c.tbs_certificate;
        let spki = &tbs.subject_public_key_info;
        let key = if spki.algorithm.oid == OID_RSA {
            RsaPublicKey::from_public_key_der(&spki.to_der()?).map_err(|e| format!("RSA key: {e}"))
        } else {
            Err(format!("a {} key (not RSA)", spki.algorithm.oid))
        };
        let idx = self.certs.len();
        self.certs.push(TrustedCert {
            file: file.to_string(),
            subject: tbs.subject.to_string(),
            key,
        });
        let ias = IssuerAndSerialNumber {
            issuer: tbs.issuer.clone(),
            serial_number: tbs.serial_number.clone(),
        };
        self.by_signer.insert(issuer_serial(&ias)?, idx);
        for ext in tbs.extensions.iter().flatten() {
            if ext.extn_id == OID_SKID {
                let k = SubjectKeyIdentifier::from_der(ext.extn_value.as_bytes())?;
                self.by_signer
                    .insert(SignerId::KeyId(k.0.as_bytes().to_vec()), idx);
            }
        }
        Ok(())
    }

    /// Reads `*.pem`, `*.crt` and `*.der` in `dir`; an absent directory is
    /// an empty store.
    pub fn load(dir: &Path) -> Result<TrustStore, String> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TrustStore::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
        };
        let mut files = Vec::new();
        for e in entries {
            let p = e
                .map_err(|e| format!("reading {}: {e}", dir.display()))?
                .path();
            let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
            if !matches!(ext, "pem" | "crt" | "der") || !p.is_file() {
                continue;
            }
            let data =
                std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            files.push((p.display().to_string(), data));
        }
        // Sorted, so that which file a shared key is reported from is stable.
        files.sort();
        TrustStore::from_files(&files)
    }
}

/// What suture knows of a module's signature after checking it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureReport {
    /// The signer as the signature names it (issuer and serial, or key id).
    pub signer: String,
    pub hash: Hash,
    /// The trusted certificate it verified against: `None` when the trust
    /// store is empty (signature parsed, not verified).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<String>,
}

/// The verdict on a module's bytes. With an empty store an unsigned module
/// passes and a signed one is only parsed; with certificates, nothing but a
/// signature verifying against one of them passes. A malformed signature
/// block is refused either way.
pub fn check(ko: &[u8], store: &TrustStore) -> Result<Option<SignatureReport>, SigError> {
    let Some(app) = split(ko)? else {
        return if store.is_empty() {
            Ok(None)
        } else {
            Err(SigError::Unsigned)
        };
    };
    let sig = parse_cms(app.cms)?;
    let signer = sig.signer.to_string();
    if store.is_empty() {
        return Ok(Some(SignatureReport {
            signer,
            hash: sig.hash,
            verified_by: None,
        }));
    }
    let cert = store
        .by_signer
        .get(&sig.signer)
        .map(|&i| &store.certs[i])
        .ok_or_else(|| SigError::UnknownSigner {
            signer: signer.clone(),
        })?;
    let key = cert
        .key
        .as_ref()
        .map_err(|e| SigError::Unsupported(format!("the certificate in {} with {e}", cert.file)))?;
    let content_digest = sig.hash.digest(app.content);
    let signed_digest = match &sig.signed_attrs {
        None => content_digest.clone(),
        Some((set, digest)) => {
            if *digest != content_digest {
                return Err(SigError::Modified { signer });
            }
            sig.hash.digest(set)
        }
    };
    if key
        .verify(sig.hash.scheme(), &signed_digest, &sig.signature)
        .is_err()
    {
        // The verdict is made; this only picks the words. Without signed
        // attributes a well-formed PKCS#1 block with another digest in it
        // means the key did sign, but other content.
        let modified = sig.signed_attrs.is_none()
            && recovered_digest(key, sig.hash, &sig.signature).is_some_and(|d| d != content_digest);
        return Err(if modified {
            SigError::Modified { signer }
        } else {
            SigError::BadSignature { signer }
        });
    }
    Ok(Some(SignatureReport {
        signer,
        hash: sig.hash,
        verified_by: Some(format!("\"{}\" ({})", cert.subject, cert.file)),
    }))
}

/// The digest inside an RSA PKCS#1 v1.5 signature block (`00 01 FF.. 00
/// DigestInfo`), when the block is well-formed for `hash`: used only to
/// tell a changed module from a damaged signature.
fn recovered_digest(key: &RsaPublicKey, hash: Hash, sig: &[u8]) -> Option<Vec<u8>> {
    let k = key.size();
    let s = BigUint::from_bytes_be(sig);
    if sig.len() != k || &s >= key.n() {
        return None;
    }
    let m = s.modpow(key.e(), key.n()).to_bytes_be();
    let mut em = vec![0u8; k.checked_sub(m.len())?];
    em.extend_from_slice(&m);
    let prefix = hash.scheme().prefix;
    let hlen = hash.digest(b"").len();
    let tail = prefix.len() + hlen;
    let pad_end = k.checked_sub(tail + 1)?;
    let ok = em.get(..2) == Some(&[0, 1])
        && pad_end >= 10
        && em[2..pad_end].iter().all(|&b| b == 0xff)
        && em[pad_end] == 0
        && em[pad_end + 1..k - hlen] == prefix[..];
    ok.then(|| em[k - hlen..].to_vec())
}
