//! The thin I/O edge: where a release's files live on a Debian-style system,
//! and loading them with errors that say what to install or pass instead.

use std::path::{Path, PathBuf};

use crate::{
    decompress_module, extract_vmlinux, kallsyms_from_vmlinux, parse_proc_kallsyms, Error, Exports,
    Kallsyms, Result,
};

/// The files of one kernel release (`6.1.0-56-amd64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasePaths {
    pub release: String,
    /// `/boot/vmlinuz-RELEASE`
    pub image: PathBuf,
    /// `/usr/src/linux-headers-RELEASE/Module.symvers`
    pub symvers: PathBuf,
    /// `/lib/modules/RELEASE`
    pub modules: PathBuf,
}

impl ReleasePaths {
    /// The standard locations under `root` (`/` on the host).
    pub fn new(root: &Path, release: &str) -> Self {
        ReleasePaths {
            release: release.to_string(),
            image: root.join(format!("boot/vmlinuz-{release}")),
            symvers: root.join(format!("usr/src/linux-headers-{release}/Module.symvers")),
            modules: root.join(format!("lib/modules/{release}")),
        }
    }

    /// The extracted vmlinux and its kallsyms.
    pub fn load_vmlinux(&self) -> Result<(Vec<u8>, Kallsyms)> {
        let bz = std::fs::read(&self.image).map_err(|e| {
            Error::Image(format!(
                "{}: {e}; install linux-image-{} (or pass --kallsyms FILE with a copy of /proc/kallsyms \
                 from a host running it)",
                self.image.display(),
                self.release
            ))
        })?;
        let vmlinux = extract_vmlinux(&bz)?;
        let k = kallsyms_from_vmlinux(&vmlinux)?;
        Ok((vmlinux, k))
    }

    pub fn load_exports(&self) -> Result<Exports> {
        let text = std::fs::read_to_string(&self.symvers).map_err(|e| {
            Error::Symvers(format!(
                "{}: {e}; install linux-headers-{}",
                self.symvers.display(),
                self.release
            ))
        })?;
        Exports::parse(&text)
    }

    /// The installed file of module `name` (`-` and `_` are the same to the
    /// kernel), decompressed.
    pub fn load_module(&self, name: &str) -> Result<Vec<u8>> {
        let want = crate::module_name(name);
        let mut stack = vec![
            self.modules.join("kernel"),
            self.modules.join("updates"),
            self.modules.join("extra"),
        ];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for ent in rd.flatten() {
                let p = ent.path();
                if ent.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p);
                    continue;
                }
                let file = ent.file_name().to_string_lossy().into_owned();
                let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
                    .iter()
                    .find_map(|s| file.strip_suffix(s));
                if stem.is_some_and(|s| crate::module_name(s) == want) {
                    let data = std::fs::read(&p)
                        .map_err(|e| Error::Image(format!("{}: {e}", p.display())))?;
                    return Ok(decompress_module(&data)?.into_owned());
                }
            }
        }
        Err(Error::Image(format!(
            "module {name} not found under {}; install linux-image-{} (its modules), or check the module's name",
            self.modules.display(),
            self.release
        )))
    }
}

/// A copy of `/proc/kallsyms` (`--kallsyms FILE`).
pub fn load_proc_kallsyms(path: &Path) -> Result<Kallsyms> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Kallsyms(format!(
            "{}: {e}; copy /proc/kallsyms as root on the target host",
            path.display()
        ))
    })?;
    let k = parse_proc_kallsyms(&text)?;
    if !k.addresses_known() {
        return Err(Error::Kallsyms(format!(
            "{}: every address is 0 (kptr_restrict): copy /proc/kallsyms as root",
            path.display()
        )));
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_say_what_to_install() {
        let p = ReleasePaths::new(Path::new("/nonexistent"), "9.9.9-1-amd64");
        let e = p.load_vmlinux().unwrap_err().to_string();
        assert!(
            e.contains("linux-image-9.9.9-1-amd64") && e.contains("--kallsyms"),
            "{e}"
        );
        let e = p.load_exports().unwrap_err().to_string();
        assert!(e.contains("linux-headers-9.9.9-1-amd64"), "{e}");
        let e = p.load_module("snd-pcm").unwrap_err().to_string();
        assert!(
            e.contains("snd-pcm") && e.contains("linux-image-9.9.9-1-amd64"),
            "{e}"
        );
    }

    #[test]
    fn finds_modules_by_kernel_name() {
        let root = std::env::temp_dir().join(format!("suture-symbols-io-{}", std::process::id()));
        let dir = root.join("lib/modules/1.0/kernel/sound/core");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("snd-pcm.ko"), b"\x7fELF rest").unwrap();
        let p = ReleasePaths::new(&root, "1.0");
        assert_eq!(p.load_module("snd_pcm").unwrap(), b"\x7fELF rest");
        assert!(p.load_module("snd_timer").is_err());
        let hidden = root.join("kallsyms");
        std::fs::write(&hidden, "0000000000000000 T _text\n").unwrap();
        assert!(load_proc_kallsyms(&hidden)
            .unwrap_err()
            .to_string()
            .contains("as root"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
