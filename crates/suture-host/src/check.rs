//! The checks made before anything reaches the kernel: signature, ELF
//! module, livepatch tag, release and build-id.

use crate::sysfs::{self};
use crate::*;
use std::path::{Path, PathBuf};

/// What [`Host::check_module`] found.
#[derive(Debug, Clone)]
pub struct Checked {
    pub info: ModuleInfo,
    /// The running kernel's release (equal to the module's).
    pub release: String,
    pub running_build_id: Option<String>,
    /// The module records a build-id and it equals the running kernel's.
    pub build_id_checked: bool,
    /// Who signed it, and the certificate it verified against.
    pub signature: Option<modsig::SignatureReport>,
}

/// A signature refusal with what to do about it.
pub(crate) fn signature_refusal(path: &Path, e: &modsig::SigError, store: &Path) -> HostError {
    use modsig::SigError as S;
    let kind = match e {
        S::Unsigned => ErrorKind::Unsigned,
        S::UnknownSigner { .. } => ErrorKind::UnknownSigner,
        S::Modified { .. } => ErrorKind::Modified,
        S::Malformed(_) | S::Unsupported(_) | S::BadSignature { .. } => ErrorKind::BadSignature,
    };
    let store = store.display();
    let hint = match e {
        S::Unsigned => format!(
            "sign it with `suture build --sign-key KEY.pem --sign-cert CERT.pem ...` using a key whose certificate \
             is in {store}"
        ),
        S::UnknownSigner { .. } => format!(
            "if you trust that signer, put its certificate (PEM or DER) in {store}; otherwise re-sign the module \
             with a key whose certificate is there"
        ),
        S::Modified { .. } => "do not load it: get the module again from its build, or rebuild and re-sign it".into(),
        S::Malformed(_) | S::BadSignature { .. } => {
            "get the module again from its build, or re-sign an intact copy with `suture build --sign-key ... \
             --sign-cert ...`"
                .into()
        }
        S::Unsupported(_) => "sign with an RSA key and sha256, sha384 or sha512".into(),
    };
    HostError::new(kind, format!("refusing to load {}: {e}", path.display())).hint(hint)
}

impl Host {
    /// The checks made before anything reaches the kernel: a signature the
    /// trust store accepts (when it holds certificates), an ELF module,
    /// tagged livepatch, built for the running release and, when the module
    /// records it, for the running build of that release.
    pub fn check_module(&self, path: &Path) -> Result<Checked, HostError> {
        let data = std::fs::read(path)
            .map_err(|e| HostError::io(format!("cannot read {}", path.display()), &e))?;
        self.check_data(path, &data)
    }

    /// Where the trust store is: `/etc/suture/certs` under the host root.
    pub fn trust_store_dir(&self) -> PathBuf {
        self.root.0.join(modsig::STORE_DIR)
    }

    /// The signature check alone: the signer, `None` for an unsigned module
    /// under an empty store.
    pub fn check_signature(
        &self,
        path: &Path,
        data: &[u8],
    ) -> Result<Option<modsig::SignatureReport>, HostError> {
        let dir = self.trust_store_dir();
        let store = modsig::TrustStore::load(&dir).map_err(|e| {
            HostError::new(ErrorKind::TrustStore, format!("cannot use the trust store {}: {e}", dir.display())).hint(
                "fix or remove that file: while the store cannot be read, suture refuses every module rather than \
                 load one unchecked",
            )
        })?;
        modsig::check(data, &store).map_err(|e| signature_refusal(path, &e, &dir))
    }

    /// [`Host::check_module`] on bytes already read.
    pub fn check_data(&self, path: &Path, data: &[u8]) -> Result<Checked, HostError> {
        // Authenticity first: the rest of the checks read what a tampered
        // file says about itself.
        let signature = self.check_signature(path, data)?;
        let info = modinfo::parse_module(data).map_err(|e| modinfo_refusal(path, &e))?;
        if !info.livepatch {
            return Err(HostError::new(
                ErrorKind::NotLivepatch,
                format!(
                    "refusing to load {}: module {:?} is not a livepatch module (its .modinfo has no livepatch=Y)",
                    path.display(),
                    info.name
                ),
            )
            .hint("suture only loads livepatch modules; use insmod or modprobe for ordinary modules"));
        }
        let release = self
            .kernel
            .release()
            .map_err(|e| HostError::io("uname".into(), &e))?;
        match info.release() {
            Some(r) if r == release => {}
            other => {
                return Err(HostError::new(
                    ErrorKind::ReleaseMismatch,
                    format!(
                        "refusing to load {}: built for kernel {}, but this kernel is {release}",
                        path.display(),
                        other.map_or("(no vermagic)".to_string(), |r| r.to_string())
                    ),
                )
                .hint(format!(
                    "build the patch against the {release} headers/source"
                )));
            }
        }
        let running = sysfs::running_build_id(&self.root);
        let mut build_id_checked = false;
        if let Some(want) = &info.suture.release_build_id {
            match &running {
                Some(have) if have == want => build_id_checked = true,
                Some(have) => {
                    return Err(HostError::new(
                        ErrorKind::BuildIdMismatch,
                        format!(
                            "refusing to load {}: built for a {release} kernel with build-id {want}, but the running \
                             {release} kernel has build-id {have} (another build of the same release)",
                            path.display()
                        ),
                    )
                    .hint(format!(
                        "rebuild the patch from the image this host runs (/boot/vmlinuz-{release} of the installed \
                         linux-image-{release} package), or boot the kernel it was built for"
                    )));
                }
                None => {
                    return Err(HostError::new(
                        ErrorKind::BuildIdMismatch,
                        format!(
                            "cannot check {}: it was built for build-id {want}, but {} has no GNU build-id note",
                            path.display(),
                            self.root.0.join("sys/kernel/notes").display()
                        ),
                    )
                    .hint("mount sysfs on /sys; without the running kernel's build-id the module cannot be matched to it"));
                }
            }
        }
        Ok(Checked {
            info,
            release,
            running_build_id: running,
            build_id_checked,
            signature,
        })
    }
}
