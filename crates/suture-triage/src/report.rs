//! The triage report: one verdict per object, grouped by the module the
//! object goes into, with counts, and its human rendering. No I/O. The JSON
//! schema is documented in the README (`suture triage`).

use serde::Serialize;
use std::collections::BTreeMap;

/// One reason a change cannot go live, as `suture build` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// The file the reason is about (a header for a layout change).
    pub file: String,
    /// The function, section or type.
    pub subject: String,
    pub reason: String,
    /// A struct or union layout the update changes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub layout: bool,
}

/// What becomes of one object of the release under the update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Its changed and new functions can go live.
    Live {
        functions: Vec<String>,
        new_functions: Vec<String>,
    },
    /// The update changes its source but not its code.
    NoChange,
    /// The release's configuration does not build it.
    NotBuilt { why: String },
    /// Only `__init`/`__exit` code changed: nothing in the running kernel to
    /// patch (a module's takes effect when the updated module is loaded).
    InitExitOnly { reasons: Vec<Reason> },
    /// Cannot be live-patched.
    Refused { reasons: Vec<Reason> },
    /// The update's source does not compile for this release.
    DoesNotCompile { first_error: String },
    /// Could not be judged (an error of suture or of the environment).
    Failed { error: String },
}

impl Verdict {
    /// The key counted in the report (`live`, `refused`, ...).
    pub fn key(&self) -> &'static str {
        match self {
            Verdict::Live { .. } => "live",
            Verdict::NoChange => "no_change",
            Verdict::NotBuilt { .. } => "not_built",
            Verdict::InitExitOnly { .. } => "init_exit_only",
            Verdict::Refused { .. } => "refused",
            Verdict::DoesNotCompile { .. } => "does_not_compile",
            Verdict::Failed { .. } => "failed",
        }
    }

    /// Whether the running kernel lacks the change until it reboots into the
    /// updated release.
    pub fn needs_reboot(&self) -> bool {
        matches!(
            self,
            Verdict::Refused { .. }
                | Verdict::DoesNotCompile { .. }
                | Verdict::Failed { .. }
                | Verdict::InitExitOnly { .. }
        )
    }

    fn detail(&self) -> String {
        // The first reason in full (the JSON has them all).
        let reasons = |r: &[Reason]| match r {
            [] => String::new(),
            [x] => format!("{}: {}", x.subject, x.reason),
            [x, rest @ ..] => format!("{}: {} (+{} more)", x.subject, x.reason, rest.len()),
        };
        match self {
            Verdict::Live {
                functions,
                new_functions,
            } => {
                let mut s = functions.join(", ");
                if !new_functions.is_empty() {
                    s.push_str(&format!(" (new: {})", new_functions.join(", ")));
                }
                s
            }
            Verdict::NoChange => String::new(),
            Verdict::NotBuilt { why } => why.clone(),
            Verdict::InitExitOnly { reasons: r } | Verdict::Refused { reasons: r } => reasons(r),
            Verdict::DoesNotCompile { first_error } => first_error.clone(),
            Verdict::Failed { error } => error.clone(),
        }
    }
}

/// The order verdicts are counted and shown in.
pub const KEYS: [&str; 7] = [
    "live",
    "no_change",
    "not_built",
    "init_exit_only",
    "refused",
    "does_not_compile",
    "failed",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectEntry {
    /// `fs/ext4/inode.o`
    pub object: String,
    /// `vmlinux` or the module's name; empty when the release does not build it.
    pub module: String,
    /// The update's changed files behind it (its `.c`, a `.c` it includes,
    /// headers it includes).
    pub files: Vec<String>,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// `patches/RELEASE/OBJECT.patch` (relative to the output directory),
    /// for a live-patchable object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Why the verdict is not the whole update's (live with the object's own
    /// change alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A changed header: how many units of the release (in scope) include it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderEntry {
    pub header: String,
    pub units: usize,
}

/// A changed file that is no object and no header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OtherFile {
    pub path: String,
    pub change: crate::update::Change,
    pub why: String,
}

/// The cumulative module of one release (`--build`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleEntry {
    /// Relative to the output directory; absent when the link failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub name: String,
    /// The update it brings the running kernel's code to (`suture status`
    /// reports it as the effective source version).
    pub source_version: String,
    pub covers: Vec<String>,
    /// Objects whose change needs a reboot, left out of the module.
    pub left_out: Vec<String>,
    /// Of those, the ones in a directory the module patches: a fix that
    /// spans them goes live only in part. Review before a rollout.
    pub review: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl ModuleEntry {
    /// A module of nothing yet (nothing live-patchable: not built).
    pub fn nothing(name: String, source_version: &str) -> ModuleEntry {
        ModuleEntry {
            path: None,
            name,
            source_version: source_version.to_string(),
            covers: vec![],
            left_out: vec![],
            review: vec![],
            error: None,
            warnings: vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReleaseReport {
    pub release: String,
    /// The release's own source version.
    pub source_version: String,
    pub counts: BTreeMap<String, usize>,
    /// Sorted by module, then object.
    pub objects: Vec<ObjectEntry>,
    pub headers: Vec<HeaderEntry>,
    pub other_files: Vec<OtherFile>,
    /// Files of other architectures the update changes (never built here).
    pub other_arch_files: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<ModuleEntry>,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub schema: u32,
    pub package: String,
    pub to_version: String,
    pub only: Vec<String>,
    pub releases: Vec<ReleaseReport>,
}

/// Counts by verdict (every key present) and the objects in report order.
pub fn finish(mut objects: Vec<ObjectEntry>) -> (BTreeMap<String, usize>, Vec<ObjectEntry>) {
    objects.sort_by(|a, b| {
        (a.module.is_empty(), &a.module, &a.object).cmp(&(
            b.module.is_empty(),
            &b.module,
            &b.object,
        ))
    });
    let mut counts: BTreeMap<String, usize> = KEYS.iter().map(|k| (k.to_string(), 0)).collect();
    for o in &objects {
        *counts.entry(o.verdict.key().to_string()).or_default() += 1;
    }
    (counts, objects)
}

/// The objects a cumulative module leaves to a reboot, and those to review
/// before a rollout: left out but in a directory the module patches (a fix
/// that spans them goes live only in part), or live with their own change
/// only (the update's header changes they include are not in the module).
pub fn left_out(objects: &[ObjectEntry]) -> (Vec<String>, Vec<String>) {
    let dir = |o: &str| {
        o.rsplit_once('/')
            .map(|(d, _)| d.to_string())
            .unwrap_or_default()
    };
    let patched: std::collections::HashSet<String> = objects
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Live { .. }))
        .map(|o| dir(&o.object))
        .collect();
    let out: Vec<String> = objects
        .iter()
        .filter(|o| o.verdict.needs_reboot())
        .map(|o| o.object.clone())
        .collect();
    let review = objects
        .iter()
        .filter(|o| {
            (o.verdict.needs_reboot() && patched.contains(&dir(&o.object))) || o.note.is_some()
        })
        .map(|o| o.object.clone())
        .collect();
    (out, review)
}

fn label(key: &str) -> &'static str {
    match key {
        "live" => "live-patchable",
        "no_change" => "no functional change",
        "not_built" => "not built by this release",
        "init_exit_only" => "init/exit code only",
        "refused" => "refused",
        "does_not_compile" => "does not compile",
        _ => "failed",
    }
}

/// The report for a person: per release, counts by verdict, the module,
/// then one line per object.
pub fn human(r: &Report) -> String {
    let mut s = String::new();
    for rel in &r.releases {
        s.push_str(&format!(
            "{} (source {}) -> {} {}{}: {} objects in {:.0}s\n",
            rel.release,
            rel.source_version,
            r.package,
            r.to_version,
            if r.only.is_empty() {
                String::new()
            } else {
                format!(", only {}", r.only.join(" "))
            },
            rel.objects.len(),
            rel.seconds
        ));
        for k in KEYS {
            s.push_str(&format!(
                "  {:<26} {:>5}\n",
                label(k),
                rel.counts.get(k).copied().unwrap_or(0)
            ));
        }
        if !rel.headers.is_empty() {
            s.push_str(&format!(
                "  {} changed header(s), compiled in the units that include them\n",
                rel.headers.len()
            ));
        }
        if !rel.other_files.is_empty() || rel.other_arch_files > 0 {
            s.push_str(&format!(
                "  {} other changed file(s) no livepatch carries, {} of other architectures\n",
                rel.other_files.len(),
                rel.other_arch_files
            ));
        }
        if let Some(m) = &rel.module {
            match (&m.path, &m.error) {
                (Some(p), _) => s.push_str(&format!(
                    "  module {p}: {} object(s), {} left out (need a reboot)\n",
                    m.covers.len(),
                    m.left_out.len()
                )),
                (None, Some(e)) => s.push_str(&format!("  module {}: not built: {e}\n", m.name)),
                (None, None) => s.push_str(&format!(
                    "  module {}: nothing live-patchable to build\n",
                    m.name
                )),
            }
            if !m.review.is_empty() {
                s.push_str(&format!(
                    "  review before a rollout (left out, in a directory the module patches): {}\n",
                    m.review.join(" ")
                ));
            }
        }
        let w = rel
            .objects
            .iter()
            .map(|o| o.object.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let mw = rel
            .objects
            .iter()
            .map(|o| o.module.len())
            .max()
            .unwrap_or(0)
            .max(6);
        for o in &rel.objects {
            let mut d = o.verdict.detail();
            if o.note.is_some() {
                d.push_str(
                    " [its own .c change only: the update's header changes stay for a reboot]",
                );
            }
            s.push_str(&format!(
                "  {:<w$}  {:<mw$}  {:<16}  {}\n",
                o.object,
                if o.module.is_empty() { "-" } else { &o.module },
                o.verdict.key(),
                d.lines().next().unwrap_or("")
            ));
        }
        for f in &rel.other_files {
            s.push_str(&format!("  {}: {}\n", f.path, f.why));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(object: &str, module: &str, verdict: Verdict) -> ObjectEntry {
        ObjectEntry {
            object: object.into(),
            module: module.into(),
            files: vec![object.replace(".o", ".c")],
            verdict,
            patch: None,
            note: None,
        }
    }

    fn live(f: &str) -> Verdict {
        Verdict::Live {
            functions: vec![f.into()],
            new_functions: vec![],
        }
    }

    fn refused(s: &str) -> Verdict {
        Verdict::Refused {
            reasons: vec![Reason {
                file: "x".into(),
                subject: s.into(),
                reason: "changed data".into(),
                layout: false,
            }],
        }
    }

    #[test]
    fn objects_are_grouped_by_module_and_every_verdict_is_counted() {
        let (counts, objects) = finish(vec![
            obj("net/ipv4/tcp.o", "vmlinux", live("tcp_x")),
            obj(
                "drivers/x/y.o",
                "",
                Verdict::NotBuilt {
                    why: "CONFIG_Y is not set".into(),
                },
            ),
            obj("fs/ext4/inode.o", "ext4", refused("ext4_table")),
            obj("fs/ext4/super.o", "ext4", live("ext4_fill_super")),
            obj("fs/proc/base.o", "vmlinux", Verdict::NoChange),
        ]);
        let order: Vec<&str> = objects.iter().map(|o| o.object.as_str()).collect();
        assert_eq!(
            order,
            [
                "fs/ext4/inode.o",
                "fs/ext4/super.o",
                "fs/proc/base.o",
                "net/ipv4/tcp.o",
                "drivers/x/y.o"
            ]
        );
        assert_eq!(counts["live"], 2);
        assert_eq!(counts["refused"], 1);
        assert_eq!(counts["not_built"], 1);
        assert_eq!(counts["no_change"], 1);
        assert_eq!(counts["failed"], 0);
        assert_eq!(counts.len(), KEYS.len());
    }

    #[test]
    fn refused_objects_beside_patched_ones_are_for_review() {
        let objects = vec![
            obj("fs/ext4/inode.o", "ext4", refused("ext4_table")),
            obj("fs/ext4/super.o", "ext4", live("ext4_fill_super")),
            obj(
                "net/core/dev.o",
                "vmlinux",
                Verdict::DoesNotCompile {
                    first_error: "e".into(),
                },
            ),
            obj("mm/slab.o", "vmlinux", Verdict::NoChange),
        ];
        let (out, review) = left_out(&objects);
        assert_eq!(out, ["fs/ext4/inode.o", "net/core/dev.o"]);
        assert_eq!(review, ["fs/ext4/inode.o"]);
        // Live with its own change only: to review too.
        let mut own = obj("kernel/fork.o", "vmlinux", live("copy_process"));
        own.note = Some("live with its own change only".into());
        let (out, review) = left_out(&[own]);
        assert!(out.is_empty());
        assert_eq!(review, ["kernel/fork.o"]);
    }

    #[test]
    fn the_json_names_each_verdict_and_its_detail() {
        let j =
            serde_json::to_value(obj("fs/ext4/inode.o", "ext4", refused("ext4_table"))).unwrap();
        assert_eq!(j["verdict"], "refused");
        assert_eq!(j["reasons"][0]["subject"], "ext4_table");
        assert_eq!(j["module"], "ext4");
        assert!(j.get("patch").is_none());
        let j = serde_json::to_value(obj("a/b.o", "vmlinux", Verdict::NoChange)).unwrap();
        assert_eq!(j["verdict"], "no_change");
    }

    #[test]
    fn the_human_table_has_counts_and_one_line_per_object() {
        let (counts, objects) = finish(vec![
            obj("fs/ext4/inode.o", "ext4", refused("ext4_table")),
            obj("fs/ext4/super.o", "ext4", live("ext4_fill_super")),
        ]);
        let r = Report {
            schema: 1,
            package: "linux-source-6.1".into(),
            to_version: "6.1.187-1".into(),
            only: vec!["fs".into()],
            releases: vec![ReleaseReport {
                release: "6.1.0-50-amd64".into(),
                source_version: "6.1.176-1".into(),
                counts,
                objects,
                headers: vec![],
                other_files: vec![],
                other_arch_files: 0,
                module: None,
                seconds: 12.0,
            }],
        };
        let h = human(&r);
        assert!(h.starts_with("6.1.0-50-amd64 (source 6.1.176-1) -> linux-source-6.1 6.1.187-1, only fs: 2 objects"), "{h}");
        assert!(h.contains("  live-patchable                 1\n"), "{h}");
        assert!(
            h.contains("fs/ext4/super.o  ext4    live              ext4_fill_super\n"),
            "{h}"
        );
        assert!(
            h.contains("fs/ext4/inode.o  ext4    refused           ext4_table: changed data\n"),
            "{h}"
        );
    }
}
