//! The thin I/O edge: where a release's files live on a Debian-style system,
//! and loading them with errors that say what to install or pass instead.

use std::path::{Path, PathBuf};

use crate::{
    decompress_module, extract_vmlinux, kallsyms_from_vmlinux, parse_proc_kallsyms, Error, Exports,
    Kallsyms, Result,
};

/// The files of one kernel release (`6.1.0-56-amd64`).
#[derive(Debug, Clone)]
pub struct ReleasePaths {
    pub release: String,
    /// `/boot/vmlinuz-RELEASE`
    pub image: PathBuf,
    /// `/usr/src/linux-headers-RELEASE/Module.symvers`
    pub symvers: PathBuf,
    /// `/lib/modules/RELEASE`
    pub modules: PathBuf,
    /// The module files by name, walked once when first needed.
    index: std::sync::OnceLock<std::collections::HashMap<String, PathBuf>>,
}

impl ReleasePaths {
    /// The standard locations under `root` (`/` on the host).
    pub fn new(root: &Path, release: &str) -> Self {
        ReleasePaths {
            release: release.to_string(),
            image: root.join(format!("boot/vmlinuz-{release}")),
            symvers: root.join(format!("usr/src/linux-headers-{release}/Module.symvers")),
            modules: root.join(format!("lib/modules/{release}")),
            index: Default::default(),
        }
    }

    /// The files of `release` where a caller found them (the headers'
    /// `Module.symvers`, the image, the modules' directory).
    pub fn at(release: &str, image: PathBuf, symvers: PathBuf, modules: PathBuf) -> Self {
        ReleasePaths {
            release: release.to_string(),
            image,
            symvers,
            modules,
            index: Default::default(),
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
        let p = self.module_path(name)?;
        let data = std::fs::read(&p).map_err(|e| Error::Image(format!("{}: {e}", p.display())))?;
        Ok(decompress_module(&data)?.into_owned())
    }

    /// Where module `name`'s file is, from one walk of the release's module
    /// directories (`kernel/`, `updates/`, `extra/`; the first found wins),
    /// `-` and `_` being the same to the kernel.
    pub fn module_path(&self, name: &str) -> Result<PathBuf> {
        let want = crate::module_name(name);
        let index = self.index.get_or_init(|| {
            let mut m = std::collections::HashMap::new();
            for sub in ["kernel", "updates", "extra"] {
                walk(&self.modules.join(sub), &mut m);
            }
            m
        });
        index.get(&want).cloned().ok_or_else(|| {
            Error::Image(format!(
                "module {name} not found under {}; install linux-image-{} (its modules), or check the module's name",
                self.modules.display(),
                self.release
            ))
        })
    }
}

/// Every module file under `dir` by its kernel name; symlinks are not
/// followed.
fn walk(dir: &Path, out: &mut std::collections::HashMap<String, PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            walk(&p, out);
        } else if t.is_file() {
            let file = e.file_name().to_string_lossy().into_owned();
            // Debian's 6.12 series ships its modules as `.ko.xz`.
            if let Some(stem) = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
                .iter()
                .find_map(|s| file.strip_suffix(s))
            {
                out.entry(crate::module_name(stem)).or_insert(p);
            }
        }
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
