//! What an update changes, file by file: which files a livepatch can carry
//! (C sources and headers) and why the others cannot. No I/O.

/// How one file differs between the release's source and the update's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Modified,
    Added,
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// Tree path (`fs/ext4/inode.c`).
    pub path: String,
    pub change: Change,
}

/// What a changed file is to a livepatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A C translation unit or a `.c` file another includes.
    Source,
    Header,
    /// Not code a livepatch can carry: why.
    Other(&'static str),
}

pub fn classify(path: &str) -> Class {
    let name = path.rsplit('/').next().unwrap_or(path);
    let top = path.split('/').next().unwrap_or("");
    if matches!(
        top,
        "Documentation" | "tools" | "scripts" | "samples" | "LICENSES" | "usr"
    ) {
        return Class::Other("not kernel code: the running kernel does not contain it");
    }
    if name.ends_with(".c") {
        Class::Source
    } else if name.ends_with(".h") {
        Class::Header
    } else if name.ends_with(".S") || name.ends_with(".s") {
        Class::Other("assembly: no ftrace entry, no per-function sections; needs a reboot")
    } else if name.starts_with("Makefile") || name == "Kbuild" || name.starts_with("Kconfig") {
        Class::Other("build configuration: it changes what is built, not code a livepatch carries")
    } else if name.ends_with(".rs") {
        Class::Other("Rust code: not supported by suture")
    } else {
        Class::Other("not C source or a header")
    }
}

/// Another architecture's file (`arch/arm64/...`): x86 releases never build it.
pub fn other_arch(path: &str) -> bool {
    let mut parts = path.split('/');
    parts.next() == Some("arch") && parts.next().is_some_and(|a| a != "x86")
}

/// Whether `path` lies under one of `only` (every path when `only` is empty).
pub fn in_scope(path: &str, only: &[String]) -> bool {
    only.is_empty()
        || only.iter().any(|d| {
            let d = d.trim_end_matches('/');
            path.strip_prefix(d).is_some_and(|r| r.starts_with('/'))
        })
}

/// A `--only` directory as given on the command line: a tree path.
pub fn check_only(dir: &str) -> Result<String, String> {
    let d = dir.trim_end_matches('/');
    let ok = !d.is_empty()
        && !d.starts_with('/')
        && d.split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.starts_with('-'))
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./+".contains(&b));
    if ok {
        Ok(d.to_string())
    } else {
        Err(format!(
            "--only {dir:?}: give a directory of the kernel tree (kernel, fs/ext4)"
        ))
    }
}

/// The unified diff that turns `old` into `new` (`a/PATH`, `b/PATH`; an added
/// file from `/dev/null`), as `patch` and `suture build` read it.
pub fn unified(path: &str, change: Change, old: &str, new: &str) -> String {
    let (a, b) = match change {
        Change::Added => ("/dev/null".to_string(), format!("b/{path}")),
        Change::Removed => (format!("a/{path}"), "/dev/null".to_string()),
        Change::Modified => (format!("a/{path}"), format!("b/{path}")),
    };
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&a, &b)
        .to_string()
}

/// A module name for the cumulative patch of an update: `livepatch_` and
/// the version with every other character an underscore
/// (`6.1.187-1` → `livepatch_linux_6_1_187_1`).
pub fn module_name(version: &str) -> String {
    let v: String = version
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("livepatch_linux_{v}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use suture_kernel::patchfile;

    #[test]
    fn files_are_classed_by_what_a_livepatch_can_carry() {
        assert_eq!(classify("fs/ext4/inode.c"), Class::Source);
        assert_eq!(classify("include/linux/fs.h"), Class::Header);
        assert!(
            matches!(classify("arch/x86/entry/entry_64.S"), Class::Other(w) if w.contains("assembly"))
        );
        assert!(
            matches!(classify("fs/ext4/Makefile"), Class::Other(w) if w.contains("build configuration"))
        );
        assert!(matches!(classify("net/Kconfig"), Class::Other(_)));
        assert!(
            matches!(classify("tools/perf/builtin-top.c"), Class::Other(w) if w.contains("not kernel code"))
        );
        assert!(matches!(classify("rust/kernel/lib.rs"), Class::Other(w) if w.contains("Rust")));
        assert!(other_arch("arch/arm64/kernel/smp.c"));
        assert!(!other_arch("arch/x86/kvm/x86.c"));
        assert!(!other_arch("fs/arch/x.c"));
    }

    #[test]
    fn only_directories_are_tree_paths_matched_as_prefixes_of_whole_names() {
        let only = vec!["fs".to_string(), "net/ipv4".to_string()];
        assert!(in_scope("fs/ext4/inode.c", &only));
        assert!(in_scope("net/ipv4/tcp.c", &only));
        assert!(!in_scope("fsverity/x.c", &only));
        assert!(!in_scope("net/ipv6/tcp_ipv6.c", &only));
        assert!(in_scope("anything.c", &[]));
        assert_eq!(check_only("fs/").unwrap(), "fs");
        for bad in ["", "/etc", "../x", "fs/../..", "-rf", "fs/$(x)", "a b"] {
            assert!(check_only(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_generated_diff_applies_back_to_the_new_text() {
        let old: String = (1..=40).map(|i| format!("line {i}\n")).collect();
        let new = old
            .replace("line 5\n", "line five\n")
            .replace("line 30\n", "line 30\nadded\n");
        let text = unified("fs/x.c", Change::Modified, &old, &new);
        assert!(
            text.starts_with("--- a/fs/x.c\n+++ b/fs/x.c\n@@ "),
            "{text}"
        );
        let fps = patchfile::parse("x", &text).unwrap();
        assert_eq!(fps.len(), 1);
        assert_eq!(fps[0].hunks.len(), 2);
        assert_eq!(patchfile::apply(&fps[0], &old).unwrap().text, new);

        let added = unified("include/linux/new.h", Change::Added, "", "a\nb\n");
        let fps = patchfile::parse("x", &added).unwrap();
        assert_eq!(fps[0].kind, patchfile::FileKind::Created);
        assert_eq!(patchfile::apply(&fps[0], "").unwrap().text, "a\nb\n");
    }

    #[test]
    fn module_names_are_kbuild_words() {
        let n = module_name("6.1.187-1");
        assert_eq!(n, "livepatch_linux_6_1_187_1");
        suture_abi::check_module_name(&n).unwrap();
        suture_abi::check_module_name(&module_name("6.12.118-1~deb12u1")).unwrap();
    }
}
