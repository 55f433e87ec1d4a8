//! `suture status`: the host's effective patch level (release, build-id,
//! patches applied, the CVEs they fix), the transition in progress with the
//! tasks holding it up, and the same as a node_exporter textfile.

use crate::modinfo::SutureMeta;
use crate::state::{Installed, StateDir};
use crate::sysfs::{self, PatchState, StalledTask};
use crate::{Host, HostError};
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub release: String,
    /// The running kernel's GNU build-id (`/sys/kernel/notes`).
    pub build_id: Option<String>,
    /// `RELEASE` plus the applied patches' names: what `uptrack-uname -r`
    /// gives for Ksplice, the effective kernel a host runs.
    pub effective_version: String,
    pub patches: Vec<PatchStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transition: Option<TransitionStatus>,
    /// CVE ids fixed by the patches that are applied (enabled, transition
    /// finished), from their build-time metadata.
    pub cves: Vec<String>,
    /// The distribution update an applied cumulative patch (`suture triage
    /// --build`) brings the running code to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateStatus>,
    /// Installed for the running release but not loaded.
    pub installed_not_loaded: Vec<String>,
    /// Set aside by the crash-loop guard.
    pub skipped: Vec<Installed>,
    /// Patches of the running release waiting for confirmation.
    pub pending: Vec<String>,
    /// Installed patches whose state cannot be read: not loaded at boot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<Installed>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PatchStatus {
    #[serde(flatten)]
    pub state: PatchState,
    /// Enabled and the transition finished: every task runs the new code.
    pub applied: bool,
    /// Installed under the state directory for this release.
    pub installed: bool,
    /// Metadata from the installed file; present only when its srcversion
    /// equals the loaded module's (or one of them has none), so a stale
    /// file does not describe a different loaded build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<SutureMeta>,
}

/// What an applied cumulative patch says of its update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdateStatus {
    /// The update's source version: the effective source version of the
    /// running code.
    pub source_version: String,
    pub patch: String,
    /// Of the update's objects for this release: how many are live...
    pub objects_live: u32,
    /// ... and how many still need a reboot into the updated release.
    pub objects_need_reboot: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct TransitionStatus {
    pub patch: String,
    /// `patching` (enabled=1) or `unpatching` (enabled=0).
    pub direction: String,
    /// Tasks not yet switched, with their kernel stacks.
    pub tasks: Vec<StalledTask>,
}

impl Host {
    /// Everything `suture status` shows. `state` adds what is installed.
    pub fn status(&self, state: Option<&StateDir>) -> Result<Status, HostError> {
        let release = self
            .kernel
            .release()
            .map_err(|e| HostError::io("uname".into(), &e))?;
        let list = self.list()?;
        let installed: Vec<Installed> = match state {
            Some(s) => s
                .installed(&release)
                .map_err(|e| crate::state::state_unreadable(s, &e))?,
            None => vec![],
        };
        let mut patches = Vec::new();
        let mut transition = None;
        for p in list {
            let inst = installed.iter().find(|i| i.name == p.name);
            let meta = inst
                .filter(|i| {
                    i.srcversion.is_none()
                        || p.module.srcversion.is_none()
                        || i.srcversion == p.module.srcversion
                })
                .and_then(|i| i.meta.clone());
            if p.active && p.transition == Some(true) && transition.is_none() {
                let target = i32::from(p.enabled == Some(true));
                let names = sysfs::patched_function_names(&p);
                transition = Some(TransitionStatus {
                    patch: p.name.clone(),
                    direction: if target == 1 {
                        "patching"
                    } else {
                        "unpatching"
                    }
                    .into(),
                    tasks: sysfs::stalled_tasks(&self.root, target, &names, Some(&p.name)),
                });
            }
            patches.push(PatchStatus {
                applied: p.active && p.enabled == Some(true) && p.transition == Some(false),
                installed: inst.is_some(),
                meta,
                state: p,
            });
        }
        let mut cves: Vec<String> = patches
            .iter()
            .filter(|p| p.applied)
            .flat_map(|p| p.meta.iter().flat_map(|m| m.cves.iter().cloned()))
            .collect();
        cves.sort();
        cves.dedup();
        let applied: Vec<&str> = patches
            .iter()
            .filter(|p| p.applied)
            .map(|p| p.state.name.as_str())
            .collect();
        let effective_version = if applied.is_empty() {
            release.clone()
        } else {
            format!("{release}+{}", applied.join("+"))
        };
        // Replace mode keeps one cumulative patch applied; were there
        // several, the last loaded is the one in force.
        let update = patches.iter().rev().filter(|p| p.applied).find_map(|p| {
            let m = p.meta.as_ref()?;
            Some(UpdateStatus {
                source_version: m.source_version.clone()?,
                patch: p.state.name.clone(),
                objects_live: m.update_live.unwrap_or(0),
                objects_need_reboot: m.update_reboot.unwrap_or(0),
            })
        });
        Ok(Status {
            update,
            build_id: sysfs::running_build_id(&self.root),
            effective_version,
            transition,
            cves,
            installed_not_loaded: installed
                .iter()
                .filter(|i| {
                    !patches
                        .iter()
                        .any(|p| p.state.name == i.name && p.state.module.loaded)
                })
                .map(|i| i.name.clone())
                .collect(),
            pending: installed
                .iter()
                .filter(|i| i.pending.is_some())
                .map(|i| i.name.clone())
                .collect(),
            skipped: installed
                .iter()
                .filter(|i| i.skipped.is_some())
                .cloned()
                .collect(),
            unreadable: installed
                .into_iter()
                .filter(|i| i.guard == crate::state::Guard::Unreadable)
                .collect(),
            patches,
            release,
        })
    }
}

/// Escapes a label value for the exposition format: backslash, double
/// quote and newline.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The status in Prometheus' text exposition format (version 0.0.4), for
/// node_exporter's textfile collector.
pub fn prometheus_text(s: &Status) -> String {
    let mut o = String::new();
    let family = |o: &mut String, name: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} gauge");
    };
    family(
        &mut o,
        "suture_kernel_info",
        "Running kernel release, build-id and effective patch level.",
    );
    let _ = writeln!(
        o,
        "suture_kernel_info{{release=\"{}\",build_id=\"{}\",effective_version=\"{}\"}} 1",
        label(&s.release),
        label(s.build_id.as_deref().unwrap_or("")),
        label(&s.effective_version)
    );
    family(
        &mut o,
        "suture_patches_applied",
        "Livepatches enabled with their transition finished.",
    );
    let _ = writeln!(
        o,
        "suture_patches_applied {}",
        s.patches.iter().filter(|p| p.applied).count()
    );
    family(
        &mut o,
        "suture_patch_applied",
        "1 when the livepatch is enabled and its transition finished, else 0.",
    );
    for p in &s.patches {
        let _ = writeln!(
            o,
            "suture_patch_applied{{patch=\"{}\",installed=\"{}\"}} {}",
            label(&p.state.name),
            p.installed,
            u8::from(p.applied)
        );
    }
    family(
        &mut o,
        "suture_cve_fixed",
        "CVE fixed by an applied livepatch (from its build metadata).",
    );
    for p in s.patches.iter().filter(|p| p.applied) {
        for c in p.meta.iter().flat_map(|m| &m.cves) {
            let _ = writeln!(
                o,
                "suture_cve_fixed{{cve=\"{}\",patch=\"{}\"}} 1",
                label(c),
                label(&p.state.name)
            );
        }
    }
    if let Some(u) = &s.update {
        family(
            &mut o,
            "suture_update_objects",
            "Objects of the distribution update an applied cumulative livepatch carries (live) or leaves to a reboot (reboot).",
        );
        for (state, n) in [("live", u.objects_live), ("reboot", u.objects_need_reboot)] {
            let _ = writeln!(
                o,
                "suture_update_objects{{source_version=\"{}\",patch=\"{}\",state=\"{state}\"}} {n}",
                label(&u.source_version),
                label(&u.patch)
            );
        }
    }
    family(
        &mut o,
        "suture_transition_in_progress",
        "1 while a livepatch transition is in progress.",
    );
    let _ = writeln!(
        o,
        "suture_transition_in_progress {}",
        u8::from(s.transition.is_some())
    );
    family(
        &mut o,
        "suture_transition_blocking_tasks",
        "Tasks not yet switched by the transition in progress.",
    );
    let _ = writeln!(
        o,
        "suture_transition_blocking_tasks {}",
        s.transition.as_ref().map_or(0, |t| t.tasks.len())
    );
    family(
        &mut o,
        "suture_patches_installed_not_loaded",
        "Installed for the running release but not loaded.",
    );
    let _ = writeln!(
        o,
        "suture_patches_installed_not_loaded {}",
        s.installed_not_loaded.len()
    );
    family(
        &mut o,
        "suture_patches_skipped",
        "Installed patches set aside by the crash-loop guard.",
    );
    let _ = writeln!(o, "suture_patches_skipped {}", s.skipped.len());
    family(
        &mut o,
        "suture_patches_pending",
        "Installed patches loaded but not yet confirmed by the crash-loop guard.",
    );
    let _ = writeln!(o, "suture_patches_pending {}", s.pending.len());
    family(
        &mut o,
        "suture_patches_unreadable",
        "Installed patches whose state files cannot be read: not loaded at boot.",
    );
    let _ = writeln!(o, "suture_patches_unreadable {}", s.unreadable.len());
    o
}

/// Human-readable status.
pub fn format_status(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "kernel:    {} (build-id {})",
        s.release,
        s.build_id.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(o, "effective: {}", s.effective_version);
    if let Some(u) = &s.update {
        let _ = writeln!(
            o,
            "source:    {} (cumulative patch {}): {} object(s) of the update live, {} need a reboot",
            u.source_version, u.patch, u.objects_live, u.objects_need_reboot
        );
    }
    let _ = writeln!(
        o,
        "CVEs fixed: {}",
        if s.cves.is_empty() {
            "none recorded".to_string()
        } else {
            s.cves.join(", ")
        }
    );
    if s.patches.is_empty() {
        let _ = writeln!(o, "patches:   none loaded");
    }
    for p in &s.patches {
        let state = if !p.state.active {
            "disabled (module still loaded)"
        } else if p.state.transition == Some(true) {
            if p.state.enabled == Some(true) {
                "patching (in transition)"
            } else {
                "unpatching (in transition)"
            }
        } else if p.applied {
            "applied"
        } else {
            "disabled"
        };
        let _ = write!(o, "patch {}: {state}", p.state.name);
        if p.installed {
            let _ = write!(o, ", installed");
        }
        if let Some(m) = &p.meta {
            if let Some(d) = &m.description {
                let _ = write!(o, " - {d}");
            }
            if !m.cves.is_empty() {
                let _ = write!(o, " [{}]", m.cves.join(", "));
            }
        }
        o.push('\n');
    }
    if let Some(t) = &s.transition {
        let _ = writeln!(
            o,
            "transition: {} is {}; {} task(s) not yet switched:",
            t.patch,
            t.direction,
            t.tasks.len()
        );
        for task in &t.tasks {
            let _ = writeln!(
                o,
                "  pid {} tid {} {:?} blocked in {}{}",
                task.pid,
                task.tid,
                task.comm,
                task.blocking_function.as_deref().unwrap_or("?"),
                if task.patched_on_stack.is_empty() {
                    String::new()
                } else {
                    format!(" (patched on stack: {})", task.patched_on_stack.join(", "))
                }
            );
            for f in &task.stack {
                let _ = writeln!(o, "      {f}");
            }
        }
    }
    for n in &s.installed_not_loaded {
        let _ = writeln!(o, "installed, not loaded: {n}");
    }
    for i in &s.skipped {
        let _ = writeln!(
            o,
            "SKIPPED by the crash-loop guard: {}: {}",
            i.name,
            i.skipped.as_ref().map_or("", |s| s.reason.as_str())
        );
    }
    for n in &s.pending {
        let _ = writeln!(o, "pending confirmation: {n}");
    }
    for i in &s.unreadable {
        let _ = writeln!(
            o,
            "UNREADABLE state, not loaded at boot: {}: {}",
            i.name,
            i.unreadable.join("; ")
        );
    }
    o
}
