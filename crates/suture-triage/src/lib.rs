//! `suture triage`: from a Debian kernel update to what can go live on each
//! running release.
//!
//! update source → its change against the release's own source, file by
//! file → the units of the release's configuration that change (a `.c`, a
//! unit that includes a changed header) → the whole update applied to the
//! release's prepared tree, those units compiled before and after → each
//! judged as `suture build` judges it ([`suture_build::Judge`]) → one verdict
//! per object, a patch per live-patchable object, and with `--build` one
//! cumulative module per release. `update` and `report` are the pure core;
//! this file is the edge (the cache, kbuild, the file system).

pub mod report;
pub mod update;

use anyhow::{bail, Context, Result};
use report::{
    HeaderEntry, ModuleEntry, ObjectEntry, OtherFile, Reason, ReleaseReport, Report, Verdict,
};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;
use suture_abi::modinfo;
use suture_build::{Judge, Judged, SymbolSource};
use suture_kernel::patchfile::{self, FilePatch};
use suture_kernel::{Release, Tree};
use update::{Change, Class, FileChange};

#[derive(Debug, Clone)]
pub struct TriageOptions {
    /// The update's version of the release's source package (`6.1.187-1`).
    pub to: String,
    pub releases: Vec<String>,
    /// Tree directories the objects are taken from (all when empty).
    pub only: Vec<String>,
    /// Link one cumulative module per release.
    pub build: bool,
    /// The output directory; must not exist yet (or be empty).
    pub out: PathBuf,
    pub cache: PathBuf,
}

/// The report's JSON schema version (README, `suture triage`).
pub const SCHEMA: u32 = 1;

/// Runs the triage and writes `OUT/triage.json`, `OUT/patches/RELEASE/*.patch`
/// and, with `build`, `OUT/modules/RELEASE/NAME.ko`. Everything is written
/// to a scratch directory beside OUT and renamed into place at the end: a
/// triage that fails leaves nothing.
pub fn triage(opts: &TriageOptions, progress: &dyn Fn(&str)) -> Result<Report> {
    for r in &opts.releases {
        suture_abi::check_release(r).map_err(|e| anyhow::anyhow!("--kernel {r:?}: {e}"))?;
    }
    let only: Vec<String> = opts
        .only
        .iter()
        .map(|d| update::check_only(d).map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    let out = &opts.out;
    if let Ok(m) = fs::symlink_metadata(out) {
        let empty = m.is_dir()
            && fs::read_dir(out)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
        if !empty {
            bail!(
                "-o {}: exists and is not an empty directory; give a new directory",
                out.display()
            );
        }
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!(
            "-o {}: the directory {} does not exist",
            out.display(),
            parent.display()
        );
    }
    let staging = tempfile::Builder::new()
        .prefix(".suture-triage.")
        .tempdir_in(parent)
        .with_context(|| format!("creating a scratch directory in {}", parent.display()))?;

    let releases: Vec<Release> = opts
        .releases
        .iter()
        .map(|r| Release::find(r, Path::new("/")))
        .collect::<Result<_>>()?;
    let pkg = releases[0].source_package();
    if let Some(r) = releases.iter().find(|r| r.source_package() != pkg) {
        bail!(
            "{} is built from {}, {} from {pkg}: triage one series at a time",
            r.name.release,
            r.source_package(),
            releases[0].name.release
        );
    }
    let update_src = suture_kernel::tree::extracted_source(&pkg, &opts.to, &opts.cache, progress)?;
    let mut report = Report {
        schema: SCHEMA,
        package: pkg,
        to_version: opts.to.clone(),
        only: only.clone(),
        releases: Vec::new(),
    };
    for release in releases {
        let r = triage_release(opts, &only, release, &update_src, staging.path(), progress)?;
        report.releases.push(r);
    }
    fs::write(
        staging.path().join("triage.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    let kept = staging.keep();
    if out.exists() {
        fs::remove_dir(out).with_context(|| format!("replacing the empty {}", out.display()))?;
    }
    if let Err(e) = fs::rename(&kept, out) {
        let _ = fs::remove_dir_all(&kept);
        return Err(e).with_context(|| format!("moving the report into {}", out.display()));
    }
    Ok(report)
}

/// The update's changes against `release_src`, every regular file of
/// `update_src` compared with its counterpart (symlinks are neither
/// followed nor compared). Files the release has and the update lacks are
/// found from the units the release builds (see [`triage_release`]).
fn changed_files(release_src: &Path, update_src: &Path) -> Result<Vec<FileChange>> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = update_src.join(&rel);
        for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = rel.join(name);
            let t = e.file_type()?;
            if t.is_dir() {
                todo.push(path);
                continue;
            }
            if !t.is_file() {
                continue;
            }
            let Some(p) = path.to_str() else { continue };
            let mine = release_src.join(&path);
            let change = match fs::symlink_metadata(&mine) {
                Err(_) => Some(Change::Added),
                Ok(m) if !m.is_file() => Some(Change::Modified),
                Ok(m) => {
                    let theirs = e.metadata()?;
                    if m.len() != theirs.len() {
                        Some(Change::Modified)
                    } else {
                        let (a, b) = (fs::read(&mine)?, fs::read(e.path())?);
                        (a != b).then_some(Change::Modified)
                    }
                }
            };
            if let Some(change) = change {
                out.push(FileChange {
                    path: p.to_string(),
                    change,
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A unit of the release the update changes, with what its verdict needs.
struct Unit {
    object: String,
    files: Vec<String>,
}

fn elapsed_line(start: Instant, done: usize, total: usize, what: &str) -> String {
    let secs = start.elapsed().as_secs_f64();
    let left = if done > 0 {
        format!(
            ", about {:.0}s left",
            secs / done as f64 * (total - done) as f64
        )
    } else {
        String::new()
    };
    format!("{done} of {total} objects {what} ({secs:.0}s{left})")
}

fn triage_release(
    opts: &TriageOptions,
    only: &[String],
    release: Release,
    update_src: &Path,
    staging: &Path,
    progress: &dyn Fn(&str),
) -> Result<ReleaseReport> {
    let start = Instant::now();
    let name = release.name.release.clone();
    let source_version = release.source_version.clone();
    progress(&format!(
        "{name}: source {} {source_version}, update {}",
        release.source_package(),
        opts.to
    ));
    let tree = Tree::open(release, &opts.cache, progress)?;
    progress(&format!(
        "{name}: comparing the update's files with the release's"
    ));
    let changes = changed_files(&tree.dir, update_src)?;

    let mut objects: Vec<ObjectEntry> = Vec::new();
    let mut other_files = Vec::new();
    let mut other_arch_files = 0;
    // Every .c and header change is applied (a unit in scope may include
    // any of them); only the scope's objects are judged.
    let mut texts: HashMap<String, String> = HashMap::new();
    let mut patches: Vec<FilePatch> = Vec::new();
    let mut sources = Vec::new();
    let mut headers = Vec::new();
    for c in &changes {
        if update::other_arch(&c.path) {
            other_arch_files += 1;
            continue;
        }
        let class = update::classify(&c.path);
        let listed = update::in_scope(&c.path, only);
        let why = match (class, c.change) {
            (Class::Other(why), _) => Some(why),
            (Class::Source, Change::Added) => Some(
                "a new source file: the release has no such unit, and a livepatch cannot add one",
            ),
            _ => None,
        };
        if let Some(why) = why {
            if listed {
                other_files.push(OtherFile {
                    path: c.path.clone(),
                    change: c.change,
                    why: why.to_string(),
                });
            }
            if class != Class::Source {
                continue;
            }
        }
        // A new .c file is no unit of the release (listed above); a new
        // header goes in only where the release has its directory (a new
        // directory's files would stay in the tree after the restore).
        if c.change == Change::Added {
            let dir_exists = Path::new(&c.path)
                .parent()
                .is_some_and(|d| tree.dir.join(d).is_dir());
            if class == Class::Source || !dir_exists {
                if class != Class::Source && listed {
                    other_files.push(OtherFile {
                        path: c.path.clone(),
                        change: c.change,
                        why: "added in a directory the release does not have".into(),
                    });
                }
                continue;
            }
        }
        let old = match c.change {
            Change::Added => String::new(),
            _ => match fs::read(tree.dir.join(&c.path)).map(String::from_utf8) {
                Ok(Ok(t)) => t,
                _ => {
                    other_files.push(OtherFile {
                        path: c.path.clone(),
                        change: c.change,
                        why: "not UTF-8 text: cannot be diffed".into(),
                    });
                    continue;
                }
            },
        };
        let Ok(Ok(new)) = fs::read(update_src.join(&c.path)).map(String::from_utf8) else {
            other_files.push(OtherFile {
                path: c.path.clone(),
                change: c.change,
                why: "not UTF-8 text: cannot be diffed".into(),
            });
            continue;
        };
        let text = update::unified(&c.path, c.change, &old, &new);
        patches.extend(
            patchfile::parse(&c.path, &text)
                .with_context(|| format!("the generated diff of {}", c.path))?,
        );
        texts.insert(c.path.clone(), text);
        match (class, c.change) {
            (Class::Source, Change::Modified) if listed => sources.push(c.path.clone()),
            (Class::Header, Change::Modified) => headers.push(c.path.clone()),
            _ => {}
        }
    }
    // Units the release builds that the update deletes: source files of
    // the release's package (not ones kbuild generated) the update lacks.
    let units = tree.all_units(progress)?;
    let gone: Vec<(String, String)> = units
        .iter()
        .map(|(o, _)| {
            (
                o.clone(),
                format!("{}.c", o.strip_suffix(".o").unwrap_or(o)),
            )
        })
        .filter(|(_, c)| {
            update::in_scope(c, only)
                && tree.dir.join(c).is_file()
                && fs::symlink_metadata(update_src.join(c)).is_err()
        })
        .collect();
    if !gone.is_empty() {
        let shipped = tree.source_files(&opts.cache, progress)?;
        for (o, c) in gone.into_iter().filter(|(_, c)| shipped.contains(c)) {
            objects.push(ObjectEntry {
                object: o.clone(),
                module: String::new(),
                files: vec![c.clone()],
                verdict: Verdict::Refused {
                    reasons: vec![Reason {
                        file: c,
                        subject: o,
                        reason: "the update deletes this source file: its code moved or went; needs a reboot".into(),
                        layout: false,
                    }],
                },
                patch: None,
                note: None,
            });
        }
    }
    progress(&format!(
        "{name}: {} changed file(s): {} source(s) in scope, {} header(s)",
        changes.len(),
        sources.len(),
        headers.len()
    ));

    let changed = suture_build::Changed {
        objects: sources
            .iter()
            .map(|c| format!("{}.o", c.strip_suffix(".c").unwrap_or(c)))
            .collect(),
        headers: headers.clone(),
    };
    let plan = suture_build::plan_units(&tree, &changed, progress)?;
    for (file, line) in &plan.not_built {
        if file.ends_with(".c") {
            objects.push(ObjectEntry {
                object: format!("{}.o", file.strip_suffix(".c").unwrap_or(file)),
                module: String::new(),
                files: vec![file.clone()],
                verdict: Verdict::NotBuilt {
                    why: line
                        .split_once(": ")
                        .map(|(_, w)| w.to_string())
                        .unwrap_or_else(|| line.clone()),
                },
                patch: None,
                note: None,
            });
        }
    }
    let in_scope: Vec<Unit> = plan
        .units
        .into_iter()
        .filter(|(o, _)| update::in_scope(o, only))
        .map(|(object, files)| Unit { object, files })
        .collect();
    let header_entries: Vec<HeaderEntry> = headers
        .iter()
        .map(|h| HeaderEntry {
            header: h.clone(),
            units: in_scope.iter().filter(|u| u.files.contains(h)).count(),
        })
        .collect();

    let mut module = None;
    if !in_scope.is_empty() {
        let names: Vec<String> = in_scope.iter().map(|u| u.object.clone()).collect();
        progress(&format!(
            "{name}: {} objects to compile before and after the update",
            names.len()
        ));
        let t0 = Instant::now();
        let originals =
            tree.original_objects_with(&names, &|m| progress(&format!("{name}: {m}")))?;
        progress(&format!(
            "{name}: originals ready in {:.0}s; applying the update",
            t0.elapsed().as_secs_f64()
        ));
        let compiled = compiled_with(&tree, &patches, &names, &|m| {
            progress(&format!("{name}: {m}"))
        })?;
        let symbols = suture_build::symbol_source(&tree, None, &opts.cache, progress)?;
        let judge = Judge::new(&tree, &symbols)?;
        let originals: HashMap<&str, &(suture_kernel::ObjectInfo, Vec<u8>)> =
            names.iter().map(String::as_str).zip(&originals).collect();
        let mut judged: Vec<(Verdict, Option<Live>)> =
            judge_all(&judge, &in_scope, &originals, &compiled, &|m| {
                progress(&format!("{name}: {m}"))
            });

        // A unit refused only for layout changes the update makes in its
        // headers, whose own .c changed: its own change alone, against the
        // release's headers (what `suture build` of that file's diff does).
        let own_files = |u: &Unit| -> Vec<String> {
            u.files
                .iter()
                .filter(|f| f.ends_with(".c"))
                .cloned()
                .collect()
        };
        let retry: Vec<usize> = (0..in_scope.len())
            .filter(|&i| layout_only(&judged[i]) && !own_files(&in_scope[i]).is_empty())
            .collect();
        if !retry.is_empty() {
            let units: Vec<Unit> = retry
                .iter()
                .map(|&i| Unit {
                    object: in_scope[i].object.clone(),
                    files: own_files(&in_scope[i]),
                })
                .collect();
            let mut files: Vec<&String> = units.iter().flat_map(|u| &u.files).collect();
            files.sort();
            files.dedup();
            let own: Vec<FilePatch> = patches
                .iter()
                .filter(|p| files.contains(&&p.path))
                .cloned()
                .collect();
            progress(&format!(
                "{name}: {} object(s) refused for layout changes in the update's headers: judging their own .c changes alone",
                units.len()
            ));
            let names: Vec<String> = units.iter().map(|u| u.object.clone()).collect();
            let compiled =
                compiled_with(&tree, &own, &names, &|m| progress(&format!("{name}: {m}")))?;
            let again = judge_all(&judge, &units, &originals, &compiled, &|m| {
                progress(&format!("{name}: {m}"))
            });
            for (k, (verdict, live)) in again.into_iter().enumerate() {
                if let (Verdict::Live { .. }, Some(mut l)) = (&verdict, live) {
                    let i = retry[k];
                    let Verdict::Refused { reasons } = &judged[i].0 else {
                        continue;
                    };
                    l.note = Some(format!(
                        "live with its own change only ({}); the update's header changes it includes are left to a reboot: {}",
                        units[k].files.join(", "),
                        reasons
                            .iter()
                            .map(|r| format!("{} ({})", r.subject, r.file))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    l.files = units[k].files.clone();
                    judged[i] = (verdict, Some(l));
                }
            }
        }

        keep_providers(&mut judged)?;
        let mut live = Vec::new();
        for (u, (verdict, l)) in in_scope.iter().zip(judged) {
            let (files, note) = match &l {
                Some(l) => (l.files.clone(), l.note.clone()),
                None => (u.files.clone(), None),
            };
            let patch = matches!(verdict, Verdict::Live { .. })
                .then(|| write_patch(staging, &name, &u.object, &files, &texts))
                .transpose()?;
            objects.push(ObjectEntry {
                object: u.object.clone(),
                module: originals[u.object.as_str()].0.objname.clone(),
                files,
                verdict,
                patch,
                note,
            });
            if let Some(l) = l {
                live.push(l);
            }
        }
        if opts.build {
            module = Some(cumulative(
                opts, &tree, &symbols, live, &objects, &texts, staging, progress,
            )?);
        }
    } else if opts.build {
        module = Some(ModuleEntry::nothing(
            update::module_name(&opts.to),
            &opts.to,
        ));
    }
    let (counts, objects) = report::finish(objects);
    if let Some(m) = &mut module {
        let (left, review) = report::left_out(&objects);
        m.left_out = left;
        m.review = review;
    }
    Ok(ReleaseReport {
        release: name,
        source_version,
        counts,
        objects,
        headers: header_entries,
        other_files,
        other_arch_files,
        module,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A unit judged live: what goes into the module, and why it differs from
/// the whole update when it does.
struct Live {
    unit: suture_build::LiveUnit,
    warnings: Vec<String>,
    /// The update's files behind it (its own `.c` only, when [`note`] says so).
    files: Vec<String>,
    note: Option<String>,
    /// For a unit that only adds global functions: their names. It is
    /// live only if another live unit calls one ([`suture_build::provides`]).
    provides: Option<std::collections::BTreeSet<String>>,
}

/// Units that only add global functions become live when a live unit calls
/// one of them (the update's helper in vmlinux that its module changes
/// call), and stay no change otherwise.
fn keep_providers(judged: &mut [(Verdict, Option<Live>)]) -> Result<()> {
    let live: Vec<&[u8]> = judged
        .iter()
        .filter_map(|(v, l)| match (v, l) {
            (Verdict::Live { .. }, Some(l)) => Some(l.unit.klp_object.as_slice()),
            _ => None,
        })
        .collect();
    let offered: Vec<(usize, &[u8], &std::collections::BTreeSet<String>)> = judged
        .iter()
        .enumerate()
        .filter_map(|(i, (_, l))| {
            let l = l.as_ref()?;
            Some((i, l.unit.klp_object.as_slice(), l.provides.as_ref()?))
        })
        .collect();
    let pairs: Vec<(&[u8], &std::collections::BTreeSet<String>)> =
        offered.iter().map(|&(_, o, p)| (o, p)).collect();
    let decided = suture_build::provides::needed(&live, &pairs)?;
    let at: Vec<usize> = offered.iter().map(|&(i, _, _)| i).collect();
    for (i, used) in at.into_iter().zip(decided) {
        let (verdict, live) = &mut judged[i];
        match (used, live.as_mut()) {
            (Some(used), Some(l)) => {
                *verdict = Verdict::Live {
                    functions: Vec::new(),
                    new_functions: l.unit.new_functions.clone(),
                };
                l.note = Some(format!(
                    "live for its new function(s) {}, which other objects of the update call",
                    used.join(", ")
                ));
            }
            _ => *live = None,
        }
    }
    Ok(())
}

/// Whether a verdict is a refusal for layout changes alone.
fn layout_only(j: &(Verdict, Option<Live>)) -> bool {
    matches!(&j.0, Verdict::Refused { reasons } if !reasons.is_empty() && reasons.iter().all(|r| r.layout))
}

/// Applies `patches` to the tree, compiles `units` ([`compile_each`]) and
/// puts the tree back before anything else can fail.
fn compiled_with(
    tree: &Tree,
    patches: &[FilePatch],
    units: &[String],
    progress: &dyn Fn(&str),
) -> Result<HashMap<String, std::result::Result<Vec<u8>, String>>> {
    let applied = tree.apply(patches)?;
    let compiled = compile_each(tree, units, progress);
    applied.restore()?;
    compiled
}

/// Each unit's verdict from its original and its compiled update.
fn judge_all(
    judge: &Judge,
    units: &[Unit],
    originals: &HashMap<&str, &(suture_kernel::ObjectInfo, Vec<u8>)>,
    compiled: &HashMap<String, std::result::Result<Vec<u8>, String>>,
    progress: &dyn Fn(&str),
) -> Vec<(Verdict, Option<Live>)> {
    let start = Instant::now();
    let total = units.len();
    let mut out = Vec::new();
    for (i, u) in units.iter().enumerate() {
        let (info, orig) = originals[u.object.as_str()];
        let source = u.object.replace(".o", ".c");
        let v = match &compiled[&u.object] {
            Err(first_error) => (
                Verdict::DoesNotCompile {
                    first_error: first_error.clone(),
                },
                None,
            ),
            Ok(patched) => match judge.unit(info, orig, patched) {
                Err(e) => (
                    Verdict::Failed {
                        error: format!("{e:#}"),
                    },
                    None,
                ),
                Ok(j) => match j.verdict {
                    Judged::NoChange => (Verdict::NoChange, None),
                    Judged::InitExitOnly(r) => (
                        Verdict::InitExitOnly {
                            reasons: r.into_iter().map(|x| reason(&source, x, false)).collect(),
                        },
                        None,
                    ),
                    Judged::Refused(r) => (
                        Verdict::Refused {
                            reasons: r.into_iter().map(|(f, x)| reason(&f, x, false)).collect(),
                        },
                        None,
                    ),
                    Judged::LayoutChanged(r) => (
                        Verdict::Refused {
                            reasons: r.into_iter().map(|(f, x)| reason(&f, x, true)).collect(),
                        },
                        None,
                    ),
                    Judged::Live(l) => (
                        Verdict::Live {
                            functions: l.replaced.iter().map(|f| f.function.clone()).collect(),
                            new_functions: l.new_functions.clone(),
                        },
                        Some(Live {
                            unit: *l,
                            warnings: j.warnings,
                            files: u.files.clone(),
                            note: None,
                            provides: None,
                        }),
                    ),
                    // No change unless a live unit calls what it adds.
                    Judged::NewOnly(p) => (
                        Verdict::NoChange,
                        Some(Live {
                            unit: p.unit,
                            warnings: j.warnings,
                            files: u.files.clone(),
                            note: None,
                            provides: Some(p.provides),
                        }),
                    ),
                },
            },
        };
        out.push(v);
        if (i + 1) % 25 == 0 || i + 1 == total {
            progress(&elapsed_line(start, i + 1, total, "judged"));
        }
    }
    out
}

fn reason(file: &str, x: suture_build::Refusal, layout: bool) -> Reason {
    Reason {
        file: file.to_string(),
        subject: x.subject,
        reason: x.reason,
        layout,
    }
}

/// Compiles every unit with the update applied: in batches, and a batch
/// that fails unit by unit, so that each unit that does not compile gets
/// its own first error while the others go on. Returns each unit's object
/// or first error.
fn compile_each(
    tree: &Tree,
    units: &[String],
    progress: &dyn Fn(&str),
) -> Result<HashMap<String, std::result::Result<Vec<u8>, String>>> {
    let start = Instant::now();
    let batch = (units.len().div_ceil(20)).clamp(8, 64);
    let mut out = HashMap::new();
    let mut done = 0;
    for chunk in units.chunks(batch) {
        let first_error = |e: &anyhow::Error| {
            e.downcast_ref::<suture_kernel::tree::CommandFailed>()
                .map(|c| {
                    c.first_error
                        .clone()
                        .unwrap_or_else(|| c.tail.lines().last().unwrap_or("").to_string())
                })
        };
        match tree.compile(chunk) {
            Ok(()) => {
                for u in chunk {
                    out.insert(u.clone(), Ok(fs::read(tree.object_path(u))?));
                }
            }
            Err(e) => {
                // Not a compiler's error (make itself, the tree): fatal.
                first_error(&e).ok_or(e)?;
                for u in chunk {
                    let r = match tree.compile(std::slice::from_ref(u)) {
                        Ok(()) => Ok(fs::read(tree.object_path(u))?),
                        Err(e) => Err(first_error(&e).ok_or(e)?),
                    };
                    out.insert(u.clone(), r);
                }
            }
        }
        done += chunk.len();
        progress(&elapsed_line(
            start,
            done,
            units.len(),
            "compiled with the update",
        ));
    }
    Ok(out)
}

/// Writes `patches/RELEASE/OBJECT.patch` (the object's `.o` replaced by
/// `.patch`): the update's diffs of the files behind the object, usable with
/// `suture build`. Returns its path relative to the output directory.
fn write_patch(
    staging: &Path,
    release: &str,
    object: &str,
    files: &[String],
    texts: &HashMap<String, String>,
) -> Result<String> {
    if !suture_kernel::kbuild::is_tree_path(object) {
        bail!("{object:?} is not a path inside the tree");
    }
    let rel = format!(
        "patches/{release}/{}.patch",
        object.strip_suffix(".o").unwrap_or(object)
    );
    let path = staging.join(&rel);
    fs::create_dir_all(path.parent().unwrap_or(staging))?;
    let text: String = files
        .iter()
        .filter_map(|f| texts.get(f))
        .map(String::as_str)
        .collect();
    fs::write(&path, text)?;
    Ok(rel)
}

/// The cumulative module of every live-patchable object of the release
/// (atomic replace), recording the update's version as its effective source
/// version, the objects it covers and how many it leaves to a reboot.
#[allow(clippy::too_many_arguments)]
fn cumulative(
    opts: &TriageOptions,
    tree: &Tree,
    symbols: &SymbolSource,
    live: Vec<Live>,
    objects: &[ObjectEntry],
    texts: &HashMap<String, String>,
    staging: &Path,
    progress: &dyn Fn(&str),
) -> Result<ModuleEntry> {
    let release = &tree.release.name.release;
    let name = update::module_name(&opts.to);
    let mut entry = ModuleEntry::nothing(name.clone(), &opts.to);
    entry.covers = live.iter().map(|l| l.unit.object.clone()).collect();
    entry.warnings = live
        .iter()
        .flat_map(|l| l.warnings.iter().cloned())
        .collect();
    if live.is_empty() {
        return Ok(entry);
    }
    // The patch the module carries, for its recorded sha256 and for review.
    let mut files: Vec<&String> = objects
        .iter()
        .filter(|o| entry.covers.contains(&o.object))
        .flat_map(|o| &o.files)
        .collect();
    files.sort();
    files.dedup();
    let dir = staging.join("modules").join(release);
    fs::create_dir_all(&dir)?;
    let cumulative_patch = dir.join(format!("{name}.patch"));
    fs::write(
        &cumulative_patch,
        files
            .iter()
            .filter_map(|f| texts.get(*f))
            .map(String::as_str)
            .collect::<String>(),
    )?;
    let (mut live_objects, mut reboot) = (0, 0);
    for o in objects {
        if matches!(o.verdict, Verdict::Live { .. }) {
            live_objects += 1;
        } else if o.verdict.needs_reboot() {
            reboot += 1;
        }
    }
    let mut extra = vec![
        (modinfo::SOURCE_VERSION.to_string(), opts.to.clone()),
        (modinfo::UPDATE_LIVE.to_string(), live_objects.to_string()),
        (modinfo::UPDATE_REBOOT.to_string(), reboot.to_string()),
    ];
    extra.extend(
        entry
            .covers
            .iter()
            .map(|o| (modinfo::OBJECT.to_string(), o.clone())),
    );
    let output = dir.join(format!("{name}.ko"));
    let bopts = suture_build::BuildOptions {
        patches: vec![cumulative_patch],
        release: release.clone(),
        output: Some(output.clone()),
        name: Some(name.clone()),
        kallsyms: None,
        replace: true,
        cache: opts.cache.clone(),
        keep_work: false,
        states: vec![],
        sign: None,
        cves: vec![],
        description: Some(format!(
            "{} {} cumulative ({} objects)",
            tree.release.source_package(),
            opts.to,
            entry.covers.len()
        )),
        module_src: None,
        max_units: None,
    };
    let work = tempfile::Builder::new()
        .prefix("triage-")
        .tempdir_in(tree.dir.parent().unwrap_or(&tree.dir))?;
    progress(&format!(
        "{release}: linking {name} from {} object(s)",
        entry.covers.len()
    ));
    match suture_build::link_module(
        &bopts,
        tree,
        symbols,
        live.into_iter().map(|l| l.unit).collect(),
        &extra,
        &name,
        &output,
        work.path(),
        progress,
    ) {
        Ok(r) => {
            entry.warnings.extend(r.warnings);
            entry.path = Some(format!("modules/{release}/{name}.ko"));
        }
        Err(e) => entry.error = Some(format!("{e:#}")),
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::write::{Object as Out, Symbol, SymbolSection};
    use object::{SymbolFlags, SymbolKind, SymbolScope};

    /// A klp object defining `def` globally and referencing `uses`.
    fn klp(def: &str, uses: &str) -> Vec<u8> {
        let mut o = Out::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let text = o.add_section(Vec::new(), b".text".to_vec(), object::SectionKind::Text);
        o.append_section_data(text, &[0xc3], 1);
        for (name, section) in [
            (def, SymbolSection::Section(text)),
            (uses, SymbolSection::Undefined),
        ] {
            o.add_symbol(Symbol {
                name: name.as_bytes().to_vec(),
                value: 0,
                size: 0,
                kind: SymbolKind::Text,
                scope: SymbolScope::Linkage,
                weak: false,
                section,
                flags: SymbolFlags::None,
            });
        }
        o.write().unwrap()
    }

    fn judged(
        object: &str,
        klp_object: Vec<u8>,
        provides: Option<&str>,
    ) -> (Verdict, Option<Live>) {
        let verdict = match provides {
            Some(_) => Verdict::NoChange,
            None => Verdict::Live {
                functions: vec!["patched".into()],
                new_functions: vec![],
            },
        };
        let unit = suture_build::LiveUnit {
            object: object.into(),
            objname: "vmlinux".into(),
            klp_object,
            funcs: vec![],
            replaced: vec![],
            new_functions: provides.into_iter().map(String::from).collect(),
            callbacks: vec![],
            verified: 0,
        };
        let live = Live {
            unit,
            warnings: vec![],
            files: vec![object.replace(".o", ".c")],
            note: None,
            provides: provides.map(|p| [p.to_string()].into()),
        };
        (verdict, Some(live))
    }

    #[test]
    fn a_unit_that_only_adds_a_function_is_live_when_a_live_unit_calls_it() {
        let mut j = vec![
            judged(
                "net/netfilter/nft_log.o",
                klp("patched", "audit_log_nf_skb"),
                None,
            ),
            judged(
                "kernel/audit.o",
                klp("audit_log_nf_skb", "printk"),
                Some("audit_log_nf_skb"),
            ),
            judged(
                "lib/unused.o",
                klp("nobody_calls_me", "printk"),
                Some("nobody_calls_me"),
            ),
        ];
        keep_providers(&mut j).unwrap();
        assert_eq!(
            j[1].0,
            Verdict::Live {
                functions: vec![],
                new_functions: vec!["audit_log_nf_skb".into()]
            }
        );
        let note = j[1].1.as_ref().unwrap().note.as_deref().unwrap();
        assert!(note.contains("audit_log_nf_skb"), "{note}");
        assert_eq!(j[2].0, Verdict::NoChange);
        assert!(
            j[2].1.is_none(),
            "a provider nothing calls is not in the module"
        );
        assert!(matches!(j[0].0, Verdict::Live { .. }));
    }
}
