//! Which objects the release's configuration builds, and into what, asked of
//! kbuild itself: each directory's Makefile is evaluated by
//! `scripts/Makefile.build` (with the tree's `auto.conf`), exactly as a
//! kernel build evaluates it, and an extra rule prints the lists
//! `scripts/Makefile.lib` derived (`real-obj-y`, `lib-y`, `real-obj-m`, the
//! composite modules and the subdirectories descended). Kconfig is never
//! re-implemented: a file is built because kbuild would build it.
//!
//! The pure part ([`parse_lists`], [`decide`], [`options_for`]) works on the
//! printed lists and Makefile text; [`query`] is the edge that runs make.

use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;

/// What kbuild builds in one directory, paths relative to the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirLists {
    /// Objects linked into vmlinux (`real-obj-y` and `lib-y`).
    pub builtin: HashSet<String>,
    /// Objects linked into modules (`real-obj-m`).
    pub modular: HashSet<String>,
    /// Part → the composite modules it is linked into (`foo-y := a.o b.o`
    /// with `obj-m += foo.o`), by module name.
    pub composite: HashMap<String, Vec<String>>,
    /// Subdirectories whose built-in objects reach vmlinux (`obj-y += d/`).
    pub builtin_dirs: HashSet<String>,
    /// Subdirectories descended for modules (`obj-y += d/` or `obj-m += d/`).
    pub module_dirs: HashSet<String>,
}

/// Where an object goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Vmlinux,
    /// The module's name as the kernel knows it (`-` turned into `_`).
    Module(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Built, into each of these (an object may be linked into several
    /// modules), by the Makefile of `dir`: the directory whose
    /// `scripts/Makefile.build` run compiles it with the right flags.
    Built { targets: Vec<Target>, dir: String },
    /// Not built by this configuration. `dir` is the deepest directory kbuild
    /// descends into on the way (the object's own when it is descended):
    /// its Makefile holds the line that leaves the object or subdirectory out.
    NotBuilt { dir: String, missing: String },
}

const BEGIN: &str = "suture-kbuild-dir=";

/// The rule appended to `scripts/Makefile.build`: one section per directory.
const PRINT_MK: &str = r#"
PHONY += suture-print
suture-print:
	@printf '%s\n' 'suture-kbuild-dir=$(obj)'
	@printf 'y %s\n' $(real-obj-y) $(lib-y)
	@printf 'm %s\n' $(real-obj-m)
	@$(foreach c,$(multi-obj-m),printf 'c $(c) %s\n' $(addprefix $(obj)/,$(call suffix-search,$(notdir $(c)),.o,-objs -y -m));)
"#;

/// The top-level rules: the tree's own Makefile sets up the environment
/// (`srctree`, `CC`, flags) and each directory is evaluated in a sub-make.
/// `suture-compile` builds objects through the Makefile of the directory that
/// lists them (`DIR:OBJ:OBJ` groups), as a full kernel build does: kbuild's
/// single-target path instead enters every directory on the way whose name
/// is a prefix of the target, and one listed by a grandparent
/// (`drivers/Makefile: obj-y += char/ipmi/`) is then compiled twice at once,
/// once by `drivers/char` with the wrong flags.
pub(crate) const TOP_MK: &str = r#"
PHONY += suture-query suture-compile
suture-query:
	$(Q)$(foreach d,$(SUTURE_DIRS),$(MAKE) -f $(srctree)/scripts/Makefile.build -f $(SUTURE_PRINT_MK) obj=$(d) need-builtin=1 need-modorder=1 suture-print;)
suture-compile:
	$(Q)$(foreach g,$(SUTURE_GROUPS),$(MAKE) -f $(srctree)/scripts/Makefile.build obj=$(firstword $(subst :, ,$(g))) $(wordlist 2,100000,$(subst :, ,$(g))) &&) true
"#;

/// `SUTURE_GROUPS` for `suture-compile`: objects grouped by the directory
/// whose Makefile lists them, in a stable order.
pub fn compile_groups(objects: &[(String, String)]) -> String {
    let mut by_dir: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (o, d) in objects {
        by_dir.entry(d.as_str()).or_default().push(o.as_str());
    }
    by_dir
        .into_iter()
        .map(|(d, os)| format!("{d}:{}", os.join(":")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn module_name(object: &str) -> String {
    let base = object.rsplit('/').next().unwrap_or(object);
    base.strip_suffix(".o").unwrap_or(base).replace('-', "_")
}

/// A path kbuild names (`fs/proc/cmdline.o`, `drivers/char/ipmi`, and
/// `arch/x86/kvm/../../../virt/kvm/eventfd.o` as kvm's Makefile lists it):
/// relative, never climbing out of the tree, and only characters that stay
/// one word in a make variable and a shell command. What is read back from the cache
/// (`units.json`, `includes.json`) must pass it before it becomes a path or
/// a make argument.
pub fn is_tree_path(p: &str) -> bool {
    !p.is_empty()
        && p != "."
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty())
        && crate::includes::normalize(p).is_some_and(|n| !n.is_empty())
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-,/".contains(&b))
}

/// Parses what [`PRINT_MK`] printed for each directory.
pub fn parse_lists(text: &str) -> HashMap<String, DirLists> {
    let mut out: HashMap<String, DirLists> = HashMap::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if let Some(d) = line.strip_prefix(BEGIN) {
            let d = d.trim().to_string();
            out.entry(d.clone()).or_default();
            cur = Some(d);
            continue;
        }
        let Some(dir) = cur.as_ref() else { continue };
        let l = out.get_mut(dir).expect("section created above");
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("y"), Some(o)) => {
                if let Some(sub) = o.strip_suffix("/built-in.a") {
                    l.builtin_dirs.insert(sub.to_string());
                    l.module_dirs.insert(sub.to_string());
                } else {
                    l.builtin.insert(o.to_string());
                }
            }
            (Some("m"), Some(o)) => {
                if let Some(sub) = o.strip_suffix("/modules.order") {
                    l.module_dirs.insert(sub.to_string());
                } else {
                    l.modular.insert(o.to_string());
                }
            }
            (Some("c"), Some(module)) => {
                for part in w {
                    l.composite
                        .entry(part.to_string())
                        .or_default()
                        .push(module_name(module));
                }
            }
            _ => {}
        }
    }
    out
}

/// The directories to evaluate for `object` (`fs/btrfs/inode.o`): the tree
/// root and every ancestor of the object's directory. Not every ancestor is
/// descended by kbuild (`arch/x86/lib` is listed by the root itself), so
/// [`decide`] follows what each directory actually lists.
pub fn ancestors(object: &str) -> Vec<String> {
    let mut v = vec![".".to_string()];
    let dir = object.rsplit_once('/').map_or("", |(d, _)| d);
    let mut acc = String::new();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(part);
        v.push(acc.clone());
    }
    v
}

/// Whether and into what the configuration builds `object`, from the lists
/// of its ancestors. The walk starts at the root and enters, at each step,
/// the deepest listed subdirectory on the object's path; an object listed
/// with a path by an ancestor (`obj-y += sub/x.o`) is found there.
pub fn decide(object: &str, lists: &HashMap<String, DirLists>) -> Decision {
    let dir_of = object.rsplit_once('/').map_or(".", |(d, _)| d);
    let mut cur = ".".to_string();
    // Objects of a directory reached only through `obj-m += d/` are not
    // linked into vmlinux even when listed in its obj-y.
    let mut builtin_reach = true;
    loop {
        let Some(l) = lists.get(&cur) else {
            return Decision::NotBuilt {
                dir: cur,
                missing: object.to_string(),
            };
        };
        let mut targets = Vec::new();
        if builtin_reach && l.builtin.contains(object) {
            targets.push(Target::Vmlinux);
        }
        if l.modular.contains(object) {
            match l.composite.get(object) {
                Some(mods) => targets.extend(mods.iter().cloned().map(Target::Module)),
                None => targets.push(Target::Module(module_name(object))),
            }
        }
        if !targets.is_empty() {
            targets.sort();
            targets.dedup();
            return Decision::Built { targets, dir: cur };
        }
        if cur == dir_of {
            return Decision::NotBuilt {
                dir: cur,
                missing: object.to_string(),
            };
        }
        let next = l
            .module_dirs
            .iter()
            .filter(|d| dir_of == d.as_str() || dir_of.starts_with(&format!("{d}/")))
            .max_by_key(|d| d.len());
        match next {
            Some(d) => {
                builtin_reach &= l.builtin_dirs.contains(d);
                cur = d.clone();
            }
            None => {
                // The next directory on the path is the one left out.
                let rest = if cur == "." {
                    dir_of
                } else {
                    &dir_of[cur.len() + 1..]
                };
                let first = rest.split('/').next().unwrap_or(rest);
                let missing = if cur == "." {
                    format!("{first}/")
                } else {
                    format!("{cur}/{first}/")
                };
                return Decision::NotBuilt { dir: cur, missing };
            }
        }
    }
}

/// Joins backslash-continued lines, so a list spread over lines is one.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut acc = String::new();
    for l in text.lines() {
        if let Some(head) = l.strip_suffix('\\') {
            acc.push_str(head);
            acc.push(' ');
        } else {
            acc.push_str(l);
            out.push(std::mem::take(&mut acc));
        }
    }
    if !acc.is_empty() {
        out.push(acc);
    }
    out
}

/// The Kconfig options the Makefile ties `word` to, outermost first:
/// `obj-$(CONFIG_FOO) += word` gives `[CONFIG_FOO]`; a composite's part
/// (`foo-$(CONFIG_BAR) += word` with `obj-$(CONFIG_FOO) += foo.o`) gives
/// `[CONFIG_FOO, CONFIG_BAR]`. The caller names the first that the
/// configuration leaves unset. Empty when no line names one.
pub fn options_for(makefile: &str, word: &str) -> Vec<String> {
    let lines = logical_lines(makefile);
    let find = |word: &str| -> Option<(String, Option<String>)> {
        for l in &lines {
            let Some((lhs, rhs)) = l
                .split_once("+=")
                .or_else(|| l.split_once(":="))
                .or_else(|| l.split_once('='))
            else {
                continue;
            };
            if !rhs.split_whitespace().any(|w| w == word) {
                continue;
            }
            let lhs = lhs.trim();
            let option = lhs
                .split("$(")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .filter(|o| o.starts_with("CONFIG_"))
                .map(str::to_string);
            let var = lhs.split('-').next().unwrap_or("").to_string();
            return Some((var, option));
        }
        None
    };
    let Some((var, option)) = find(word) else {
        return vec![];
    };
    let mut v = Vec::new();
    if !var.is_empty() && var != "obj" && var != "lib" {
        if let Some((_, Some(outer))) = find(&format!("{var}.o")) {
            v.push(outer);
        }
    }
    v.extend(option);
    v
}

/// Whether the release builds an object, said for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applicability {
    /// Built into `targets`, compiled by `dir`'s Makefile.
    Built { targets: Vec<Target>, dir: String },
    /// Not built by the release's configuration: why, naming the option
    /// where a Makefile line ties the object (or its directory) to one.
    NotBuilt(String),
}

/// Why `decision` (not built) holds, from the Makefile of the directory that
/// leaves the object out and the release's `.config`.
pub fn explain(src: &Path, config: &str, decision: &Decision) -> Option<String> {
    let Decision::NotBuilt { dir, missing } = decision else {
        return None;
    };
    let d = src.join(dir);
    let makefile = ["Kbuild", "Makefile"]
        .iter()
        .map(|f| d.join(f))
        .find(|p| p.is_file());
    let text = makefile
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    // The Makefile names the object or directory relative to itself.
    let word = if dir == "." {
        missing.as_str()
    } else {
        &missing[dir.len() + 1..]
    };
    let options = options_for(&text, word);
    let unset = options
        .iter()
        .find(|o| crate::release::config_value(config, o).is_none_or(|v| v == "n"));
    let shown = if dir == "." {
        "the top-level Kbuild".to_string()
    } else {
        format!("{dir}/Makefile")
    };
    Some(match (unset, options.last()) {
        (Some(o), _) => format!("{o} is not set"),
        (None, Some(o)) => {
            format!("{o} is set, but {shown} does not list {word} in this configuration")
        }
        (None, None) => format!("{shown} does not build {word} in this configuration"),
    })
}

/// For each object (`fs/proc/cmdline.o`), whether and into what the
/// release's configuration builds it: one kbuild run over every directory
/// on the objects' paths.
pub fn applicability(
    src: &Path,
    make: Command,
    config: &str,
    objects: &[String],
) -> Result<HashMap<String, Applicability>> {
    let mut dirs: Vec<String> = objects.iter().flat_map(|o| ancestors(o)).collect();
    dirs.sort();
    dirs.dedup();
    let lists = query(src, make, &dirs)?;
    let mut out = HashMap::new();
    for o in objects {
        let d = decide(o, &lists);
        let a = match &d {
            Decision::Built { targets, dir } => Applicability::Built {
                targets: targets.clone(),
                dir: dir.clone(),
            },
            Decision::NotBuilt { .. } => {
                Applicability::NotBuilt(explain(src, config, &d).unwrap_or_default())
            }
        };
        out.insert(o.clone(), a);
    }
    Ok(out)
}

/// Whether C source `text` includes `target` (a file name in the same
/// directory, `rtmutex.c`) with a quoted `#include`.
pub fn includes_file(text: &str, target: &str) -> bool {
    crate::includes::parse_includes(text)
        .iter()
        .any(|(quoted, name)| {
            *quoted && (name == target || name.strip_prefix("./") == Some(target))
        })
}

/// The `.c` files of `file`'s directory that include it, directly or through
/// another included `.c` (`kernel/locking/rtmutex.c` is compiled only as part
/// of `rtmutex_api.c`, `rwsem.c`, ...), sorted. Only the file's own
/// directory is searched: that is where the kernel keeps such includers.
pub fn including_units(src: &Path, file: &str) -> std::io::Result<Vec<String>> {
    let (dir, _) = file.rsplit_once('/').unwrap_or((".", file));
    let mut texts = Vec::new();
    for e in std::fs::read_dir(src.join(dir))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".c") && e.file_type()?.is_file() {
            texts.push((
                format!("{dir}/{name}"),
                std::fs::read_to_string(e.path()).unwrap_or_default(),
            ));
        }
    }
    let mut found: Vec<String> = Vec::new();
    let mut todo = vec![file.to_string()];
    while let Some(t) = todo.pop() {
        let base = t.rsplit('/').next().unwrap_or(&t).to_string();
        for (path, text) in &texts {
            if *path != t && !found.contains(path) && path != file && includes_file(text, &base) {
                found.push(path.clone());
                todo.push(path.clone());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Every object the configuration builds, with the directory whose Makefile
/// lists it, from a walk of the whole tree: round by round, each directory
/// kbuild descends into is evaluated ([`query`]), starting at the root.
/// `query_round` runs one round (a list of directories) and returns its
/// lists; the walk itself is pure.
pub fn walk_units(
    mut query_round: impl FnMut(&[String]) -> Result<HashMap<String, DirLists>>,
) -> Result<Vec<(String, String)>> {
    let mut units = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    // (directory, whether its built-in objects reach vmlinux)
    let mut round: Vec<(String, bool)> = vec![(".".to_string(), true)];
    seen.insert(".".to_string());
    while !round.is_empty() {
        let dirs: Vec<String> = round.iter().map(|(d, _)| d.clone()).collect();
        let lists = query_round(&dirs)?;
        let mut next = Vec::new();
        for (d, reach) in &round {
            let Some(l) = lists.get(d) else { continue };
            for o in &l.modular {
                units.push((o.clone(), d.clone()));
            }
            if *reach {
                for o in &l.builtin {
                    units.push((o.clone(), d.clone()));
                }
            }
            let mut subs: Vec<&String> = l.module_dirs.iter().collect();
            subs.sort();
            for sub in subs {
                if seen.insert(sub.clone()) {
                    next.push((sub.clone(), *reach && l.builtin_dirs.contains(sub)));
                }
            }
        }
        round = next;
    }
    units.sort();
    units.dedup_by(|a, b| a.0 == b.0);
    Ok(units)
}

/// Runs kbuild over `dirs` of the prepared tree at `src` (`make` is the
/// tree's configured make command) and returns what each lists. Directories
/// without a Makefile or Kbuild file are skipped: kbuild never reads them.
pub fn query(src: &Path, mut make: Command, dirs: &[String]) -> Result<HashMap<String, DirLists>> {
    let dirs: Vec<&String> = dirs
        .iter()
        .filter(|d| {
            let p = src.join(d);
            p.join("Makefile").is_file() || p.join("Kbuild").is_file()
        })
        .collect();
    if dirs.is_empty() {
        return Ok(HashMap::new());
    }
    let scratch = tempfile::Builder::new()
        .prefix("suture-kbuild.")
        .tempdir()?;
    let print = scratch.path().join("print.mk");
    let top = scratch.path().join("top.mk");
    std::fs::write(&print, PRINT_MK)?;
    std::fs::write(&top, TOP_MK)?;
    let names: Vec<&str> = dirs.iter().map(|d| d.as_str()).collect();
    let out = make
        .arg("-s")
        // 6.12's Makefile re-runs itself without our extra makefile unless
        // make already has this flag.
        .arg("--no-print-directory")
        .arg("-f")
        .arg("Makefile")
        .arg("-f")
        .arg(&top)
        .arg(format!("SUTURE_PRINT_MK={}", print.display()))
        .arg(format!("SUTURE_DIRS={}", names.join(" ")))
        .arg("suture-query")
        // kbuild's own sub-makes run with these; without them Makefile.build
        // warns that modules "will not be built".
        .env("KBUILD_MODULES", "1")
        .env("KBUILD_BUILTIN", "1")
        .output()
        .context("running make to ask kbuild which objects the configuration builds")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lists = parse_lists(&text);
    if !out.status.success() && lists.is_empty() {
        anyhow::bail!(
            "kbuild could not evaluate {}: {}",
            names.join(", "),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    Ok(lists)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRINTED: &str = "\
suture-kbuild-dir=.
y arch/x86/built-in.a
y arch/x86/lib/built-in.a
y drivers/built-in.a
y fs/built-in.a
m drivers/modules.order
m fs/modules.order
suture-kbuild-dir=drivers
y drivers/char/built-in.a
m drivers/char/modules.order
suture-kbuild-dir=drivers/char
y drivers/char/mem.o
m drivers/char/ipmi/modules.order
suture-kbuild-dir=drivers/char/ipmi
y drivers/char/ipmi/ipmi_dmi.o
m drivers/char/ipmi/ipmi_msghandler.o
m drivers/char/ipmi/ipmi_si_intf.o
m drivers/char/ipmi/ipmi_kcs_sm.o
c drivers/char/ipmi/ipmi_si.o drivers/char/ipmi/ipmi_si_intf.o drivers/char/ipmi/ipmi_kcs_sm.o
suture-kbuild-dir=fs
y fs/open.o
m fs/binfmt_misc.o
m fs/btrfs/modules.order
y fs/proc/built-in.a
";

    #[test]
    fn objects_go_where_kbuild_links_them() {
        let l = parse_lists(PRINTED);
        assert_eq!(
            decide("fs/open.o", &l),
            Decision::Built {
                targets: vec![Target::Vmlinux],
                dir: "fs".into()
            }
        );
        assert_eq!(
            decide("fs/binfmt_misc.o", &l),
            Decision::Built {
                targets: vec![Target::Module("binfmt_misc".into())],
                dir: "fs".into()
            }
        );
        // A composite module's part: the module's name, not the part's.
        let ipmi = |m: &str| Decision::Built {
            targets: vec![Target::Module(m.into())],
            dir: "drivers/char/ipmi".into(),
        };
        assert_eq!(
            decide("drivers/char/ipmi/ipmi_si_intf.o", &l),
            ipmi("ipmi_si")
        );
        assert_eq!(
            decide("drivers/char/ipmi/ipmi_msghandler.o", &l),
            ipmi("ipmi_msghandler")
        );
        // The root lists arch/x86/lib itself; its lists were not printed
        // here, so the object is reported as left out there.
        assert_eq!(
            decide("arch/x86/lib/memcpy_64.o", &l),
            Decision::NotBuilt {
                dir: "arch/x86/lib".into(),
                missing: "arch/x86/lib/memcpy_64.o".into()
            }
        );
    }

    #[test]
    fn what_the_configuration_leaves_out_is_named() {
        let l = parse_lists(PRINTED);
        // In a descended directory, not listed.
        assert_eq!(
            decide("drivers/char/ipmi/ipmi_ssif.o", &l),
            Decision::NotBuilt {
                dir: "drivers/char/ipmi".into(),
                missing: "drivers/char/ipmi/ipmi_ssif.o".into()
            }
        );
        // A directory its parent does not descend into.
        assert_eq!(
            decide("drivers/tty/serial/altera_jtaguart.o", &l),
            Decision::NotBuilt {
                dir: "drivers".into(),
                missing: "drivers/tty/".into()
            }
        );
        assert_eq!(
            decide("sound/core/pcm.o", &l),
            Decision::NotBuilt {
                dir: ".".into(),
                missing: "sound/".into()
            }
        );
    }

    #[test]
    fn objects_of_a_modules_only_directory_are_not_in_vmlinux() {
        let l = parse_lists(
            "suture-kbuild-dir=.\nm fs/modules.order\nsuture-kbuild-dir=fs\ny fs/open.o\n",
        );
        assert!(matches!(decide("fs/open.o", &l), Decision::NotBuilt { .. }));
    }

    #[test]
    fn quoted_includes_of_a_c_file() {
        assert!(includes_file(
            "#include <linux/x.h>\n#include \"rtmutex.c\"\n",
            "rtmutex.c"
        ));
        assert!(includes_file("#  include   \"./rt.c\" /* x */", "rt.c"));
        assert!(!includes_file("#include \"rtmutex_common.h\"", "rtmutex.c"));
        assert!(!includes_file(
            "// #include \"rtmutex.c\" is what rwsem.c does",
            "rtmutex.c"
        ));
        assert!(!includes_file("#include <rtmutex.c>", "rtmutex.c"));
    }

    #[test]
    fn including_units_follow_nested_includes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("k")).unwrap();
        let w = |n: &str, t: &str| std::fs::write(d.path().join("k").join(n), t).unwrap();
        w("core.c", "int core;\n");
        w("api.c", "#include \"core.c\"\n");
        w("build.c", "#include \"api.c\"\n");
        w("other.c", "#include \"other.h\"\n");
        assert_eq!(
            including_units(d.path(), "k/core.c").unwrap(),
            ["k/api.c", "k/build.c"]
        );
        assert!(including_units(d.path(), "k/other.c").unwrap().is_empty());
    }

    #[test]
    fn the_walk_follows_what_each_directory_descends_into() {
        let all = parse_lists(PRINTED);
        let mut rounds = Vec::new();
        let units = walk_units(|dirs| {
            rounds.push(dirs.to_vec());
            Ok(dirs
                .iter()
                .filter_map(|d| all.get(d).map(|l| (d.clone(), l.clone())))
                .collect())
        })
        .unwrap();
        assert_eq!(rounds[0], ["."]);
        assert!(
            rounds[1].contains(&"fs".to_string()) && rounds[1].contains(&"drivers".to_string())
        );
        let objs: Vec<&str> = units.iter().map(|(o, _)| o.as_str()).collect();
        for o in [
            "fs/open.o",
            "fs/binfmt_misc.o",
            "drivers/char/mem.o",
            "drivers/char/ipmi/ipmi_si_intf.o",
        ] {
            assert!(objs.contains(&o), "{o}: {objs:?}");
        }
        assert!(units.contains(&(
            "drivers/char/ipmi/ipmi_si_intf.o".into(),
            "drivers/char/ipmi".into()
        )));
        // drivers/char descends into ipmi/ for modules only: its obj-y
        // objects are not linked into vmlinux.
        assert!(!objs.contains(&"drivers/char/ipmi/ipmi_dmi.o"), "{objs:?}");
    }

    #[test]
    fn compile_groups_by_listing_directory() {
        let g = compile_groups(&[
            ("drivers/char/ipmi/b.o".into(), "drivers/char/ipmi".into()),
            ("fs/open.o".into(), "fs".into()),
            ("drivers/char/ipmi/a.o".into(), "drivers/char/ipmi".into()),
        ]);
        assert_eq!(
            g,
            "drivers/char/ipmi:drivers/char/ipmi/b.o:drivers/char/ipmi/a.o fs:fs/open.o"
        );
    }

    #[test]
    fn tree_paths_stay_in_the_tree_and_one_word() {
        for ok in [
            "fs/proc/cmdline.o",
            "drivers/char/ipmi",
            "net/ipv4/tcp_input.c",
            "include/linux/kconfig.h",
        ] {
            assert!(is_tree_path(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "/etc/passwd",
            "../x.o",
            "fs/../../x",
            "fs//x.o",
            "a b.o",
            "x$(shell id).o",
            "a:b.o",
            "x;y.o",
        ] {
            assert!(!is_tree_path(bad), "{bad}");
        }
    }

    #[test]
    fn ancestors_start_at_the_root() {
        assert_eq!(ancestors("fs/btrfs/inode.o"), [".", "fs", "fs/btrfs"]);
        assert_eq!(ancestors("init.o"), ["."]);
    }

    #[test]
    fn options_come_from_the_makefile_line() {
        let mk = "\
obj-$(CONFIG_SERIAL_ALTERA_JTAGUART) += altera_jtaguart.o
obj-$(CONFIG_IPMI_SI) += ipmi_si.o
ipmi_si-y := ipmi_si_intf.o ipmi_kcs_sm.o \\
	ipmi_bt_sm.o
ipmi_si-$(CONFIG_IPMI_SI_PCI) += ipmi_si_pci.o
obj-y += always.o
obj-$(CONFIG_SERIAL_8250) += 8250/
";
        let o = |w: &str| options_for(mk, w);
        assert_eq!(o("altera_jtaguart.o"), ["CONFIG_SERIAL_ALTERA_JTAGUART"]);
        // A part of a composite: the composite's option first, then its own.
        assert_eq!(o("ipmi_bt_sm.o"), ["CONFIG_IPMI_SI"]);
        assert_eq!(o("ipmi_si_pci.o"), ["CONFIG_IPMI_SI", "CONFIG_IPMI_SI_PCI"]);
        assert_eq!(o("8250/"), ["CONFIG_SERIAL_8250"]);
        assert!(o("always.o").is_empty());
        assert!(o("absent.o").is_empty());
    }
}
