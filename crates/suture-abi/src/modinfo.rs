//! The `.modinfo` keys `suture build` and `suture triage` write into a
//! livepatch module and `suture-host` reads back. `MODULE_INFO(tag, ...)`
//! needs `tag` to be a C identifier, hence `suture_NAME`; readers accept
//! `suture.NAME` too ([`normalize`]). Repeatable keys appear once per value.

/// The kernel release the module was built for.
pub const RELEASE: &str = "suture_release";
/// The suture that built it.
pub const VERSION: &str = "suture_version";
/// Hex SHA-256 of the source patch (the cumulative patch for triage).
pub const PATCH_SHA256: &str = "suture_patch_sha256";
/// Hex GNU build-id of the release's vmlinux (`/sys/kernel/notes`).
pub const RELEASE_BUILD_ID: &str = "suture_release_build_id";
pub const DESCRIPTION: &str = "suture_description";
/// One per CVE id (a value may also carry a comma or space list).
pub const CVE: &str = "suture_cve";
/// One per replaced function: `OBJ NAME SYMPOS [LEN SHA256 MASK]`.
pub const FUNC: &str = "suture_func";
/// A cumulative module of a distribution update (`suture triage --build`):
/// the update's source version it brings the running code to.
pub const SOURCE_VERSION: &str = "suture_source_version";
/// Of the update's objects for this release: how many the module carries.
pub const UPDATE_LIVE: &str = "suture_update_live";
/// ... and how many need a reboot into the updated release.
pub const UPDATE_REBOOT: &str = "suture_update_reboot";
/// One per object (`fs/ext4/inode.o`) the cumulative module carries.
pub const OBJECT: &str = "suture_object";

/// A key as written (`suture.cve` or `suture_cve`) in its canonical form;
/// `None` for a key that is not suture's.
pub fn normalize(key: &str) -> Option<String> {
    let rest = key
        .strip_prefix("suture_")
        .or_else(|| key.strip_prefix("suture."))?;
    Some(format!("suture_{rest}"))
}

/// A Debian package version (`6.1.187-1`, `6.12.118-1~deb12u1`): what a
/// recorded source version may be.
pub fn is_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.as_bytes()[0].is_ascii_digit()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.~:".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_are_one_key() {
        assert_eq!(normalize("suture.cve").as_deref(), Some(CVE));
        assert_eq!(normalize(CVE).as_deref(), Some(CVE));
        assert_eq!(normalize("description"), None);
        assert_eq!(normalize("suturex"), None);
    }

    #[test]
    fn versions_are_debian_versions() {
        assert!(is_version("6.1.187-1"));
        assert!(is_version("6.12.118-1~deb12u1"));
        for bad in ["", "x1", "6.1\n", "6.1 1", "6.1\"1", "6.1\u{1b}[2J"] {
            assert!(!is_version(bad), "{bad:?}");
        }
    }
}
