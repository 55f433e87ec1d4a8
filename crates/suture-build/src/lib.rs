//! `suture build`: the whole pipeline, one way.
//!
//! release → source tree → objects (before and after the patch) → diff → klp
//! objects → module. Each arrow is another crate; this one only sequences them,
//! reports progress and decides the outcome.

mod ibt;
mod judge;
mod oot;
pub mod provides;

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
pub use suture_diff::Refusal;
use suture_kernel::patchfile::{self, FileKind, FilePatch};
use suture_kernel::{Release, Tree};

pub use judge::{Judge, Judged, Judgement, LiveUnit};
pub use suture_kernel::tree::{cache_root, NotApplicable, NotApplicableKind};
pub use suture_klp::default_module_name;
pub use suture_klp::{parse_state, State};
pub use suture_symbols::SymbolSource;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub patches: Vec<PathBuf>,
    pub release: String,
    pub output: Option<PathBuf>,
    pub name: Option<String>,
    /// A `/proc/kallsyms` copy from a host running the release, instead of the
    /// symbol tables inside its image.
    pub kallsyms: Option<PathBuf>,
    pub replace: bool,
    /// Root of the cache (prepared trees, extracted images).
    pub cache: PathBuf,
    /// Keep the work directory (objects, klp objects, kbuild dir) for inspection.
    pub keep_work: bool,
    /// `klp_patch.states` (`--state ID:VERSION`).
    pub states: Vec<suture_klp::State>,
    /// Sign the module with this private key and certificate (PEM), for hosts
    /// that enforce module signatures.
    pub sign: Option<(PathBuf, PathBuf)>,
    /// CVE ids the patch fixes, recorded in the module for `suture status`.
    pub cves: Vec<String>,
    pub description: Option<String>,
    /// Patch a module built out of tree from this directory (the patch applies
    /// to it) instead of the release's own source.
    pub module_src: Option<PathBuf>,
    /// Refuse, before compiling anything, a patch that needs more units
    /// compiled than this (a header that thousands of units include).
    pub max_units: Option<usize>,
}

/// `CVE-YYYY-NNNN...`
pub fn check_cve(id: &str) -> Result<()> {
    let ok = id
        .strip_prefix("CVE-")
        .and_then(|r| r.split_once('-'))
        .is_some_and(|(y, n)| {
            y.len() == 4
                && y.bytes().all(|b| b.is_ascii_digit())
                && n.len() >= 4
                && n.bytes().all(|b| b.is_ascii_digit())
        });
    if !ok {
        bail!("{id:?} is not a CVE id (CVE-YYYY-NNNN)");
    }
    Ok(())
}

/// `include/suture.h`, shipped inside the binary and written next to the
/// build's objects so that a patch can `#include <suture.h>`.
pub const SUTURE_H: &str = include_str!("../../../include/suture.h");

/// One function the module replaces.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replaced {
    pub objname: String,
    pub function: String,
    pub sympos: u32,
    /// The source file the function is defined in.
    pub source_file: String,
}

#[derive(Debug, serde::Serialize)]
pub struct BuildReport {
    pub module: PathBuf,
    pub name: String,
    pub release: String,
    pub replaced: Vec<Replaced>,
    pub new_functions: Vec<String>,
    pub symbol_source: String,
    pub warnings: Vec<String>,
    /// Callbacks wired into the patch: `OBJNAME kind: function`.
    pub callbacks: Vec<String>,
    pub states: Vec<suture_klp::State>,
    pub replace: bool,
    /// Changed files the release does not build, each with why
    /// (`drivers/x.c: not built by R (CONFIG_X is not set)`): the rest of the
    /// patch was built without them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_built: Vec<String>,
}

/// How a build ended when it did not produce a module. The binary maps these
/// to exit statuses (2 refused, 3 no change).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{}", format_refusals(.0))]
    Refused(Vec<(String, Refusal)>),
    #[error("the patch makes no functional change to any function: nothing to build{}", if .0.is_empty() { String::new() } else { format!(" ({})", .0.join(", ")) })]
    NoChange(Vec<String>),
    /// Only `__init`/`__exit` code changed: nothing in the running kernel to
    /// patch; when the fix takes effect is said per function.
    #[error("{}", format_init_exit(.0))]
    InitExitOnly(Vec<(String, Refusal)>),
    /// No changed file is built by the release's configuration (kbuild's
    /// answer): not applicable, like no change.
    #[error("{}", .0.join("\n"))]
    NotBuilt(Vec<String>),
    /// The patched source does not compile for this release while the
    /// original does: the fix relies on changes to other files (a struct
    /// member, a helper) that this release lacks.
    #[error("{file}: needs changes in other files: the patched source does not compile for this release, the original does\n  first error: {first_error}")]
    NeedsOtherChanges { file: String, first_error: String },
}

/// `file: not built by RELEASE (why)`.
pub fn not_built_line(file: &str, release: &str, why: &str) -> String {
    format!("{file}: not built by {release} ({why})")
}

/// The units to compile for the changed files, as kbuild builds them: an
/// object the configuration builds stands for itself; a `.c` file built only
/// through other units' `#include` (`kernel/locking/rtmutex.c`) stands for
/// the built units that include it; a header for every built unit that
/// includes it; anything else is not built, with why.
#[derive(Debug, Default)]
pub struct UnitPlan {
    /// Each unit to compile (`fs/proc/cmdline.o`), with the changed files
    /// that make it one (its own `.c`, a `.c` it includes, headers).
    pub units: BTreeMap<String, Vec<String>>,
    /// Each changed file the release builds nothing of, with the line that
    /// says why ([`not_built_line`]).
    pub not_built: Vec<(String, String)>,
}

pub fn plan_units(tree: &Tree, changed: &Changed, progress: &dyn Fn(&str)) -> Result<UnitPlan> {
    use suture_kernel::kbuild::{including_units, Applicability};
    let release = &tree.release.name.release;
    let objects = &changed.objects;
    let a = tree.applicability(objects)?;
    let mut plan = UnitPlan::default();
    let unit_of = |c: &str| format!("{}.o", c.strip_suffix(".c").unwrap_or(c));
    if !changed.headers.is_empty() {
        // Every unit of the configuration that includes a changed header,
        // directly or not, is compiled before and after; the unchanged ones
        // drop out in the diff.
        let graph = tree.include_graph(progress)?;
        for h in &changed.headers {
            let units = graph.units_including(h);
            if units.is_empty() {
                plan.not_built.push((
                    h.clone(),
                    format!("{h}: no unit {release} builds includes it"),
                ));
                continue;
            }
            progress(&format!(
                "{h}: included by {} unit(s) {release} builds",
                units.len()
            ));
            for u in units {
                plan.units.entry(unit_of(&u)).or_default().push(h.clone());
            }
        }
    }
    for o in objects {
        let file = format!("{}.c", o.strip_suffix(".o").unwrap_or(o));
        match &a[o] {
            Applicability::Built { .. } => plan.units.entry(o.clone()).or_default().push(file),
            Applicability::NotBuilt(why) => {
                let includers: Vec<String> = including_units(&tree.dir, &file)
                    .with_context(|| format!("looking for the units that include {file}"))?
                    .iter()
                    .map(|c| unit_of(c))
                    .collect();
                let built: Vec<String> = if includers.is_empty() {
                    vec![]
                } else {
                    let b = tree.applicability(&includers)?;
                    includers
                        .into_iter()
                        .filter(|u| matches!(b.get(u), Some(Applicability::Built { .. })))
                        .collect()
                };
                if built.is_empty() {
                    plan.not_built
                        .push((file.clone(), not_built_line(&file, release, why)));
                } else {
                    progress(&format!(
                        "{file} is not an object of its own: {} include it; compiling those",
                        built.join(", ")
                    ));
                    for u in built {
                        plan.units.entry(u).or_default().push(file.clone());
                    }
                }
            }
        }
    }
    for files in plan.units.values_mut() {
        files.sort();
        files.dedup();
    }
    Ok(plan)
}

fn format_init_exit(r: &[(String, Refusal)]) -> String {
    let mut s = String::from(
        "the patch changes only init/exit code: nothing in the running kernel to patch",
    );
    for (file, x) in r {
        s.push_str(&format!("\n  {file}: {}: {}", x.subject, x.reason));
    }
    s
}

fn format_refusals(r: &[(String, Refusal)]) -> String {
    let mut s = String::from("this patch cannot be live-patched:");
    for (file, x) in r {
        s.push_str(&format!("\n  {file}: {}: {}", x.subject, x.reason));
    }
    s
}

/// What the patch changes, checked before any work: C translation units
/// (`fs/proc/cmdline.c` as `fs/proc/cmdline.o`) and headers, whose
/// including units are found once the tree is open.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    pub objects: Vec<String>,
    pub headers: Vec<String>,
}

/// Only C sources and headers can be live-patched from a source diff.
pub fn objects_of(patches: &[FilePatch]) -> Result<Changed> {
    let mut c = Changed::default();
    for fp in patches {
        let p = &fp.path;
        if let Some(stem) = p.strip_suffix(".c") {
            match fp.kind {
                FileKind::Modified => c.objects.push(format!("{stem}.o")),
                FileKind::Created => bail!(
                    "{p}: the patch adds a new source file; a livepatch can only change translation units the running kernel already has. Put the new code into an existing file."
                ),
                FileKind::Deleted => bail!("{p}: the patch deletes a source file; that cannot be live-patched"),
            }
        } else if p.ends_with(".h") {
            match fp.kind {
                FileKind::Modified => c.headers.push(p.clone()),
                // Only what includes it can use it, and that is changed too.
                FileKind::Created => {}
                FileKind::Deleted => {
                    bail!("{p}: the patch deletes a header; that cannot be live-patched")
                }
            }
        } else if p.ends_with(".S") || p.ends_with(".s") {
            bail!("{p}: assembly cannot be live-patched safely (no ftrace entry, no per-function sections)");
        } else {
            bail!("{p}: only C source files (.c) and headers (.h) can be live-patched; this file is not one");
        }
    }
    c.objects.sort();
    c.objects.dedup();
    c.headers.sort();
    c.headers.dedup();
    Ok(c)
}

pub fn build(opts: &BuildOptions, progress: &dyn Fn(&str)) -> Result<BuildReport> {
    let mut patches = Vec::new();
    for p in &opts.patches {
        let text =
            fs::read_to_string(p).with_context(|| format!("reading patch {}", p.display()))?;
        patches.extend(patchfile::parse(&p.display().to_string(), &text)?);
    }
    let changed = objects_of(&patches)?;
    for c in &opts.cves {
        check_cve(c)?;
    }
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => suture_klp::default_module_name(&opts.patches[0]),
    };
    suture_klp::check_module_name(&name)?;
    let output = opts
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{name}.ko")));
    if output.extension().is_none_or(|e| e != "ko") {
        bail!("the output {} must end in .ko", output.display());
    }

    let release = Release::find(&opts.release, Path::new("/"))?;
    progress(&format!(
        "release {} (source {} {}, compiler {})",
        release.name.release,
        release.source_package(),
        release.source_version,
        release.cc
    ));
    suture_symbols::prefetch_vmlinux(&release.image, &opts.cache.join(&release.name.release));
    let tree = Tree::open(release.clone(), &opts.cache, progress)?;
    let base = opts.cache.join(&release.name.release);
    remove_stale_work_dirs(&base, progress);
    // Which changed files the release builds, and as what, before anything
    // is compiled. An out-of-tree module's files are its own kbuild's.
    let plan = match &opts.module_src {
        Some(dir) => {
            if let Some(h) = changed.headers.first() {
                bail!("{h}: header changes are not supported for an out-of-tree module ({}): move the change into its .c files", dir.display());
            }
            (changed.objects.clone(), vec![])
        }
        None => {
            tree.check_files(&patches)?;
            let p = plan_units(&tree, &changed, progress)?;
            (
                p.units.into_keys().collect(),
                p.not_built.into_iter().map(|(_, l)| l).collect(),
            )
        }
    };
    let (objects, not_built): (Vec<String>, Vec<String>) = plan;
    if let Some(max) = opts.max_units {
        if objects.len() > max {
            bail!(
                "the patch needs {} units compiled before and after the patch (more than --max-units {max}); raise --max-units to build it anyway (each unit costs about two compiles)",
                objects.len()
            );
        }
    }
    if objects.len() > 1 {
        progress(&format!(
            "{} units to compile before and after the patch",
            objects.len()
        ));
    }
    if objects.is_empty() {
        return Err(BuildError::NotBuilt(not_built).into());
    }
    for n in &not_built {
        progress(n);
    }
    // A kept directory has its own prefix: no later build removes it.
    let work = tempdir_in(
        &base,
        if opts.keep_work {
            KEPT_PREFIX
        } else {
            WORK_PREFIX
        },
    )?;
    let result = build_in(
        opts,
        progress,
        &tree,
        &patches,
        &objects,
        &name,
        &output,
        work.path(),
    )
    .map(|mut r| {
        r.not_built = not_built;
        r
    });
    if opts.keep_work {
        let kept = work.keep();
        eprintln!("work directory kept: {}", kept.display());
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn build_in(
    opts: &BuildOptions,
    progress: &dyn Fn(&str),
    tree: &Tree,
    patches: &[FilePatch],
    objects: &[String],
    name: &str,
    output: &Path,
    work: &Path,
) -> Result<BuildReport> {
    // Only the patched side can include suture.h (the original source does not).
    let include = work.join("include");
    fs::create_dir_all(&include)?;
    fs::write(include.join("suture.h"), SUTURE_H)?;
    let (pairs, patched, oot_modules) = match &opts.module_src {
        Some(dir) => {
            let o = oot::build_objects(dir, patches, objects, tree, &include, work, progress)?;
            (o.pairs, o.patched, o.modules)
        }
        None => {
            let (pairs, patched) = tree_objects(progress, tree, patches, objects, &include)?;
            (pairs, patched, Default::default())
        }
    };

    let mut symbols = symbol_source(tree, opts.kallsyms.as_deref(), &opts.cache, progress)?;
    for (objname, ko) in oot_modules {
        symbols.add_module(objname, ko);
    }
    progress(&format!(
        "diffing {} object(s) (symbols from {})",
        pairs.len(),
        symbols.describe()
    ));
    let judge = Judge::new(tree, &symbols)?;
    let mut refusals: Vec<(String, Refusal)> = Vec::new();
    let mut live = Vec::new();
    let mut warnings = Vec::new();
    let mut unchanged = Vec::new();
    let mut init_exit: Vec<(String, Refusal)> = Vec::new();
    let mut providers = Vec::new();
    for ((info, orig), patched) in pairs.iter().zip(&patched) {
        let j = judge.unit(info, orig, patched)?;
        warnings.extend(j.warnings);
        match j.verdict {
            Judged::Live(u) => live.push(*u),
            Judged::NewOnly(p) => providers.push(*p),
            Judged::NoChange => unchanged.push(info.object.clone()),
            Judged::InitExitOnly(r) => {
                let source = info.object.replace(".o", ".c");
                init_exit.extend(r.into_iter().map(|x| (source.clone(), x)));
            }
            // A header's layout change shows in every unit that includes
            // it: said once.
            Judged::Refused(r) | Judged::LayoutChanged(r) => {
                for (file, x) in r {
                    if !refusals
                        .iter()
                        .any(|(f, y)| *f == file && y.subject == x.subject)
                    {
                        refusals.push((file, x));
                    }
                }
            }
        }
    }
    if !refusals.is_empty() {
        return Err(BuildError::Refused(refusals).into());
    }
    let kept = provides::keep_needed(&mut live, providers)?;
    for (object, used) in &kept.used {
        progress(&format!(
            "{object}: kept for its new function(s) {}, which other units of the patch call",
            used.join(", ")
        ));
    }
    unchanged.extend(kept.unused);
    // A patch of callbacks alone (for example one that only sets up state for a
    // later patch) is still a patch.
    if live.is_empty() {
        if !init_exit.is_empty() {
            return Err(BuildError::InitExitOnly(init_exit).into());
        }
        return Err(BuildError::NoChange(unchanged).into());
    }
    for (file, x) in &init_exit {
        warnings.push(format!(
            "{file}: {}: not in the module: {}",
            x.subject, x.reason
        ));
    }
    let mut report = link_module(
        opts,
        tree,
        &symbols,
        live,
        &[],
        name,
        output,
        work,
        progress,
    )?;
    warnings.append(&mut report.warnings);
    report.warnings = warnings;
    Ok(report)
}

/// Links the units judged live into one livepatch module at `output`: the
/// hook, the release's kbuild, the post-link rewrite, the `.modinfo` record
/// (with `extra` keys), the signature. Shared by `suture build` and the
/// cumulative module of `suture triage`.
#[allow(clippy::too_many_arguments)]
pub fn link_module(
    opts: &BuildOptions,
    tree: &Tree,
    symbols: &SymbolSource,
    live: Vec<LiveUnit>,
    extra: &[(String, String)],
    name: &str,
    output: &Path,
    work: &Path,
    progress: &dyn Fn(&str),
) -> Result<BuildReport> {
    /// What one klp_object collects across translation units: its functions,
    /// the klp objects that define them, and its callbacks (kind, symbol).
    type ObjectParts = (Vec<suture_klp::Func>, Vec<Vec<u8>>, Vec<(String, String)>);
    let mut by_obj: BTreeMap<String, ObjectParts> = BTreeMap::new();
    let (mut replaced, mut new_functions, mut callbacks) = (Vec::new(), Vec::new(), Vec::new());
    let mut verified = 0;
    for u in live {
        let entry = by_obj.entry(u.objname.clone()).or_default();
        for (kind, symbol) in &u.callbacks {
            if let Some((_, other)) = entry.2.iter().find(|(k, _)| k == kind) {
                bail!(
                    "two {kind} callbacks for {} ({other} and {symbol} in {}): the kernel keeps one per object; call the others from one function",
                    u.objname,
                    u.object.replace(".o", ".c")
                );
            }
            callbacks.push(format!("{} {kind}: {symbol}", u.objname));
            entry.2.push((kind.clone(), symbol.clone()));
        }
        verified += u.verified;
        entry.0.extend(u.funcs);
        fs::write(work.join(u.object.replace('/', "_")), &u.klp_object)?;
        entry.1.push(u.klp_object);
        replaced.extend(u.replaced);
        new_functions.extend(u.new_functions);
    }
    progress("linking the livepatch module with the release's kbuild");
    let mut spec = suture_klp::ModuleSpec {
        name: name.to_string(),
        replace: opts.replace,
        objects: Vec::new(),
        states: opts.states.clone(),
        clear_module_relocs: !kernel_clears_module_relocs(tree)?,
    };
    let mut klp_objects = Vec::new();
    for (objname, (funcs, objs, cbs)) in by_obj {
        let idx = spec.objects.len();
        spec.objects.push(suture_klp::Object {
            objname,
            funcs,
            callbacks: cbs,
        });
        klp_objects.extend(objs.into_iter().map(|o| (idx, o)));
    }
    progress(&format!("{verified} replaced function(s) byte-identical to the running kernel's build (relocations masked)"));
    let (mut ko, _post) =
        suture_klp::build_module(&spec, &klp_objects, &tree.release.headers, work)?;
    let mut info = metadata(opts, &tree.release.name.release, symbols, &replaced)?;
    info.extend(extra.iter().cloned());
    ko = suture_klp::modinfo::add_modinfo(&ko, &info)?;
    if let Some((key, cert)) = &opts.sign {
        progress("signing the module with the release's scripts/sign-file");
        ko = suture_klp::sign::sign(
            &ko,
            &tree.release.headers.join("scripts/sign-file"),
            key,
            cert,
            work,
        )?;
    }
    let module = suture_klp::write_module(output, &ko)?;
    Ok(BuildReport {
        module,
        name: name.to_string(),
        release: tree.release.name.release.clone(),
        replaced,
        new_functions,
        symbol_source: symbols.describe(),
        warnings: Vec::new(),
        callbacks,
        states: opts.states.clone(),
        replace: opts.replace,
        not_built: vec![],
    })
}

/// The release's symbols ([`SymbolSource`]): its files where the release
/// found them, the decompressed image cached beside its tree.
pub fn symbol_source(
    tree: &Tree,
    kallsyms: Option<&Path>,
    cache: &Path,
    progress: &dyn Fn(&str),
) -> Result<SymbolSource> {
    let r = &tree.release;
    let paths = suture_symbols::ReleasePaths::at(
        &r.name.release,
        r.image.clone(),
        r.headers.join("Module.symvers"),
        r.modules.clone(),
    );
    SymbolSource::open(&paths, kallsyms, &cache.join(&r.name.release), progress)
}

/// Whether the release's livepatch core clears a module object's relocations
/// when the module goes away (`klp_clear_object_relocs`, Linux 6.3; Debian's
/// 6.1 lacks it): otherwise the hook does it (see suture-klp).
fn kernel_clears_module_relocs(tree: &Tree) -> Result<bool> {
    let core = tree.dir.join("kernel/livepatch/core.c");
    let text = fs::read_to_string(&core).with_context(|| format!("reading {}", core.display()))?;
    Ok(text.contains("klp_clear_object_relocs"))
}

/// A list of objects for a progress line: all of them when few.
fn shown(objects: &[String]) -> String {
    if objects.len() <= 8 {
        objects.join(" ")
    } else {
        format!("{} ... ({} units)", objects[..4].join(" "), objects.len())
    }
}

/// Each unit's object description and its original object.
type Pairs = Vec<(suture_kernel::ObjectInfo, Vec<u8>)>;

/// Both sides of the patched translation units, compiled in the release's tree.
fn tree_objects(
    progress: &dyn Fn(&str),
    tree: &Tree,
    patches: &[FilePatch],
    objects: &[String],
    include: &Path,
) -> Result<(Pairs, Vec<Vec<u8>>)> {
    // A file the release lacks is said as such (not applicable), not as a
    // failure to read it.
    tree.check_files(patches)?;
    progress(&format!("original objects: {}", shown(objects)));
    let pairs = tree.original_objects_with(objects, progress)?;
    progress("applying the patch");
    let applied = tree.apply(patches)?;
    for n in &applied.notes {
        progress(n);
    }
    progress(&format!("compiling {} after the patch", shown(objects)));
    let compiled = tree.compile_batched(
        objects,
        &format!("-I{}", include.display()),
        "patched",
        progress,
    );
    let mut patched = Vec::new();
    if compiled.is_ok() {
        for o in objects {
            patched.push(fs::read(tree.object_path(o))?);
        }
    }
    applied.restore()?;
    if let Err(e) = compiled {
        // The originals compiled: the patched text alone is what fails.
        if let Some(first) = e
            .downcast_ref::<suture_kernel::tree::CommandFailed>()
            .and_then(|c| c.first_error.clone())
        {
            let file = first.split(':').next().unwrap_or("").to_string();
            return Err(BuildError::NeedsOtherChanges {
                file,
                first_error: first,
            }
            .into());
        }
        return Err(e.context("the patched source does not compile"));
    }
    Ok((pairs, patched))
}

/// The functions kept, and (dropped alias, kept function) pairs.
type KeptAndAliases<'a> = (Vec<&'a suture_diff::ReplacedFunc>, Vec<(String, String)>);

/// Replaced functions, one per address of ORIG. Aliases (`__x64_sys_getppid`
/// and `__ia32_sys_getppid` are one function under SYSCALL_DEFINE0) would give
/// the livepatch core two `klp_func`s on one address in one patch, which its
/// transition cannot handle (every task then looks blocked). Returns the kept
/// functions and (dropped, kept) pairs.
pub(crate) fn one_per_address<'a>(
    orig: &[u8],
    replaced: &'a [suture_diff::ReplacedFunc],
) -> Result<KeptAndAliases<'a>> {
    let obj = suture_elf::Object::parse(orig).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut at: HashMap<&str, (u32, u64)> = HashMap::new();
    for s in &obj.symbols {
        if s.typ == 2 && !s.reserved && s.shndx != 0 {
            at.entry(s.name.as_str()).or_insert((s.shndx, s.value));
        }
    }
    let mut first: HashMap<(u32, u64), &str> = HashMap::new();
    let (mut keep, mut dropped) = (Vec::new(), Vec::new());
    for f in replaced {
        match at.get(f.name.as_str()) {
            Some(addr) => match first.get(addr) {
                Some(k) => dropped.push((f.name.clone(), k.to_string())),
                None => {
                    first.insert(*addr, &f.name);
                    keep.push(f);
                }
            },
            None => keep.push(f),
        }
    }
    Ok((keep, dropped))
}

/// What the module records about its build (the host side reads these keys).
fn metadata(
    opts: &BuildOptions,
    release: &str,
    symbols: &SymbolSource,
    replaced: &[Replaced],
) -> Result<Vec<(String, String)>> {
    use sha2::{Digest, Sha256};
    use suture_abi::modinfo;
    let mut h = Sha256::new();
    for p in &opts.patches {
        h.update(fs::read(p)?);
    }
    let mut m = vec![
        (modinfo::RELEASE.to_string(), release.to_string()),
        (
            modinfo::VERSION.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        (
            modinfo::PATCH_SHA256.to_string(),
            h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        ),
    ];
    if let Some(id) = symbols.build_id() {
        m.push((modinfo::RELEASE_BUILD_ID.to_string(), id));
    }
    if let Some(d) = &opts.description {
        m.push((modinfo::DESCRIPTION.to_string(), d.replace('\n', " ")));
    }
    for c in &opts.cves {
        check_cve(c)?;
        m.push((modinfo::CVE.to_string(), c.clone()));
    }
    for f in replaced {
        let rec = suture_abi::verify::FuncRecord {
            object: f.objname.clone(),
            name: f.function.clone(),
            sympos: f.sympos,
            // Module code is checked by the host once the module is loaded;
            // the record carries the image's bytes for vmlinux functions.
            check: (f.objname == "vmlinux")
                .then(|| symbols.verify_record(&f.function, f.sympos))
                .flatten(),
        };
        m.push((modinfo::FUNC.to_string(), rec.to_string()));
    }
    Ok(m)
}

/// Ksplice's run-pre check, at build time: every function the patch replaces
/// must be byte-identical (relocated fields masked) to its instance in the
/// release's image or module. Otherwise our tree does not reproduce the kernel
/// (wrong source, config or compiler) and the replacement would be built
/// against code the kernel does not run.
pub fn reproduces(
    report: &suture_symbols::TargetReport,
    object: &str,
    objname: &str,
    replaced: &[&str],
) -> Result<()> {
    let mut bad = Vec::new();
    for f in replaced {
        if report.mismatched.iter().any(|m| m == f) {
            bad.push(format!(
                "{f}: its compiled original differs from the code of {objname}"
            ));
        } else if report.unverified_functions.iter().any(|m| m == f) {
            bad.push(format!(
                "{f}: its compiled original matches no instance of that name in {objname}"
            ));
        } else if !report.compared_code {
            bad.push(format!("{f}: no code of {objname} to compare with"));
        }
    }
    if !bad.is_empty() {
        bail!(
            "{object}: this build does not reproduce the running kernel, refusing to patch:\n  {}\n\
             The source package, the config or the compiler differ from the ones that built {objname}.",
            bad.join("\n  ")
        );
    }
    Ok(())
}

/// A scratch directory removed on drop unless kept.
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Work directories are `work-PID` in the release's cache; `--keep-work`
/// makes `kept-PID`.
const WORK_PREFIX: &str = "work";
const KEPT_PREFIX: &str = "kept";

/// The work directories among `names` (entries of the release's cache) that
/// builds which died left behind: `work-PID` whose PID is not a live suture
/// process (`live_suture`), other than our own. Called with the release's
/// lock held, so no live build is using one; the PID test only spares a
/// directory whose build could still be running. Pure.
pub fn stale_work_dirs<'a>(
    names: impl IntoIterator<Item = &'a str>,
    own_pid: u32,
    live_suture: impl Fn(u32) -> bool,
) -> Vec<&'a str> {
    names
        .into_iter()
        .filter(|n| {
            let Some(pid) = n
                .strip_prefix(WORK_PREFIX)
                .and_then(|r| r.strip_prefix('-'))
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                return false;
            };
            pid != own_pid && !live_suture(pid)
        })
        .collect()
}

/// Whether `pid` is a live process (not a zombie) whose name starts with
/// `suture` (the binary, or a test binary of its crates).
fn is_live_suture(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `PID (COMM) STATE ...`
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("");
    !matches!(state, "Z" | "X") && comm.starts_with("suture")
}

/// Removes the work directories of builds that died (see [`stale_work_dirs`]).
fn remove_stale_work_dirs(base: &Path, progress: &dyn Fn(&str)) {
    let Ok(rd) = fs::read_dir(base) else { return };
    let names: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let stale = stale_work_dirs(
        names.iter().map(String::as_str),
        std::process::id(),
        is_live_suture,
    );
    for n in stale {
        match fs::remove_dir_all(base.join(n)) {
            Ok(()) => progress(&format!(
                "removed {n}, the work directory of an interrupted build"
            )),
            Err(e) => progress(&format!(
                "warning: could not remove {}: {e}",
                base.join(n).display()
            )),
        }
    }
}

fn tempdir_in(base: &Path, prefix: &str) -> Result<TempDir> {
    fs::create_dir_all(base)?;
    let path = base.join(format!("{prefix}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&path);
    fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(TempDir { path, keep: false })
}

/// The pointers the klp object takes to vmlinux functions whose `endbr64`
/// the kernel seals at boot.
pub(crate) fn sealed_pointers(
    klp_object: &[u8],
    symbols: &SymbolSource,
) -> Result<Vec<ibt::AddressTaken>> {
    let mut out = Vec::new();
    for t in ibt::addresses_taken(klp_object, "vmlinux")? {
        if symbols.endbr_sealed(&t.name, t.sympos)? {
            out.push(t);
        }
    }
    Ok(out)
}

/// Whether kbuild runs objtool on a module's linked object rather than on each
/// object as it compiles (`delay-objtool` in scripts/Makefile.lib): then it
/// writes ORC and the call/return-site lists for the whole livepatch module,
/// hook included, as long as the klp objects bring none of their own.
pub(crate) fn objtool_runs_at_module_link(config: &str) -> bool {
    ["CONFIG_X86_KERNEL_IBT", "CONFIG_LTO_CLANG"]
        .iter()
        .any(|k| suture_kernel::release::config_value(config, k).as_deref() == Some("y"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objtool_at_link_follows_ibt_and_clang_lto() {
        assert!(objtool_runs_at_module_link(
            "CONFIG_LIVEPATCH=y\nCONFIG_X86_KERNEL_IBT=y\n"
        ));
        assert!(objtool_runs_at_module_link("CONFIG_LTO_CLANG=y\n"));
        assert!(!objtool_runs_at_module_link(
            "CONFIG_LIVEPATCH=y\n# CONFIG_X86_KERNEL_IBT is not set\n"
        ));
        assert!(!objtool_runs_at_module_link(""));
    }

    fn fp(path: &str, kind: FileKind) -> FilePatch {
        FilePatch {
            path: path.into(),
            kind,
            hunks: vec![],
        }
    }

    #[test]
    fn only_existing_c_files_are_patchable() {
        let ok = objects_of(&[
            fp("fs/proc/cmdline.c", FileKind::Modified),
            fp("fs/proc/cmdline.c", FileKind::Modified),
        ])
        .unwrap();
        assert_eq!(ok.objects, vec!["fs/proc/cmdline.o"]);
        let h = objects_of(&[
            fp("include/linux/x.h", FileKind::Modified),
            fp("fs/proc/internal.h", FileKind::Modified),
            fp("include/linux/new.h", FileKind::Created),
        ])
        .unwrap();
        assert_eq!(h.headers, ["fs/proc/internal.h", "include/linux/x.h"]);
        assert!(h.objects.is_empty());
        for (p, k, want) in [
            ("include/linux/x.h", FileKind::Deleted, "deletes a header"),
            ("arch/x86/entry/entry_64.S", FileKind::Modified, "assembly"),
            ("fs/new.c", FileKind::Created, "new source file"),
            ("fs/Makefile", FileKind::Modified, "only C source"),
        ] {
            let e = objects_of(&[fp(p, k)]).unwrap_err().to_string();
            assert!(e.contains(p) && e.contains(want), "{e}");
        }
    }

    #[test]
    fn work_dirs_of_dead_builds_are_stale() {
        let names = [
            "work-100",
            "work-200",
            "work-300",
            "work-42",
            "kept-100",
            "src",
            "objs",
            "work-",
            "work-12x",
            "work-1-2",
            "working-100",
            "work-99999999999",
        ];
        // 200 is a live suture build, 300 a live process that is not suture
        // (the PID was reused), 42 is us, 100 is dead.
        let live_suture = |pid: u32| pid == 200;
        assert_eq!(
            stale_work_dirs(names, 42, live_suture),
            ["work-100", "work-300"]
        );
    }

    #[test]
    fn stale_work_dirs_are_removed_when_the_next_build_runs() {
        // (no tempfile crate here: a directory of our own, removed at the end)
        let t = std::env::temp_dir().join(format!("suture-build-stale-{}", std::process::id()));
        let _ = fs::remove_dir_all(&t);
        let base = t.as_path();
        // A PID that is dead for sure: a child already waited for.
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        dead.wait().unwrap();
        let dead = dead.id();
        // A live process that is not suture.
        let mut other = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let own = std::process::id();
        let dirs = [
            format!("work-{dead}"),
            format!("work-{}", other.id()),
            format!("work-{own}"),
            format!("kept-{dead}"),
            "src".to_string(),
        ];
        for d in &dirs {
            fs::create_dir_all(base.join(d).join("include")).unwrap();
        }
        let notes = std::cell::RefCell::new(Vec::new());
        remove_stale_work_dirs(base, &|m| notes.borrow_mut().push(m.to_string()));
        other.kill().unwrap();
        other.wait().unwrap();
        let mut left: Vec<String> = fs::read_dir(base)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        // This test binary is `suture_build-HASH`: a live suture process.
        assert!(is_live_suture(own));
        let mut want = vec![
            format!("kept-{dead}"),
            "src".to_string(),
            format!("work-{own}"),
        ];
        want.sort();
        assert_eq!(left, want, "{:?}", notes.borrow());
        assert_eq!(notes.borrow().len(), 2, "{:?}", notes.borrow());
        fs::remove_dir_all(&t).unwrap();
    }
}
