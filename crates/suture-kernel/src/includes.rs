//! Which translation units include a file, directly or not: the `#include`
//! lines of every unit the configuration builds, and of every file they
//! reach, resolved the way kbuild's compiler command resolves them (the
//! including file's directory for `"..."`, then `LINUXINCLUDE`), with the
//! headers every unit gets through `-include`.
//!
//! The graph over-approximates on purpose: an `#include` under an `#if` that
//! the configuration leaves out still counts (a unit compiled for nothing
//! drops out as unchanged), and an include that no known path resolves (a
//! subsystem's own `-I` in its Makefile) counts for every changed file of the
//! same name. It never misses a unit that includes a changed file through
//! the paths it knows.
//!
//! [`parse_includes`] and [`resolve`] are pure; [`IncludeGraph::scan`] reads
//! the tree.

use std::collections::{HashMap, HashSet};
use std::path::Path;

/// x86's `LINUXINCLUDE` (the top Makefile's `-I` list), in order.
pub const X86_INCLUDE_PATHS: &[&str] = &[
    "arch/x86/include",
    "arch/x86/include/generated",
    "include",
    "arch/x86/include/uapi",
    "arch/x86/include/generated/uapi",
    "include/uapi",
    "include/generated/uapi",
];

/// What the top Makefile passes as `-include` to every unit.
pub const FORCED_INCLUDES: &[&str] = &[
    "include/linux/compiler-version.h",
    "include/linux/kconfig.h",
    "include/linux/compiler_types.h",
];

/// The `#include` directives of C source `text`: (quoted, name).
pub fn parse_includes(text: &str) -> Vec<(bool, String)> {
    let mut v = Vec::new();
    for l in text.lines() {
        let l = l.trim_start();
        let Some(rest) = l.strip_prefix('#') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix("include") else {
            continue;
        };
        let rest = rest.trim_start();
        let (quoted, close) = match rest.chars().next() {
            Some('"') => (true, '"'),
            Some('<') => (false, '>'),
            _ => continue, // a macro name: not followed
        };
        if let Some((name, _)) = rest[1..].split_once(close) {
            if !name.is_empty() {
                v.push((quoted, name.to_string()));
            }
        }
    }
    v
}

/// `a/b/../c` → `a/c`; `None` when it climbs out of the tree.
pub fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Where `#include` of `name` from tree file `from` lands, given which tree
/// paths exist: `"..."` looks in `from`'s directory first, then both forms
/// look in `paths`.
pub fn resolve(
    from: &str,
    quoted: bool,
    name: &str,
    paths: &[&str],
    mut exists: impl FnMut(&str) -> bool,
) -> Option<String> {
    if quoted {
        let dir = from.rsplit_once('/').map_or("", |(d, _)| d);
        if let Some(p) = normalize(&format!("{dir}/{name}")) {
            if exists(&p) {
                return Some(p);
            }
        }
    }
    paths
        .iter()
        .filter_map(|d| normalize(&format!("{d}/{name}")))
        .find(|p| exists(p))
}

/// The include graph of a set of units, reversed: who includes each file.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct IncludeGraph {
    /// Every file seen, units first.
    files: Vec<String>,
    /// How many of `files` are units (`.c` files compiled on their own).
    units: usize,
    /// For each file, the files that include it directly.
    includers: Vec<Vec<u32>>,
    /// Base name → files with an `#include` of that name that no known path
    /// resolves.
    unresolved: HashMap<String, Vec<u32>>,
}

impl IncludeGraph {
    /// Scans `units` (tree paths of `.c` files) and everything they include
    /// under `src`.
    pub fn scan(src: &Path, units: &[String]) -> IncludeGraph {
        let mut g = IncludeGraph {
            units: units.len(),
            ..Default::default()
        };
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut exists_cache: HashMap<String, bool> = HashMap::new();
        let mut intern = |g: &mut IncludeGraph, f: &str| -> u32 {
            if let Some(&i) = index.get(f) {
                return i;
            }
            let i = g.files.len() as u32;
            g.files.push(f.to_string());
            g.includers.push(Vec::new());
            index.insert(f.to_string(), i);
            i
        };
        for u in units {
            intern(&mut g, u);
        }
        let forced: Vec<u32> = FORCED_INCLUDES.iter().map(|f| intern(&mut g, f)).collect();
        for i in 0..g.units as u32 {
            for &f in &forced {
                g.includers[f as usize].push(i);
            }
        }
        let mut done: HashSet<u32> = HashSet::new();
        let mut todo: Vec<u32> = (0..g.files.len() as u32).collect();
        while let Some(i) = todo.pop() {
            if !done.insert(i) {
                continue;
            }
            let from = g.files[i as usize].clone();
            let Ok(text) = std::fs::read(src.join(&from)) else {
                continue;
            };
            for (quoted, name) in parse_includes(&String::from_utf8_lossy(&text)) {
                let mut exists = |p: &str| {
                    *exists_cache
                        .entry(p.to_string())
                        .or_insert_with(|| src.join(p).is_file())
                };
                match resolve(&from, quoted, &name, X86_INCLUDE_PATHS, &mut exists) {
                    Some(p) => {
                        let j = intern(&mut g, &p);
                        g.includers[j as usize].push(i);
                        if !done.contains(&j) {
                            todo.push(j);
                        }
                    }
                    None => {
                        let base = name.rsplit('/').next().unwrap_or(&name).to_string();
                        g.unresolved.entry(base).or_default().push(i);
                    }
                }
            }
        }
        for v in &mut g.includers {
            v.sort_unstable();
            v.dedup();
        }
        g
    }

    /// The units that include `file` (a tree path), directly or through
    /// other files, sorted; `file` itself when it is a unit.
    pub fn units_including(&self, file: &str) -> Vec<String> {
        let mut start: Vec<u32> = self
            .files
            .iter()
            .position(|f| f == file)
            .map(|i| vec![i as u32])
            .unwrap_or_default();
        // An include no known path resolves may be this file: counted.
        let base = file.rsplit('/').next().unwrap_or(file);
        start.extend(self.unresolved.get(base).into_iter().flatten().copied());
        let mut seen: HashSet<u32> = start.iter().copied().collect();
        let mut todo = start;
        while let Some(i) = todo.pop() {
            for &j in &self.includers[i as usize] {
                if seen.insert(j) {
                    todo.push(j);
                }
            }
        }
        let mut v: Vec<String> = seen
            .into_iter()
            .filter(|&i| (i as usize) < self.units)
            .map(|i| self.files[i as usize].clone())
            .collect();
        v.sort();
        v
    }

    /// Whether every file the graph names is a path inside the tree and its
    /// indices are in range: a graph read back from the cache is used only
    /// then.
    pub fn is_well_formed(&self) -> bool {
        let n = self.files.len();
        self.units <= n
            && self.includers.len() == n
            && self.files.iter().all(|f| crate::kbuild::is_tree_path(f))
            && self
                .includers
                .iter()
                .chain(self.unresolved.values())
                .all(|v| v.iter().all(|&i| (i as usize) < n))
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives() {
        let t = "#include <linux/fs.h>\n  #  include \"internal.h\" // x\n#include MACRO\n#define X\n#include <>\n";
        assert_eq!(
            parse_includes(t),
            [
                (false, "linux/fs.h".to_string()),
                (true, "internal.h".to_string())
            ]
        );
    }

    #[test]
    fn resolution_order() {
        let have = [
            "fs/proc/internal.h",
            "include/linux/fs.h",
            "arch/x86/include/asm/io.h",
            "include/asm-generic/io.h",
        ];
        let exists = |p: &str| have.contains(&p);
        assert_eq!(
            resolve(
                "fs/proc/base.c",
                true,
                "internal.h",
                X86_INCLUDE_PATHS,
                exists
            )
            .as_deref(),
            Some("fs/proc/internal.h")
        );
        assert_eq!(
            resolve(
                "fs/proc/base.c",
                true,
                "linux/fs.h",
                X86_INCLUDE_PATHS,
                exists
            )
            .as_deref(),
            Some("include/linux/fs.h")
        );
        assert_eq!(
            resolve(
                "fs/proc/base.c",
                false,
                "asm/io.h",
                X86_INCLUDE_PATHS,
                exists
            )
            .as_deref(),
            Some("arch/x86/include/asm/io.h")
        );
        assert_eq!(
            resolve(
                "fs/proc/base.c",
                true,
                "../../include/asm-generic/io.h",
                X86_INCLUDE_PATHS,
                exists
            )
            .as_deref(),
            Some("include/asm-generic/io.h")
        );
        // <...> never looks in the including file's directory.
        assert_eq!(
            resolve(
                "fs/proc/base.c",
                false,
                "internal.h",
                X86_INCLUDE_PATHS,
                exists
            ),
            None
        );
        assert_eq!(normalize("a/../../b"), None);
    }

    #[test]
    fn units_including_a_header_directly_or_not() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, t: &str| {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, t).unwrap();
        };
        w("include/linux/a.h", "#include <linux/b.h>\n");
        w(
            "include/linux/b.h",
            "static inline int b(void) { return 1; }\n",
        );
        w("include/linux/kconfig.h", "");
        w("fs/x/one.c", "#include <linux/a.h>\n");
        w("fs/x/two.c", "#include \"local.h\"\n");
        w("fs/x/local.h", "#include <linux/b.h>\n");
        w("fs/x/three.c", "#include <linux/kconfig.h>\n");
        w("drivers/y/four.c", "#include \"only_via_minus_I.h\"\n");
        let units: Vec<String> = [
            "fs/x/one.c",
            "fs/x/two.c",
            "fs/x/three.c",
            "drivers/y/four.c",
        ]
        .map(String::from)
        .to_vec();
        let g = IncludeGraph::scan(d.path(), &units);
        assert_eq!(
            g.units_including("include/linux/b.h"),
            ["fs/x/one.c", "fs/x/two.c"]
        );
        assert_eq!(g.units_including("fs/x/local.h"), ["fs/x/two.c"]);
        assert_eq!(g.units_including("fs/x/one.c"), ["fs/x/one.c"]);
        // Every unit gets the forced includes.
        assert_eq!(g.units_including("include/linux/kconfig.h").len(), 4);
        // An include no known path resolves counts for a file of that name.
        assert_eq!(
            g.units_including("drivers/y/inc/only_via_minus_I.h"),
            ["drivers/y/four.c"]
        );
        assert!(g.units_including("include/linux/nothing.h").is_empty());
    }
}
