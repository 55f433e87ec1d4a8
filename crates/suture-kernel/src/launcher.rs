//! A compiler launcher (ccache, distcc) in front of the release's compiler.
//!
//! kbuild runs `$(CC)` by name (`gcc-12`). A directory put first in make's
//! `PATH` holds a `gcc-12` that runs `LAUNCHER /usr/bin/gcc-12 ARGS`: kbuild's
//! command lines stay exactly the same, so it rebuilds nothing because of the
//! launcher, and the objects are the compiler's own (the reproduction check
//! proves it for every replaced function).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// `SUTURE_CC_LAUNCHER`: a program (absolute path, or a name found in
/// `PATH`), or `none`. Unset: `ccache` when it is installed.
pub const ENV: &str = "SUTURE_CC_LAUNCHER";

/// The launcher to use, from `setting` (the environment variable's value)
/// and what `find` finds on `PATH`. `None`: compile directly.
pub fn choose(
    setting: Option<&str>,
    find: impl Fn(&str) -> Option<PathBuf>,
) -> Result<Option<PathBuf>> {
    match setting.map(str::trim) {
        Some("none") | Some("") => Ok(None),
        None => Ok(find("ccache")),
        Some(p) => {
            let path = if p.starts_with('/') {
                PathBuf::from(p)
            } else if p.contains('/') {
                bail!("{ENV}={p:?}: give an absolute path or a program name on PATH")
            } else {
                find(p).with_context(|| format!("{ENV}={p:?}: no such program on PATH"))?
            };
            check_script_word(&path)?;
            Ok(Some(path))
        }
    }
}

/// A path that goes into the wrapper script between single quotes: plain
/// characters only, so it cannot end the quoting or be read as anything else.
fn check_script_word(p: &Path) -> Result<()> {
    let s = p.to_str().unwrap_or("");
    if s.is_empty()
        || !s.starts_with('/')
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(&b))
    {
        bail!(
            "{ENV}: {} is not a plain absolute path ([A-Za-z0-9/._+-])",
            p.display()
        );
    }
    Ok(())
}

/// The wrapper's text: `exec 'LAUNCHER' 'COMPILER' "$@"`.
pub fn wrapper(launcher: &Path, compiler: &Path) -> Result<String> {
    check_script_word(launcher)?;
    check_script_word(compiler)?;
    Ok(format!(
        "#!/bin/sh\n# written by suture: the release's compiler through {}\nexec '{}' '{}' \"$@\"\n",
        launcher.display(),
        launcher.display(),
        compiler.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_path(name: &str) -> Option<PathBuf> {
        (name == "ccache" || name == "distcc").then(|| PathBuf::from(format!("/usr/bin/{name}")))
    }

    #[test]
    fn ccache_by_default_when_installed_none_turns_it_off() {
        assert_eq!(
            choose(None, on_path).unwrap(),
            Some("/usr/bin/ccache".into())
        );
        assert_eq!(choose(None, |_| None).unwrap(), None);
        assert_eq!(choose(Some("none"), on_path).unwrap(), None);
        assert_eq!(
            choose(Some("distcc"), on_path).unwrap(),
            Some("/usr/bin/distcc".into())
        );
        assert_eq!(
            choose(Some("/opt/cc wrap/x"), on_path)
                .unwrap_err()
                .to_string(),
            "SUTURE_CC_LAUNCHER: /opt/cc wrap/x is not a plain absolute path ([A-Za-z0-9/._+-])"
        );
        assert!(choose(Some("bin/x"), on_path).is_err());
        assert!(choose(Some("icecc"), on_path).is_err());
    }

    #[test]
    fn the_wrapper_quotes_plain_paths_only() {
        let w = wrapper(Path::new("/usr/bin/ccache"), Path::new("/usr/bin/gcc-12")).unwrap();
        assert!(
            w.ends_with("exec '/usr/bin/ccache' '/usr/bin/gcc-12' \"$@\"\n"),
            "{w}"
        );
        assert!(wrapper(
            Path::new("/tmp/x';rm -rf /;'"),
            Path::new("/usr/bin/gcc-12")
        )
        .is_err());
        assert!(wrapper(Path::new("/usr/bin/ccache"), Path::new("gcc-12")).is_err());
    }
}
