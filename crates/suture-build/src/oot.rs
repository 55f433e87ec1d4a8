//! Out-of-tree modules (`--module-src DIR`, kpatch's `--oot-module`): the patch
//! applies to DIR, a module source built with the release's kbuild
//! (`make -C linux-headers-RELEASE M=DIR`). Both sides are built in copies of
//! DIR, so the user's directory is never written to; the unpatched `.ko` built
//! here stands in for the module the hosts run (same source, same headers,
//! same compiler).

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use suture_kernel::patchfile::{self, FileKind, FilePatch};
use suture_kernel::tree::{objname_from_cmd, KCFLAGS};
use suture_kernel::{ObjectInfo, Tree};

pub struct OotObjects {
    pub pairs: Vec<(ObjectInfo, Vec<u8>)>,
    pub patched: Vec<Vec<u8>>,
    /// objname → the unpatched module built here.
    pub modules: HashMap<String, Vec<u8>>,
}

/// Build products, never copied from the user's directory.
fn is_artefact(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".cmd")
        || [".o", ".ko", ".mod", ".mod.c", ".order", ".symvers", ".a"]
            .iter()
            .any(|s| name.ends_with(s))
}

fn copy_sources(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ty = e.file_type()?;
        if ty.is_dir() {
            if name != ".git" {
                copy_sources(&e.path(), &to.join(&name))?;
            }
        } else if ty.is_file() && !is_artefact(&name) {
            fs::copy(e.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// `make -C HEADERS M=DIR modules`, under the release's lock like the tree's
/// own make ([`Tree::run_locked`]): it does not outlive the build.
fn kbuild(tree: &Tree, dir: &Path, kcflags: &str) -> Result<()> {
    let out = tree
        .run_locked(
            Command::new("make")
                .arg("-C")
                .arg(&tree.release.headers)
                .arg(format!("M={}", dir.display()))
                .arg(format!("KCFLAGS={kcflags}"))
                .arg("modules"),
        )
        .context("running make")?;
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = log.lines().collect();
        bail!(
            "building the module in {} failed:\n{}",
            dir.display(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        );
    }
    Ok(())
}

fn find_kos(dir: &Path, out: &mut HashMap<String, PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            find_kos(&p, out);
        } else if let Some(stem) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            out.insert(stem.replace('-', "_"), p);
        }
    }
}

pub fn build_objects(
    src: &Path,
    patches: &[FilePatch],
    objects: &[String],
    tree: &Tree,
    include: &Path,
    work: &Path,
    progress: &dyn Fn(&str),
) -> Result<OotObjects> {
    if !src.join("Kbuild").exists() && !src.join("Makefile").exists() {
        bail!(
            "{} has no Kbuild or Makefile: --module-src takes the module's source directory",
            src.display()
        );
    }
    let (orig_dir, patched_dir) = (work.join("oot-orig"), work.join("oot-patched"));
    copy_sources(src, &orig_dir)?;
    copy_sources(src, &patched_dir)?;
    for fp in patches {
        let path = patched_dir.join(&fp.path);
        let old = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(_) if fp.kind == FileKind::Created => String::new(),
            Err(e) => bail!(
                "{}: the patch changes this file, but {} has no such file ({e})",
                fp.path,
                src.display()
            ),
        };
        fs::write(&path, patchfile::apply(fp, &old)?.text)?;
    }
    progress(&format!(
        "building the out-of-tree module from {} before the patch",
        src.display()
    ));
    kbuild(tree, &orig_dir, KCFLAGS)?;
    progress("building it after the patch");
    kbuild(
        tree,
        &patched_dir,
        &format!("{KCFLAGS} -I{}", include.display()),
    )
    .context("the patched source does not compile")?;
    let mut kos = HashMap::new();
    find_kos(&orig_dir, &mut kos);
    let mut out = OotObjects {
        pairs: Vec::new(),
        patched: Vec::new(),
        modules: HashMap::new(),
    };
    for o in objects {
        let p = Path::new(o);
        let cmd = orig_dir
            .join(p.parent().unwrap_or(Path::new("")))
            .join(format!(
                ".{}.cmd",
                p.file_name().and_then(|s| s.to_str()).unwrap_or("")
            ));
        let text = fs::read_to_string(&cmd).with_context(|| {
            format!("{o} was not built by the module's Kbuild (is it part of the module?)")
        })?;
        let objname = objname_from_cmd(&text)
            .with_context(|| format!("{o} is not compiled as part of a module"))?;
        let ko = kos
            .get(&objname)
            .with_context(|| format!("the module build produced no {objname}.ko"))?;
        out.modules.entry(objname.clone()).or_insert(fs::read(ko)?);
        out.pairs.push((
            ObjectInfo {
                object: o.clone(),
                objname,
            },
            fs::read(orig_dir.join(o))?,
        ));
        out.patched.push(fs::read(patched_dir.join(o))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_products_are_not_copied() {
        for a in [
            "x.o",
            "x.ko",
            ".x.o.cmd",
            "x.mod.c",
            "modules.order",
            "Module.symvers",
        ] {
            assert!(is_artefact(a), "{a}");
        }
        for s in ["x.c", "x.h", "Kbuild", "Makefile", ".gitignore"] {
            assert!(!is_artefact(s), "{s}");
        }
    }
}
