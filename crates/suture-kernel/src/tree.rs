//! The prepared source tree of one release, cached outside the repository, and
//! compiling single translation units in it with kbuild.
//!
//! Layout under the cache root (`/var/cache/suture` unless `SUTURE_CACHE` says
//! otherwise):
//! ```text
//! debs/linux-source-SERIES_VERSION/   source tarballs of releases whose source
//!                                     package is not the installed one
//! updates/linux-source-SERIES_VERSION/src/  a later update's source, extracted for
//!                                     `suture triage` (`extracted` stamp written last)
//! RELEASE/src/                        the tree: extracted, configured, `make prepare`d
//! RELEASE/src/.suture-prepared        written last: the tree is complete
//! RELEASE/lock                        flock: one build per release at a time
//! RELEASE/running.json                the process group of the make (or tar) running
//!                                     in src/, while it runs: a build that died
//!                                     leaves it, and the next one stops that group
//!                                     before it uses the tree
//! RELEASE/work-PID/                   a build's work directory (suture-build), removed
//!                                     at its end, or by the next build when PID died;
//!                                     `kept-PID/` with --keep-work
//! RELEASE/journal.json                files a patch changed in src/, while it is applied
//! RELEASE/backup/                     their original contents
//! ```

use crate::patchfile::{self, FileKind, FilePatch};
use crate::release::Release;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Flags every object is compiled with, before and after the patch: one section
/// per function and per data object is what lets the differ work function by function.
pub const KCFLAGS: &str = "-ffunction-sections -fdata-sections";

const STAMP: &str = ".suture-prepared";

pub fn cache_root() -> PathBuf {
    std::env::var_os("SUTURE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/suture"))
}

#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct Stamp {
    release: String,
    source_version: String,
    cc_version_text: String,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Journal {
    /// (path in the tree, original existed)
    files: Vec<(String, bool)>,
}

/// A prepared tree, locked for the lifetime of this value.
pub struct Tree {
    pub release: Release,
    pub dir: PathBuf,
    base: PathBuf,
    _lock: fs::File,
    /// Object → the directory whose Makefile lists it, as kbuild answered
    /// [`Tree::applicability`]: such objects are compiled through that
    /// directory's Makefile.
    listed_in: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// A directory to put first in make's PATH: the compiler through a
    /// launcher ([`crate::launcher`]), when one is used.
    launcher_dir: Option<PathBuf>,
}

/// Where the tree's object for a source file ends up in the running kernel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectInfo {
    /// `fs/proc/cmdline.o`
    pub object: String,
    /// `vmlinux`, or the module name as the kernel spells it.
    pub objname: String,
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output();
    checked(cmd, out, what)
}

/// The command's status as a result, with the tail of its output on failure.
/// A command in the tree that failed: what it was doing, the compiler's
/// first error (the one that matters; later ones often follow from it) and
/// the end of its output.
#[derive(Debug)]
pub struct CommandFailed {
    pub what: String,
    pub status: std::process::ExitStatus,
    pub first_error: Option<String>,
    pub tail: String,
}

impl std::fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed ({}):\n{}", self.what, self.status, self.tail)
    }
}

impl std::error::Error for CommandFailed {}

/// The first `FILE:LINE:COL: error: ...` (or `fatal error`) line of gcc's
/// output.
pub fn first_compiler_error(output: &str) -> Option<String> {
    output
        .lines()
        .find(|l| l.contains(": error: ") || l.contains(": fatal error: "))
        .map(|l| l.trim().to_string())
}

fn checked(cmd: &Command, out: std::io::Result<Output>, what: &str) -> Result<()> {
    let out = out.with_context(|| format!("{what}: could not start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        if text.trim().is_empty() {
            text = String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        return Err(CommandFailed {
            what: what.to_string(),
            status: out.status,
            first_error: first_compiler_error(&text),
            tail,
        }
        .into());
    }
    Ok(())
}

fn jobs() -> String {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .to_string()
}

impl Tree {
    /// Locks the release's cache ([`lock_tree`]: what a build that died left
    /// running in the tree is stopped first), repairs a tree left patched by a
    /// crash, and prepares the tree if it is not there yet.
    pub fn open(release: Release, cache: &Path, progress: &dyn Fn(&str)) -> Result<Tree> {
        let base = cache.join(&release.name.release);
        fs::create_dir_all(&base).with_context(|| {
            format!(
                "creating the cache {} (run as root, or set SUTURE_CACHE)",
                base.display()
            )
        })?;
        let lock = lock_tree(&base, progress)?;
        let dir = base.join("src");
        let launcher_dir = setup_launcher(&base, &release.cc, progress)?;
        let tree = Tree {
            launcher_dir,
            release,
            dir,
            base,
            _lock: lock,
            listed_in: Default::default(),
        };
        tree.recover()?;
        tree.prepare(cache, progress)?;
        Ok(tree)
    }

    fn make(&self) -> Command {
        self.make_with("")
    }

    /// `make` with `extra` appended to KCFLAGS (e.g. `-I` of suture's own header).
    fn make_with(&self, extra: &str) -> Command {
        let mut c = Command::new("make");
        if let Some(d) = &self.launcher_dir {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![d.clone()];
            dirs.extend(std::env::split_paths(&path));
            if let Ok(p) = std::env::join_paths(dirs) {
                c.env("PATH", p);
            }
        }
        c.arg("-C")
            .arg(&self.dir)
            .arg(format!("-j{}", jobs()))
            .arg(format!("CC={}", self.release.cc))
            // Debian builds with KERNELRELEASE on the command line (its
            // kernel.release file says 6.1.192, its UTS_RELEASE 6.1.0-56-amd64);
            // doing the same reproduces UTS_RELEASE and so every object using it.
            .arg(format!("KERNELRELEASE={}", self.release.name.release))
            .arg(format!(
                "KCFLAGS={KCFLAGS}{}{extra}",
                if extra.is_empty() { "" } else { " " }
            ));
        c
    }

    fn wanted_stamp(&self) -> Stamp {
        Stamp {
            release: self.release.name.release.clone(),
            source_version: self.release.source_version.clone(),
            cc_version_text: self.release.cc_version_text.clone(),
        }
    }

    fn prepare(&self, cache: &Path, progress: &dyn Fn(&str)) -> Result<()> {
        let stamp_path = self.dir.join(STAMP);
        if let Ok(s) = fs::read(&stamp_path) {
            if serde_json::from_slice::<Stamp>(&s).ok() == Some(self.wanted_stamp()) {
                return Ok(());
            }
            progress("the cached tree is for another build of this release: preparing it again");
        }
        let r = &self.release;
        which(&r.cc).with_context(|| {
            format!(
                "{} was built with `{}`, which is not installed: apt-get install {}",
                r.name.release, r.cc_version_text, r.cc
            )
        })?;
        let tarball = source_tarball(r, cache, progress)?;
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing the stale tree {}", self.dir.display()))?;
        }
        fs::create_dir_all(&self.dir)?;
        progress(&format!("extracting {}", tarball.display()));
        let mut tar = Command::new("tar");
        // Debian's tarballs are multi-block xz: xz decompresses them on every core.
        if tarball.extension().is_some_and(|e| e == "xz") {
            tar.arg("--use-compress-program=xz -T0");
        }
        tar.arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&self.dir)
            .arg("--strip-components=1");
        self.run(&mut tar, "extracting the kernel source")?;
        fs::copy(&r.config, self.dir.join(".config"))
            .with_context(|| format!("copying {}", r.config.display()))?;
        progress("configuring the tree with the release's config");
        self.run(
            self.make().arg("-s").arg("olddefconfig"),
            "make olddefconfig",
        )?;
        let cfg = fs::read_to_string(self.dir.join(".config"))?;
        let cc_text =
            crate::release::config_value(&cfg, "CONFIG_CC_VERSION_TEXT").unwrap_or_default();
        if cc_text != r.cc_version_text {
            bail!(
                "the compiler here is `{cc_text}`, but {} was built with `{}`: objects would not match the running kernel.\n\
                 Install the same compiler version (apt-get install {}) and try again.",
                r.name.release, r.cc_version_text, r.cc
            );
        }
        progress("make prepare (about 15 s)");
        // The entry-size probe rides along: one kbuild start-up instead of two.
        self.write_probe()?;
        let prepared = self.run(self.make().arg("prepare").arg(PROBE_OBJECT), "make prepare");
        if prepared.is_err() {
            let _ = fs::remove_dir_all(self.dir.join("suture_probe"));
        }
        prepared?;
        self.collect_probe(Ok(()))?;
        let ours =
            fs::read_to_string(self.dir.join("include/generated/utsrelease.h")).unwrap_or_default();
        let theirs = fs::read_to_string(r.headers.join("include/generated/utsrelease.h"))
            .unwrap_or_default();
        if ours.trim() != theirs.trim() {
            bail!(
                "the prepared tree's UTS_RELEASE ({}) differs from the release's headers ({}): the source package does not match this release",
                ours.trim(),
                theirs.trim()
            );
        }
        let mut f = fs::File::create(&stamp_path)?;
        f.write_all(&serde_json::to_vec_pretty(&self.wanted_stamp())?)?;
        f.sync_all()?;
        Ok(())
    }

    /// The size of one entry of each special section, as this release's headers
    /// define the structures: measured once by compiling a probe object in the
    /// tree, then cached beside it.
    pub fn entry_sizes(&self) -> Result<BTreeMap<String, usize>> {
        if let Ok(b) = fs::read(self.dir.join(SIZES_CACHE)) {
            if let Ok(m) = serde_json::from_slice(&b) {
                return Ok(m);
            }
        }
        self.write_probe()?;
        let r = self.compile(&[PROBE_OBJECT.to_string()]);
        self.collect_probe(r)
    }

    fn write_probe(&self) -> Result<()> {
        let probe = self.dir.join("suture_probe");
        fs::create_dir_all(&probe)?;
        fs::write(probe.join("Makefile"), "obj-y := sizes.o\n")?;
        fs::write(probe.join("sizes.c"), SIZES_PROBE)?;
        Ok(())
    }

    fn collect_probe(&self, compiled: Result<()>) -> Result<BTreeMap<String, usize>> {
        let probe = self.dir.join("suture_probe");
        let obj = fs::read(probe.join("sizes.o"));
        let _ = fs::remove_dir_all(&probe);
        compiled.context("measuring special-section entry sizes")?;
        let sizes = symbol_sizes(&obj?, "suture_size_")?;
        write_atomic(
            &self.dir.join(SIZES_CACHE),
            &serde_json::to_vec_pretty(&sizes)?,
        )?;
        Ok(sizes)
    }

    /// The unpatched objects, compiled once and then kept in the cache keyed by
    /// the source file's contents: a warm build compiles only the patched side.
    /// (The tree's headers and config are fixed by the stamp, and header
    /// changes are refused, so the source file decides the object.)
    pub fn original_objects(&self, objects: &[String]) -> Result<Vec<(ObjectInfo, Vec<u8>)>> {
        self.original_objects_with(objects, &|_| {})
    }

    /// [`Tree::original_objects`], saying how far the compile got when there
    /// are many ([`Tree::compile_batched`]).
    pub fn original_objects_with(
        &self,
        objects: &[String],
        progress: &dyn Fn(&str),
    ) -> Result<Vec<(ObjectInfo, Vec<u8>)>> {
        use sha2::{Digest, Sha256};
        let store = self.base.join("objs");
        let key_of = |o: &str| -> Result<String> {
            let src = self.dir.join(o).with_extension("c");
            let bytes = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            let mut h = Sha256::new();
            h.update(KCFLAGS.as_bytes());
            h.update([0]);
            h.update(&bytes);
            Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
        };
        let cached = |o: &str, key: &str| -> Option<(ObjectInfo, Vec<u8>)> {
            let dir = store.join(o);
            if fs::read_to_string(dir.join("key")).ok()? != key {
                return None;
            }
            let objname = fs::read_to_string(dir.join("objname")).ok()?;
            let obj = fs::read(dir.join("object.o")).ok()?;
            Some((
                ObjectInfo {
                    object: o.to_string(),
                    objname,
                },
                obj,
            ))
        };
        let keys = objects
            .iter()
            .map(|o| key_of(o))
            .collect::<Result<Vec<_>>>()?;
        let missing: Vec<String> = objects
            .iter()
            .zip(&keys)
            .filter(|(o, k)| cached(o, k).is_none())
            .map(|(o, _)| o.clone())
            .collect();
        if !missing.is_empty() {
            self.compile_batched(&missing, "", "original", progress)?;
            for o in &missing {
                let info = self.object_info(o)?;
                let obj = fs::read(self.object_path(o)).with_context(|| {
                    format!("kbuild did not produce {o}: is it part of this kernel's config?")
                })?;
                let dir = store.join(o);
                fs::create_dir_all(&dir)?;
                write_atomic(&dir.join("object.o"), &obj)?;
                write_atomic(&dir.join("objname"), info.objname.as_bytes())?;
                // The key goes last: it is what makes the entry valid.
                write_atomic(&dir.join("key"), key_of(o)?.as_bytes())?;
            }
        }
        objects
            .iter()
            .zip(&keys)
            .map(|(o, k)| {
                cached(o, k).with_context(|| format!("the cached original of {o} vanished"))
            })
            .collect()
    }

    /// Compiles `objects` (paths like `fs/proc/cmdline.o`) with kbuild.
    pub fn compile(&self, objects: &[String]) -> Result<()> {
        self.compile_objects(self.make(), objects)
    }

    /// Compiles many objects in a few batches, each one kbuild run with `-jN`,
    /// saying `compiled N of M units (what)` after each: a header included by
    /// thousands of units takes minutes, and the batches are few enough (at
    /// most about 20) that kbuild's start-up does not add up.
    pub fn compile_batched(
        &self,
        objects: &[String],
        extra_kcflags: &str,
        what: &str,
        progress: &dyn Fn(&str),
    ) -> Result<()> {
        let batch = (objects.len().div_ceil(20)).max(16);
        if objects.len() <= batch {
            return if extra_kcflags.is_empty() {
                self.compile(objects)
            } else {
                self.compile_with(objects, extra_kcflags)
            };
        }
        let mut done = 0;
        for chunk in objects.chunks(batch) {
            if extra_kcflags.is_empty() {
                self.compile(chunk)?;
            } else {
                self.compile_with(chunk, extra_kcflags)?;
            }
            done += chunk.len();
            progress(&format!(
                "compiled {done} of {} units ({what})",
                objects.len()
            ));
        }
        Ok(())
    }

    fn compile_objects(&self, mut make: Command, objects: &[String]) -> Result<()> {
        // `.tmp_NAME.o` of an interrupted `ld -r` (single-object modules).
        let mut dirs: Vec<PathBuf> = objects
            .iter()
            .filter_map(|o| Path::new(o).parent().map(|p| self.dir.join(p)))
            .collect();
        dirs.sort();
        dirs.dedup();
        for d in &dirs {
            remove_kbuild_temporaries(d);
        }
        let listed = self
            .listed_in
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let groups: Option<Vec<(String, String)>> = objects
            .iter()
            .map(|o| listed.get(o).map(|d| (o.clone(), d.clone())))
            .collect();
        // The scratch makefile lives until make has run.
        let _scratch;
        match groups {
            Some(g) => {
                let scratch = tempfile::Builder::new()
                    .prefix("suture-kbuild.")
                    .tempdir()?;
                let top = scratch.path().join("top.mk");
                fs::write(&top, crate::kbuild::TOP_MK)?;
                make.arg("--no-print-directory")
                    .arg("-f")
                    .arg("Makefile")
                    .arg("-f")
                    .arg(&top)
                    .arg(format!(
                        "SUTURE_GROUPS={}",
                        crate::kbuild::compile_groups(&g)
                    ))
                    .arg("suture-compile")
                    .env("KBUILD_MODULES", "1")
                    .env("KBUILD_BUILTIN", "1");
                _scratch = scratch;
            }
            // Not asked of kbuild (a direct caller): its single-target path.
            None => {
                make.args(objects);
            }
        }
        self.run(&mut make, &format!("compiling {}", objects.join(" ")))
    }

    /// Runs a command that works in the tree (make, tar) as
    /// [`run_in_group`] does: it does not outlive the lock.
    fn run(&self, cmd: &mut Command, what: &str) -> Result<()> {
        let out = run_in_group(&self.base, cmd);
        checked(cmd, out, what)
    }

    /// Runs a command under this tree's lock ([`run_in_group`]), for a
    /// compiler working elsewhere on the tree's behalf (an out-of-tree
    /// module's kbuild in the build's work directory).
    pub fn run_locked(&self, cmd: &mut Command) -> std::io::Result<Output> {
        run_in_group(&self.base, cmd)
    }

    /// make for asking kbuild (no -j: the sub-makes are sequential anyway).
    fn query_make(&self) -> Command {
        let mut make = Command::new("make");
        make.arg("-C")
            .arg(&self.dir)
            .arg(format!("CC={}", self.release.cc))
            .arg(format!("KERNELRELEASE={}", self.release.name.release));
        make
    }

    /// Every object the release's configuration builds, with the directory
    /// whose Makefile lists it: kbuild's walk of the whole tree
    /// ([`crate::kbuild::walk_units`]), done once per prepared tree and kept
    /// in `RELEASE/units.json` beside it.
    pub fn all_units(&self, progress: &dyn Fn(&str)) -> Result<Vec<(String, String)>> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Cached {
            stamp: Stamp,
            units: Vec<(String, String)>,
        }
        let path = self.base.join("units.json");
        let cached = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Cached>(&b).ok())
            .filter(|c| c.stamp == self.wanted_stamp())
            // The cache is input like any other: only paths inside the tree.
            .filter(|c| {
                c.units.iter().all(|(o, d)| {
                    crate::kbuild::is_tree_path(o) && (d == "." || crate::kbuild::is_tree_path(d))
                })
            });
        let units = match cached {
            Some(c) => c.units,
            None => {
                progress(
                    "asking kbuild for every unit the configuration builds (once per release)",
                );
                let mut rounds = 0;
                let units = crate::kbuild::walk_units(|dirs| {
                    rounds += 1;
                    crate::kbuild::query(&self.dir, self.query_make(), dirs)
                })?;
                progress(&format!(
                    "{} units in {rounds} rounds of directories",
                    units.len()
                ));
                let c = Cached {
                    stamp: self.wanted_stamp(),
                    units,
                };
                write_atomic(&path, &serde_json::to_vec(&c)?)?;
                c.units
            }
        };
        let mut listed = self.listed_in.lock().unwrap_or_else(|e| e.into_inner());
        for (o, d) in &units {
            listed.entry(o.clone()).or_insert_with(|| d.clone());
        }
        Ok(units)
    }

    /// The include graph of every unit the configuration builds
    /// ([`crate::includes::IncludeGraph`]), scanned once per prepared tree and
    /// kept in `RELEASE/includes.json`.
    pub fn include_graph(&self, progress: &dyn Fn(&str)) -> Result<crate::includes::IncludeGraph> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Cached {
            stamp: Stamp,
            graph: crate::includes::IncludeGraph,
        }
        let path = self.base.join("includes.json");
        if let Some(c) = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Cached>(&b).ok())
            .filter(|c| c.stamp == self.wanted_stamp() && c.graph.is_well_formed())
        {
            return Ok(c.graph);
        }
        let units: Vec<String> = self
            .all_units(progress)?
            .into_iter()
            .map(|(o, _)| format!("{}.c", o.strip_suffix(".o").unwrap_or(&o)))
            .filter(|c| self.dir.join(c).is_file())
            .collect();
        progress(&format!(
            "scanning the includes of {} units (once per release)",
            units.len()
        ));
        let graph = crate::includes::IncludeGraph::scan(&self.dir, &units);
        progress(&format!("include graph: {} files", graph.file_count()));
        let c = Cached {
            stamp: self.wanted_stamp(),
            graph,
        };
        write_atomic(&path, &serde_json::to_vec(&c)?)?;
        Ok(c.graph)
    }

    /// Every file of the release's source package (tree paths), as its
    /// tarball lists them: what tells a source file from one kbuild
    /// generated (`nf_nat_snmp_basic.asn1.c`). Listed once per prepared tree
    /// and kept in `RELEASE/source-files.json`.
    pub fn source_files(
        &self,
        cache: &Path,
        progress: &dyn Fn(&str),
    ) -> Result<std::collections::HashSet<String>> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Cached {
            stamp: Stamp,
            files: Vec<String>,
        }
        let path = self.base.join("source-files.json");
        if let Some(c) = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Cached>(&b).ok())
            .filter(|c| c.stamp == self.wanted_stamp())
        {
            return Ok(c.files.into_iter().collect());
        }
        let tarball = source_tarball(&self.release, cache, progress)?;
        progress(&format!("listing {} (once per release)", tarball.display()));
        let mut tar = Command::new("tar");
        tar.arg("--use-compress-program=xz -T0")
            .arg("-tf")
            .arg(&tarball);
        let out = run_in_group(&self.base, &mut tar)
            .with_context(|| format!("listing {}", tarball.display()))?;
        if !out.status.success() {
            bail!("tar -tf {} failed ({})", tarball.display(), out.status);
        }
        let files: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.ends_with('/'))
            .filter_map(|l| l.split_once('/').map(|(_, p)| p.to_string()))
            .filter(|p| !p.is_empty())
            .collect();
        let c = Cached {
            stamp: self.wanted_stamp(),
            files,
        };
        write_atomic(&path, &serde_json::to_vec(&c)?)?;
        Ok(c.files.into_iter().collect())
    }

    /// Whether and into what the release's configuration builds each object
    /// (`fs/proc/cmdline.o`): kbuild's own answer ([`crate::kbuild`]).
    pub fn applicability(
        &self,
        objects: &[String],
    ) -> Result<std::collections::HashMap<String, crate::kbuild::Applicability>> {
        let config = fs::read_to_string(self.dir.join(".config"))
            .with_context(|| format!("reading {}/.config", self.dir.display()))?;
        let a = crate::kbuild::applicability(&self.dir, self.query_make(), &config, objects)?;
        let mut listed = self.listed_in.lock().unwrap_or_else(|e| e.into_inner());
        for (o, v) in &a {
            if let crate::kbuild::Applicability::Built { dir, .. } = v {
                listed.insert(o.clone(), dir.clone());
            }
        }
        Ok(a)
    }

    /// [`Tree::compile`] with extra compiler flags (the patched side gets `-I`
    /// of the directory holding `suture.h`; flags that change code would make
    /// the two sides differ and must not be passed here).
    pub fn compile_with(&self, objects: &[String], extra_kcflags: &str) -> Result<()> {
        let extra = self.stable_includes(extra_kcflags)?;
        self.compile_objects(self.make_with(&extra), objects)
    }

    /// KCFLAGS is part of the command line of what `make prepare` built
    /// (`kernel/bounds.s`, `asm-offsets.s`, modpost...), so kbuild rebuilds
    /// those whenever it changes: an `-I` of a per-build directory cost every
    /// warm build seconds (more on 6.12, where objtool and resolve_btfids are
    /// checked too). The headers of a single `-I` directory are copied to a
    /// fixed place in the release's cache instead, which keeps the flags equal
    /// from one build to the next. Other flags pass through unchanged.
    fn stable_includes(&self, extra: &str) -> Result<String> {
        let dirs: Vec<&str> = extra
            .split_whitespace()
            .filter_map(|f| f.strip_prefix("-I"))
            .collect();
        let [dir] = dirs.as_slice() else {
            return Ok(extra.to_string());
        };
        let stable = self.base.join("include");
        let _ = fs::remove_dir_all(&stable);
        fs::create_dir_all(&stable)?;
        for e in fs::read_dir(dir).with_context(|| format!("reading {dir}"))? {
            let e = e?;
            if e.file_type()?.is_file() {
                fs::copy(e.path(), stable.join(e.file_name()))?;
            }
        }
        Ok(extra
            .split_whitespace()
            .map(|f| {
                if f.starts_with("-I") {
                    format!("-I{}", stable.display())
                } else {
                    f.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// What kbuild decided about an object it compiled: part of vmlinux or of a module.
    pub fn object_info(&self, object: &str) -> Result<ObjectInfo> {
        let p = Path::new(object);
        let cmd = self
            .dir
            .join(p.parent().unwrap_or(Path::new("")))
            .join(format!(
                ".{}.cmd",
                p.file_name().and_then(|s| s.to_str()).unwrap_or("")
            ));
        let text = fs::read_to_string(&cmd)
            .with_context(|| format!("kbuild left no command file {}", cmd.display()))?;
        Ok(ObjectInfo {
            object: object.to_string(),
            objname: objname_from_cmd(&text).unwrap_or_else(|| "vmlinux".to_string()),
        })
    }

    /// Fails with [`NotApplicable`] ([`NotApplicableKind::NoSuchFile`]) when
    /// the patches change a file this release's source does not have: checked
    /// before anything is compiled, so the build says so instead of failing
    /// to read the file.
    pub fn check_files(&self, patches: &[FilePatch]) -> Result<()> {
        let missing = missing_files(patches, |p| fs::symlink_metadata(self.dir.join(p)).is_ok());
        if missing.is_empty() {
            return Ok(());
        }
        Err(NotApplicable::no_such_file(&self.release.name.release, &missing).into())
    }

    pub fn object_path(&self, object: &str) -> PathBuf {
        self.dir.join(object)
    }

    /// Applies `patches` to the tree. The returned guard puts the original files
    /// back when dropped; a crash in between is repaired by the next `open`.
    pub fn apply(&self, patches: &[FilePatch]) -> Result<Applied<'_>> {
        // Everything is checked in memory first: a patch that does not apply
        // leaves the tree untouched. Several sections for one file (several
        // patch files) apply in order, each on the previous one's result.
        let release = self.release.name.release.clone();
        let not_applicable = |detail: String| NotApplicable {
            release: release.clone(),
            detail,
            kind: NotApplicableKind::DoesNotApply,
        };
        self.check_files(patches)?;
        let results = patchfile::apply_in_order::<anyhow::Error>(patches, |fp| {
            no_symlink_below(&self.dir, &fp.path)?;
            match fs::read(self.dir.join(&fp.path)) {
                Ok(b) => {
                    Ok(Some(String::from_utf8(b).with_context(|| {
                        format!("{} is not UTF-8 text", fp.path)
                    })?))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => match fp.kind {
                    FileKind::Created => Ok(None),
                    _ => Err(
                        NotApplicable::no_such_file(&release, std::slice::from_ref(&fp.path))
                            .into(),
                    ),
                },
                Err(e) => Err(anyhow::Error::new(e)
                    .context(format!("reading {}", self.dir.join(&fp.path).display()))),
            }
        })
        .map_err(|e| match e.downcast::<patchfile::PatchError>() {
            Ok(pe) => not_applicable(pe.to_string()).into(),
            Err(e) => e,
        })?;
        let backup = self.base.join("backup");
        let _ = fs::remove_dir_all(&backup);
        fs::create_dir_all(&backup)?;
        let mut journal = Journal::default();
        for r in &results {
            if r.existed {
                let b = backup.join(&r.path);
                fs::create_dir_all(b.parent().unwrap())?;
                fs::copy(self.dir.join(&r.path), &b)?;
            }
            journal.files.push((r.path.clone(), r.existed));
        }
        write_atomic(
            &self.base.join("journal.json"),
            &serde_json::to_vec(&journal)?,
        )?;
        let guard = Applied {
            tree: self,
            notes: results
                .iter()
                .flat_map(|r| r.notes.iter().cloned())
                .collect(),
        };
        for r in &results {
            let path = self.dir.join(&r.path);
            match &r.text {
                None => {
                    if path.exists() {
                        fs::remove_file(&path)?;
                    }
                }
                Some(text) => write_nofollow(&path, text.as_bytes())?,
            }
        }
        Ok(guard)
    }

    fn recover(&self) -> Result<()> {
        let jp = self.base.join("journal.json");
        let Ok(bytes) = fs::read(&jp) else {
            return Ok(());
        };
        let journal: Journal = serde_json::from_slice(&bytes).unwrap_or_default();
        for (rel, existed) in &journal.files {
            let dst = self.dir.join(rel);
            // Never restore through a link planted while the patch was applied.
            if fs::symlink_metadata(&dst).is_ok_and(|m| m.file_type().is_symlink()) {
                fs::remove_file(&dst)?;
            }
            if *existed {
                fs::copy(self.base.join("backup").join(rel), &dst)
                    .with_context(|| format!("restoring {rel} after an interrupted build"))?;
            } else {
                let _ = fs::remove_file(&dst);
            }
        }
        fs::remove_file(&jp)?;
        Ok(())
    }
}

/// The patch does not apply to this release's source: a hunk's context is not
/// there, or a file it changes does not exist. A build for several releases
/// reports this per release ("not applicable") rather than as a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotApplicable {
    pub release: String,
    pub detail: String,
    pub kind: NotApplicableKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotApplicableKind {
    /// A hunk does not apply (its context is not there).
    DoesNotApply,
    /// The patch changes a file this release's source does not have: like no
    /// change, nothing to build for this release (`suture build` exit 3).
    NoSuchFile,
}

impl NotApplicable {
    /// `fs/proc/x.c: 6.1.0-57-amd64 has no such file (...)`, one line per file.
    pub fn no_such_file(release: &str, files: &[String]) -> NotApplicable {
        let detail = files
            .iter()
            .map(|f| format!("{f}: {release} has no such file (the patch changes a file this release's source does not have)"))
            .collect::<Vec<_>>()
            .join("\n");
        NotApplicable {
            release: release.to_string(),
            detail,
            kind: NotApplicableKind::NoSuchFile,
        }
    }
}

impl std::fmt::Display for NotApplicable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for NotApplicable {}

/// The files `patches` change (or delete) that do not exist, as the patches
/// see the tree: the first section of each path reads the tree (`exists`),
/// later ones the earlier sections' result, so a file an earlier section
/// creates (`--- /dev/null`) is not missing. Pure.
pub fn missing_files(patches: &[FilePatch], exists: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut missing = Vec::new();
    for fp in patches {
        if seen.insert(fp.path.as_str()) && fp.kind != FileKind::Created && !exists(&fp.path) {
            missing.push(fp.path.clone());
        }
    }
    missing
}

/// The patch applied to the tree; dropping it restores the original sources.
pub struct Applied<'a> {
    tree: &'a Tree,
    /// Hunks placed away from where their header said (`x.c: hunk 2 applied
    /// 13 lines later`), for the build's report.
    pub notes: Vec<String>,
}

impl Applied<'_> {
    pub fn restore(self) -> Result<()> {
        let r = self.tree.recover();
        std::mem::forget(self);
        r
    }
}

impl Drop for Applied<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.tree.recover() {
            eprintln!("warning: could not restore the source tree: {e:#}");
        }
    }
}

/// `vmlinux` or the module name from a kbuild `.o.cmd` file: kbuild compiles
/// module objects with `-DMODULE` and names the module in `KBUILD_MODNAME`.
pub fn objname_from_cmd(cmd: &str) -> Option<String> {
    let first = cmd.lines().next()?;
    if !first.split_whitespace().any(|w| w == "-DMODULE") {
        return None;
    }
    let at = first.find("-DKBUILD_MODNAME=")? + "-DKBUILD_MODNAME=".len();
    let rest = &first[at..];
    let name: String = rest
        .trim_start_matches(['\'', '"', '\\'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    (!name.is_empty()).then(|| name.replace('-', "_"))
}

fn which(cmd: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("`{cmd}` not found on PATH"))
}

/// Writes `base/launcher/CC` when a compiler launcher is chosen
/// ([`crate::launcher::choose`]) and returns that directory; removes it
/// otherwise.
fn setup_launcher(base: &Path, cc: &str, progress: &dyn Fn(&str)) -> Result<Option<PathBuf>> {
    let dir = base.join("launcher");
    let setting = std::env::var(crate::launcher::ENV).ok();
    let chosen = crate::launcher::choose(setting.as_deref(), |p| which(p).ok())?;
    let _ = fs::remove_dir_all(&dir);
    let Some(launcher) = chosen else {
        return Ok(None);
    };
    let compiler = which(cc)?;
    fs::create_dir_all(&dir)?;
    let script = dir.join(cc);
    write_atomic(
        &script,
        crate::launcher::wrapper(&launcher, &compiler)?.as_bytes(),
    )?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    progress(&format!("compiler launcher: {}", launcher.display()));
    Ok(Some(dir))
}

/// Takes the release's lock (`base/lock`), waiting for another build of it,
/// then stops whatever a build that died left running in the tree (its
/// make's process group, recorded in `base/running.json`): the lock covers
/// the compiler as well as the process that started it. kbuild's
/// temporaries an interrupted make left at the top of the tree go too.
pub fn lock_tree(base: &Path, progress: &dyn Fn(&str)) -> Result<fs::File> {
    let path = base.join("lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        progress("waiting for another suture build of this release to finish");
        // SAFETY: as above.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("could not lock {}", path.display());
        }
    }
    stop_leftover(base, progress)?;
    // try-run's `.tmp_PID` directories.
    remove_kbuild_temporaries(&base.join("src"));
    Ok(lock)
}

/// Where the process group of the command running in the tree is recorded.
const RUNNING: &str = "running.json";
/// Set in that command's environment (and so in every process it starts) to
/// a value unique to the run: what tells a recorded group is still ours.
const TOKEN_ENV: &str = "SUTURE_BUILD_TOKEN";

#[derive(serde::Serialize, serde::Deserialize)]
struct Running {
    pgid: i32,
    token: String,
}

/// Runs `cmd` (make, tar: anything that works in the tree of `base`) so that
/// it does not outlive the lock: in a process group of its own, recorded in
/// `base/running.json` while it runs, with a token in its environment; it gets
/// SIGINT when suture dies (as on Ctrl-C: make removes the targets it was
/// building), and a group a dead build left behind is stopped by the next
/// build when it takes the lock ([`lock_tree`]). Stdout and stderr are
/// captured, stdin is null.
pub fn run_in_group(base: &Path, cmd: &mut Command) -> std::io::Result<Output> {
    use std::os::unix::process::CommandExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let token = format!(
        "{}-{nanos}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    cmd.env(TOKEN_ENV, &token)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only makes async-signal-safe
    // calls (prctl, getppid) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGINT as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // suture died before the prctl: no signal will come.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pgid = child.id() as i32;
    let record = base.join(RUNNING);
    let rec = serde_json::to_vec(&Running {
        pgid,
        token: token.clone(),
    })
    .map_err(std::io::Error::other);
    if let Err(e) = rec.and_then(|r| write_atomic(&record, &r).map_err(std::io::Error::other)) {
        // SAFETY: the group is the child's, which has not been waited for.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait_with_output();
        return Err(e);
    }
    let out = child.wait_with_output();
    // Nothing of the group outlives the call (normally nothing is left).
    let stopped = stop_group(pgid, &token, &|_| {});
    if stopped.is_ok() {
        let _ = fs::remove_file(&record);
    }
    out
}

/// Stops the group recorded in `base/running.json`, if a process of it is
/// still running, and removes the record.
fn stop_leftover(base: &Path, progress: &dyn Fn(&str)) -> Result<()> {
    let record = base.join(RUNNING);
    let Ok(bytes) = fs::read(&record) else {
        return Ok(());
    };
    if let Ok(r) = serde_json::from_slice::<Running>(&bytes) {
        stop_group(r.pgid, &r.token, progress)?;
    }
    fs::remove_file(&record).with_context(|| format!("removing {}", record.display()))?;
    Ok(())
}

/// The processes of group `pgid` that are ours (`token` in their
/// environment) and not yet dead (zombies do not count: they touch nothing).
fn group_members(pgid: i32, token: &str) -> Vec<i32> {
    let want = format!("{TOKEN_ENV}={token}");
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `PID (COMM) STATE PPID PGRP ...`; COMM may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 3 || f[2].parse::<i32>().ok() != Some(pgid) || matches!(f[0], "Z" | "X") {
            continue;
        }
        let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// Stops what is left of our process group `pgid`: SIGINT first (make then
/// removes the targets it was building, as on Ctrl-C), SIGKILL after a grace
/// period; returns once none of it runs. A group none of whose processes
/// carries `token` is someone else's (the number was reused) and is left
/// alone. Whether anything was stopped.
fn stop_group(pgid: i32, token: &str, progress: &dyn Fn(&str)) -> Result<bool> {
    // SAFETY: signal 0 only checks that the group exists.
    if pgid <= 1 || unsafe { libc::kill(-pgid, 0) } != 0 || group_members(pgid, token).is_empty() {
        return Ok(false);
    }
    progress(&format!(
        "stopping what an interrupted build left running in the tree (process group {pgid})"
    ));
    let gone = |within: std::time::Duration| {
        let until = std::time::Instant::now() + within;
        loop {
            if group_members(pgid, token).is_empty() {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    for (sig, within) in [(libc::SIGINT, 10), (libc::SIGKILL, 30)] {
        // SAFETY: a process of the group carries our token, so the group is
        // ours (its number cannot be reused while a member lives).
        unsafe { libc::kill(-pgid, sig) };
        if gone(std::time::Duration::from_secs(within)) {
            return Ok(true);
        }
    }
    bail!("process group {pgid}, left running in the tree by an interrupted build, does not exit")
}

/// Removes kbuild's temporaries named `.tmp_*` directly in `dir` (as `make
/// clean` does): try-run's `.tmp_PID` directories (scripts/Makefile.compiler)
/// at the top of the tree, `.tmp_NAME.o` of `ld -r` beside objects. kbuild
/// removes them itself unless it is interrupted. The number removed.
pub fn remove_kbuild_temporaries(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for e in rd.flatten() {
        if !e.file_name().as_encoded_bytes().starts_with(b".tmp_") {
            continue;
        }
        let p = e.path();
        let removed = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
            Ok(_) => fs::remove_file(&p),
            Err(e) => Err(e),
        };
        n += usize::from(removed.is_ok());
    }
    n
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A random name created with O_EXCL (never a planted file or symlink),
    // removed unless the rename happens.
    let mut tmp = tempfile::Builder::new()
        .prefix(".suture-cache.")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Refuses `rel` under `root` when any existing component of it is a symlink:
/// the cached tree is written as root, and a planted link would carry the
/// patched text (or a restored backup) to a file outside the tree.
pub fn no_symlink_below(root: &Path, rel: &str) -> Result<()> {
    let mut p = root.to_path_buf();
    for c in Path::new(rel).components() {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => bail!(
                "{rel}: {} in the source tree is a symbolic link; refusing to write through it (remove the cached tree {} to start afresh)",
                p.display(),
                root.display()
            ),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// Writes a tree file in place without following a symlink at its name.
fn write_nofollow(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// The source tarball of the release's own source package version: the installed
/// `linux-source-SERIES` if its version matches, else downloaded with apt.
fn source_tarball(r: &Release, cache: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    source_tarball_of(&r.source_package(), &r.source_version, cache, progress)
}

/// The tarball of `pkg` (`linux-source-6.1`) at `version`: the installed one
/// if its version matches, else downloaded once with `apt-get download` into
/// `cache/debs/PKG_VERSION/` and kept there.
pub fn source_tarball_of(
    pkg: &str,
    version: &str,
    cache: &Path,
    progress: &dyn Fn(&str),
) -> Result<PathBuf> {
    check_package_word(pkg)?;
    check_package_word(version)?;
    let file = format!("{pkg}.tar.xz");
    if let Ok(v) = crate::release::package_version(pkg) {
        if v == version {
            let p = PathBuf::from("/usr/src").join(&file);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    let dir = cache.join("debs").join(format!("{pkg}_{version}"));
    let tarball = dir.join("usr/src").join(&file);
    if tarball.exists() {
        return Ok(tarball);
    }
    fs::create_dir_all(&dir)?;
    progress(&format!(
        "downloading {pkg}={version} (the installed {pkg} is another version)"
    ));
    run(
        Command::new("apt-get")
            .current_dir(&dir)
            .arg("download")
            .arg(format!("{pkg}={version}")),
        &format!(
            "apt-get download {pkg}={version} (is it still in the archive? `apt-cache madison {pkg}` lists what is)"
        ),
    )?;
    let deb = fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| anyhow::anyhow!("apt-get download left no .deb in {}", dir.display()))?;
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir),
        "unpacking the source package",
    )?;
    if !tarball.exists() {
        bail!("{} does not contain usr/src/{file}", deb.display());
    }
    Ok(tarball)
}

/// A package name or version as it goes on apt's command line and into a
/// cache path: Debian's characters only, so it is one word and no path.
fn check_package_word(w: &str) -> Result<()> {
    let ok = !w.is_empty()
        && w.len() <= 128
        && !w.starts_with(['-', '.'])
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.~:".contains(&b));
    if !ok {
        bail!("{w:?} is not a Debian package name or version");
    }
    Ok(())
}

/// The source of `pkg` at `version` (a later update of the release's
/// series), extracted once under `cache/updates/PKG_VERSION/src` and kept:
/// what `suture triage` compares a release's tree with. Locked like a tree;
/// a stamp written last says the extraction is complete.
pub fn extracted_source(
    pkg: &str,
    version: &str,
    cache: &Path,
    progress: &dyn Fn(&str),
) -> Result<PathBuf> {
    check_package_word(pkg)?;
    check_package_word(version)?;
    let base = cache.join("updates").join(format!("{pkg}_{version}"));
    fs::create_dir_all(&base).with_context(|| {
        format!(
            "creating {} (run as root, or set SUTURE_CACHE)",
            base.display()
        )
    })?;
    let _lock = lock_tree(&base, progress)?;
    let src = base.join("src");
    let stamp = base.join("extracted");
    if stamp.is_file() && src.is_dir() {
        return Ok(src);
    }
    let tarball = source_tarball_of(pkg, version, cache, progress)?;
    let _ = fs::remove_file(&stamp);
    if src.exists() {
        fs::remove_dir_all(&src)
            .with_context(|| format!("removing the partial {}", src.display()))?;
    }
    fs::create_dir_all(&src)?;
    progress(&format!("extracting {}", tarball.display()));
    let mut tar = Command::new("tar");
    tar.arg("--use-compress-program=xz -T0")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&src)
        .arg("--strip-components=1");
    let out = run_in_group(&base, &mut tar);
    checked(&tar, out, "extracting the update's source")?;
    write_atomic(&stamp, version.as_bytes())?;
    Ok(src)
}

const PROBE_OBJECT: &str = "suture_probe/sizes.o";
const SIZES_CACHE: &str = ".suture-entry-sizes.json";

/// Each array is as large as one entry of the section it is named after
/// (`suture_size_<section>`, with `__` and `.` prefixes restored by `section_of`).
const SIZES_PROBE: &str = r#"// Generated by suture: sizes of special-section entries.
#include <linux/types.h>
#include <linux/jump_label.h>
#include <linux/static_call.h>
#include <linux/bug.h>
#include <linux/extable.h>
#include <linux/printk.h>
#include <asm/alternative.h>
#include <asm/extable.h>
#include <asm/orc_types.h>
#define SZ(name, type) char suture_size_##name[sizeof(type)] __attribute__((used));
SZ(jump_table, struct jump_entry)
SZ(static_call_sites, struct static_call_site)
SZ(bug_table, struct bug_entry)
SZ(ex_table, struct exception_table_entry)
SZ(altinstructions, struct alt_instr)
SZ(orc_unwind, struct orc_entry)
#ifdef CONFIG_PRINTK_INDEX
SZ(printk_index, struct pi_entry)
#endif
/* Paravirt patch sites (.parainstructions) were turned into alternatives in
 * 6.8; the header stayed but the structure went. */
#include <linux/version.h>
#if defined(CONFIG_PARAVIRT) && LINUX_VERSION_CODE < KERNEL_VERSION(6, 8, 0) && __has_include(<asm/paravirt_types.h>)
#include <asm/paravirt_types.h>
SZ(parainstructions, struct paravirt_patch_site)
#endif
"#;

fn section_of(probe_name: &str) -> String {
    match probe_name {
        "jump_table" | "bug_table" | "ex_table" => format!("__{probe_name}"),
        other => format!(".{other}"),
    }
}

/// Sizes of the symbols named `prefix*` in an ELF64 object, keyed by section name.
fn symbol_sizes(obj: &[u8], prefix: &str) -> Result<BTreeMap<String, usize>> {
    let rd = |o: usize, n: usize| -> Result<u64> {
        let b = obj.get(o..o + n).context("truncated probe object")?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(b);
        Ok(u64::from_le_bytes(v))
    };
    let shoff = rd(0x28, 8)? as usize;
    let shnum = rd(0x3c, 2)? as usize;
    let sh = |i: usize, f: usize, n: usize| rd(shoff + i * 64 + f, n);
    let mut out = BTreeMap::new();
    for i in 0..shnum {
        if sh(i, 4, 4)? != 2 {
            continue;
        }
        let (off, size) = (sh(i, 24, 8)? as usize, sh(i, 32, 8)? as usize);
        let strtab = sh(i, 40, 4)? as usize;
        let stroff = sh(strtab, 24, 8)? as usize;
        for k in 0..size / 24 {
            let e = off + k * 24;
            let name_off = stroff + rd(e, 4)? as usize;
            let rest = obj.get(name_off..).context("bad symbol name")?;
            let name = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(0)];
            let name = std::str::from_utf8(name).unwrap_or("");
            if let Some(n) = name.strip_prefix(prefix) {
                out.insert(section_of(n), rd(e + 16, 8)? as usize);
            }
        }
    }
    if out.is_empty() {
        bail!("the entry-size probe object has no {prefix}* symbols");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objname_from_kbuild_cmd() {
        let m = "cmd_fs/binfmt_misc.o := gcc -Wp,-MMD -DMODULE  -DKBUILD_BASENAME='\"binfmt_misc\"' -DKBUILD_MODNAME='\"binfmt_misc\"' -D__KBUILD_MODNAME=kmod_binfmt_misc -c -o fs/binfmt_misc.o fs/binfmt_misc.c\n";
        assert_eq!(objname_from_cmd(m).as_deref(), Some("binfmt_misc"));
        let b = "cmd_fs/proc/cmdline.o := gcc -Wp,-MMD -DKBUILD_MODNAME='\"cmdline\"' -c -o fs/proc/cmdline.o\n";
        assert_eq!(objname_from_cmd(b), None);
        let dash = "cmd_x.o := gcc -DMODULE -DKBUILD_MODNAME='\"snd-hda\"' -c\n";
        assert_eq!(objname_from_cmd(dash).as_deref(), Some("snd_hda"));
    }

    #[test]
    fn symlinks_in_the_tree_are_not_written_through() {
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("src"), t.path().join("outside"));
        fs::create_dir_all(root.join("fs/proc")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("victim"), "keep").unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), root.join("fs/proc/cmdline.c")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("fs/linked")).unwrap();
        fs::write(root.join("fs/proc/base.c"), "x").unwrap();
        assert!(no_symlink_below(&root, "fs/proc/base.c").is_ok());
        assert!(no_symlink_below(&root, "fs/proc/new_file.c").is_ok());
        let e = no_symlink_below(&root, "fs/proc/cmdline.c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(no_symlink_below(&root, "fs/linked/victim").is_err());
        assert!(write_nofollow(&root.join("fs/proc/cmdline.c"), b"patched").is_err());
        assert_eq!(fs::read_to_string(outside.join("victim")).unwrap(), "keep");
    }

    #[test]
    fn write_atomic_does_not_follow_a_planted_temporary() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("journal.json");
        fs::write(t.path().join("victim"), "keep").unwrap();
        // The name the temporary had before it was random.
        let tmp = target.with_extension(format!("tmp{}", std::process::id()));
        std::os::unix::fs::symlink(t.path().join("victim"), &tmp).unwrap();
        write_atomic(&target, b"{}").unwrap();
        assert_eq!(fs::read_to_string(t.path().join("victim")).unwrap(), "keep");
        assert_eq!(fs::read(&target).unwrap(), b"{}");
        assert!(!fs::symlink_metadata(&target)
            .unwrap()
            .file_type()
            .is_symlink());
        let mut left: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        let want = [
            "journal.json".into(),
            tmp.file_name().unwrap().to_os_string(),
            "victim".into(),
        ];
        assert_eq!(left, want, "no temporary left");
        // Onto a directory: fails and leaves no temporary behind.
        fs::create_dir(t.path().join("d")).unwrap();
        assert!(write_atomic(&t.path().join("d"), b"x").is_err());
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 4);
    }

    fn patches(text: &str) -> Vec<FilePatch> {
        patchfile::parse("p", text).unwrap()
    }

    const CHANGE_MISSING: &str =
        "--- a/fs/proc/no_such_file.c\n+++ b/fs/proc/no_such_file.c\n@@ -1,1 +1,1 @@\n-a\n+b\n";
    const CREATE_NEW: &str = "--- /dev/null\n+++ b/fs/proc/new_file.c\n@@ -0,0 +1,1 @@\n+int x;\n";
    const CHANGE_NEW: &str =
        "--- a/fs/proc/new_file.c\n+++ b/fs/proc/new_file.c\n@@ -1,1 +1,1 @@\n-int x;\n+int y;\n";

    #[test]
    fn missing_files_are_the_changed_files_the_tree_lacks() {
        let in_tree = |p: &str| p == "fs/proc/cmdline.c";
        let changed = "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1,1 +1,1 @@\n-a\n+b\n";
        assert!(missing_files(&patches(changed), in_tree).is_empty());
        assert_eq!(
            missing_files(&patches(CHANGE_MISSING), in_tree),
            ["fs/proc/no_such_file.c"]
        );
        let deleted = "--- a/fs/gone.c\n+++ /dev/null\n@@ -1,1 +0,0 @@\n-a\n";
        assert_eq!(missing_files(&patches(deleted), in_tree), ["fs/gone.c"]);
        // A created file is not missing, nor is a later change to it.
        assert!(missing_files(&patches(CREATE_NEW), in_tree).is_empty());
        assert!(missing_files(&patches(&format!("{CREATE_NEW}{CHANGE_NEW}")), in_tree).is_empty());
        let e = NotApplicable::no_such_file("6.1.0-57-amd64", &["fs/proc/no_such_file.c".into()]);
        assert_eq!(e.kind, NotApplicableKind::NoSuchFile);
        assert_eq!(
            e.to_string(),
            "fs/proc/no_such_file.c: 6.1.0-57-amd64 has no such file (the patch changes a file this release's source does not have)"
        );
    }

    /// A tree over `t` (no kernel in it), locked.
    fn fake_tree(t: &Path) -> Tree {
        let base = t.join("6.1.0-57-amd64");
        fs::create_dir_all(base.join("src/fs/proc")).unwrap();
        let release = Release {
            name: crate::ReleaseName::parse("6.1.0-57-amd64").unwrap(),
            image: t.join("vmlinuz"),
            config: t.join("config"),
            headers: t.join("headers"),
            modules: t.join("modules"),
            source_version: "6.1.0-0".into(),
            cc: "gcc-12".into(),
            cc_version_text: "gcc-12".into(),
        };
        let lock = lock_tree(&base, &|_| {}).unwrap();
        Tree {
            release,
            dir: base.join("src"),
            base,
            _lock: lock,
            listed_in: Default::default(),
            launcher_dir: None,
        }
    }

    #[test]
    fn a_file_the_release_lacks_is_not_applicable_and_a_new_file_still_applies() {
        let t = tempfile::tempdir().unwrap();
        let tree = fake_tree(t.path());
        let e = tree.check_files(&patches(CHANGE_MISSING)).unwrap_err();
        let na = e
            .downcast_ref::<NotApplicable>()
            .expect("not applicable, not an I/O error");
        assert_eq!(na.kind, NotApplicableKind::NoSuchFile);
        assert!(
            na.detail
                .starts_with("fs/proc/no_such_file.c: 6.1.0-57-amd64 has no such file"),
            "{na}"
        );
        let e = tree.apply(&patches(CHANGE_MISSING)).err().unwrap();
        assert_eq!(
            e.downcast_ref::<NotApplicable>().map(|n| n.kind),
            Some(NotApplicableKind::NoSuchFile),
            "{e:#}"
        );
        // --- /dev/null: the file is created, and removed again on restore.
        let both = patches(&format!("{CREATE_NEW}{CHANGE_NEW}"));
        tree.check_files(&both).unwrap();
        let applied = tree.apply(&both).unwrap();
        assert_eq!(
            fs::read_to_string(tree.dir.join("fs/proc/new_file.c")).unwrap(),
            "int y;\n"
        );
        applied.restore().unwrap();
        assert!(!tree.dir.join("fs/proc/new_file.c").exists());
    }

    #[test]
    fn kbuild_temporaries_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::create_dir_all(d.join(".tmp_4242/sub")).unwrap();
        fs::write(d.join(".tmp_4242/sub/tmp"), "x").unwrap();
        fs::write(d.join(".tmp_binfmt_misc.o"), "x").unwrap();
        fs::create_dir(d.join("outside")).unwrap();
        std::os::unix::fs::symlink(d.join("outside"), d.join(".tmp_link")).unwrap();
        for keep in [".config", "tmp_not_hidden", ".tmp", ".suture-prepared"] {
            fs::write(d.join(keep), "x").unwrap();
        }
        assert_eq!(remove_kbuild_temporaries(d), 3);
        let mut left: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".config",
                ".suture-prepared",
                ".tmp",
                "outside",
                "tmp_not_hidden"
            ]
        );
        // The tree's top level is cleaned when the next build takes the lock.
        let tree = fake_tree(d);
        fs::create_dir_all(tree.dir.join(".tmp_99999")).unwrap();
        drop(tree);
        let tree = fake_tree(d);
        assert!(!tree.dir.join(".tmp_99999").exists());
        assert!(tree.dir.join("fs/proc").exists());
    }

    /// Processes of group `pgid` that have not exited (zombies excluded).
    fn running_in_group(pgid: i32) -> Vec<i32> {
        let mut out = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let rest = &stat[stat.rfind(')').unwrap() + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f[2].parse::<i32>().ok() == Some(pgid) && !matches!(f[0], "Z" | "X") {
                out.push(pid);
            }
        }
        out
    }

    const HELPER_BASE: &str = "SUTURE_TEST_KILLED_BUILD_BASE";

    /// Not a test: the build that the next test kills with SIGKILL while its
    /// "compiler" (a shell running `sleep`) works in the tree.
    #[test]
    #[ignore]
    fn helper_build_killed_while_compiling() {
        let Some(base) = std::env::var_os(HELPER_BASE).map(PathBuf::from) else {
            return;
        };
        let _lock = lock_tree(&base, &|_| {}).unwrap();
        let mut sh = Command::new("sh");
        sh.current_dir(&base).args([
            "-c",
            "echo $$ > started.tmp && mv started.tmp started; sleep 600; echo done",
        ]);
        let _ = run_in_group(&base, &mut sh);
    }

    /// kill -9 of suture while make runs: the compiler kept working in the
    /// tree after the lock was released. Now the next build, taking the
    /// lock, stops the dead build's process group before it goes on.
    #[test]
    fn a_killed_builds_compiler_is_stopped_before_the_next_build_uses_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().to_path_buf();
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tree::tests::helper_build_killed_while_compiling",
                "--ignored",
                "--nocapture",
            ])
            .env(HELPER_BASE, &base)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let started = base.join("started");
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !started.exists() {
            assert!(
                std::time::Instant::now() < until,
                "the helper build did not start its compiler"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let pgid: i32 = fs::read_to_string(&started)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let cleanup = scopeguard(pgid);
        assert!(base.join(RUNNING).exists(), "the running group is recorded");
        helper.kill().unwrap();
        helper.wait().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        // The dead build's `sleep` is still in the tree...
        assert!(
            !running_in_group(pgid).is_empty(),
            "nothing was left running: the test proves nothing"
        );
        // ...until the next build takes the lock.
        let notes = std::cell::RefCell::new(Vec::new());
        let _lock = lock_tree(&base, &|m| notes.borrow_mut().push(m.to_string())).unwrap();
        assert_eq!(
            running_in_group(pgid),
            Vec::<i32>::new(),
            "the dead build's compiler still runs"
        );
        assert!(!base.join(RUNNING).exists());
        assert!(
            notes
                .borrow()
                .iter()
                .any(|n| n.contains(&format!("process group {pgid}"))),
            "{:?}",
            notes.borrow()
        );
        drop(cleanup);
    }

    /// Kills group `pgid` when dropped (a failed assertion leaves no `sleep`).
    fn scopeguard(pgid: i32) -> impl Drop {
        struct G(i32);
        impl Drop for G {
            fn drop(&mut self) {
                // SAFETY: the test's own group.
                unsafe { libc::kill(-self.0, libc::SIGKILL) };
            }
        }
        G(pgid)
    }

    /// A recorded group none of whose processes carries the run's token is
    /// not ours (its number was reused): left alone, and the record dropped.
    #[test]
    fn a_reused_group_number_is_not_killed() {
        use std::os::unix::process::CommandExt;
        let t = tempfile::tempdir().unwrap();
        let mut other = Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = other.id() as i32;
        let rec = Running {
            pgid,
            token: "1-2-3".into(),
        };
        fs::write(t.path().join(RUNNING), serde_json::to_vec(&rec).unwrap()).unwrap();
        let _lock = lock_tree(t.path(), &|_| {}).unwrap();
        let alive = other.try_wait().unwrap().is_none();
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(alive, "an unrelated process group was killed");
        assert!(!t.path().join(RUNNING).exists());
    }

    #[test]
    fn a_command_in_the_tree_runs_in_its_own_recorded_group_and_leaves_no_record() {
        let t = tempfile::tempdir().unwrap();
        let mut sh = Command::new("sh");
        sh.args(["-c", "while ! [ -e running.json ]; do sleep 0.01; done; echo $SUTURE_BUILD_TOKEN; cut -d' ' -f5 /proc/$$/stat; echo $$; cat running.json"]).current_dir(t.path());
        let out = run_in_group(t.path(), &mut sh).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with(&format!("{}-", std::process::id())),
            "{text}"
        );
        assert_eq!(
            lines[1], lines[2],
            "the shell leads its own process group: {text}"
        );
        let rec: Running = serde_json::from_str(lines[3]).unwrap();
        assert_eq!(
            (rec.pgid.to_string(), rec.token.as_str()),
            (lines[2].to_string(), lines[0])
        );
        assert!(!t.path().join(RUNNING).exists());
    }
}
