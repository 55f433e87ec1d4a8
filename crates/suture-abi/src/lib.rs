//! The contracts two or more suture stages share, in one place, with no I/O.
//!
//! A value that crosses a stage boundary (a module's name read from its
//! `.modinfo`, the release in its `vermagic`) is checked here before any
//! stage turns it into a path, a package name or shell text: the builder
//! applies the same rule to `--name` as the host applies to a module it
//! did not build.

#![forbid(unsafe_code)]

pub mod kallsyms;
pub mod klp;
pub mod modinfo;
pub mod notes;
pub mod target;
pub mod verify;

use std::fmt;

/// The kernel's `MODULE_NAME_LEN` (`include/linux/module.h`): the name
/// array in `struct module`, NUL included.
pub const MODULE_NAME_LEN: usize = 56;

/// `__NEW_UTS_LEN` (`include/uapi/linux/utsname.h`): the longest release
/// `uname -r` can print.
pub const RELEASE_LEN: usize = 64;

/// A name or release that breaks its rule: what it was and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub rule: &'static str,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} is not valid: {}",
            self.what, self.value, self.rule
        )
    }
}

impl std::error::Error for NameError {}

/// A module name as kbuild makes them (`KBUILD_MODNAME`: `-` already turned
/// into `_`): 1 to 55 ASCII letters, digits and underscores. Nothing else
/// is ever needed, and with this rule a name is safe as a file name, in a
/// Debian package name (lowercased) and in shell text.
pub fn check_module_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() < MODULE_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NameError {
            what: "module name",
            value: name.to_string(),
            rule: "use 1 to 55 letters, digits and underscores",
        })
    }
}

/// A kernel release as `uname -r` prints it (`6.1.0-56-amd64`,
/// `6.12.48+deb12-amd64`): 1 to 64 ASCII letters, digits and `._+~-_`,
/// starting with a letter or digit. It becomes a directory name
/// (`STATE/RELEASE/`, `/usr/lib/suture/patches/RELEASE/`, `/boot/vmlinuz-RELEASE`),
/// part of a package name and a word in a maintainer script: `/`, `..`
/// as a whole name, spaces and shell metacharacters are all outside the rule.
pub fn check_release(release: &str) -> Result<(), NameError> {
    let ok = release.len() <= RELEASE_LEN
        && release
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && release
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+~-_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NameError {
            what: "kernel release",
            value: release.to_string(),
            rule: "a release is 1 to 64 letters, digits and ._+~-_ starting with a letter or digit, as `uname -r` prints it (6.1.0-56-amd64)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        for good in ["livepatch_fix", "a", "X_9", &"n".repeat(55)] {
            assert_eq!(check_module_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            &"n".repeat(56),
            "$(id>PWNED)",
            "../x",
            "a/b",
            "a-b",
            "a b",
            "a'b",
            "a\nb",
            "\u{e9}",
        ] {
            let e = check_module_name(bad).unwrap_err();
            assert!(e.to_string().contains("55 letters"), "{e}");
        }
    }

    #[test]
    fn releases() {
        for good in [
            "6.1.0-56-amd64",
            "6.12.48+deb12-amd64",
            "6.1.0-47-cloud-amd64",
            "5.10.0-0.deb10.16-rt-amd64",
            "6.1~rc1",
            "6.1.0_custom",
            &"6".repeat(64),
        ] {
            assert_eq!(check_release(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../../etc",
            "-rf",
            ".hidden",
            "6.1/x",
            "6.1 x",
            "$(id)",
            "6.1;reboot",
            "6.1'",
            &"6".repeat(65),
        ] {
            let e = check_release(bad).unwrap_err();
            assert!(e.to_string().contains("uname -r"), "{e}");
        }
    }
}
