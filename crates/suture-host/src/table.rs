//! Listing loaded livepatches, and the table people read.

use crate::sysfs::{self};
use crate::*;

/// Renders `list` as a fixed-width table for people.
pub fn format_table(patches: &[PatchState]) -> String {
    if patches.is_empty() {
        return "no livepatches loaded\n".to_string();
    }
    let yn = |b: Option<bool>| match b {
        Some(true) => "1",
        Some(false) => "0",
        None => "-",
    };
    let mut rows = vec![[
        "NAME",
        "ENABLED",
        "TRANSITION",
        "OBJECTS (patched)",
        "FUNCTIONS",
        "MODULE",
    ]
    .map(String::from)];
    for p in patches {
        let objects = if p.active {
            p.objects
                .iter()
                .map(|o| format!("{}({})", o.name, yn(o.patched)))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            "disabled, module still loaded".to_string()
        };
        let funcs: usize = p.objects.iter().map(|o| o.functions.len()).sum();
        let mut module = Vec::new();
        if let Some(t) = &p.module.taint {
            module.push(format!("taint={t}"));
        }
        if let Some(r) = p.module.refcnt {
            module.push(format!("refcnt={r}"));
        }
        if let Some(s) = &p.module.srcversion {
            module.push(format!("srcversion={s}"));
        }
        rows.push([
            p.name.clone(),
            yn(p.enabled).into(),
            yn(p.transition).into(),
            objects,
            funcs.to_string(),
            module.join(" "),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

impl Host {
    /// Every active livepatch, plus loaded livepatch modules whose patch is
    /// disabled.
    pub fn list(&self) -> Result<Vec<PatchState>, HostError> {
        sysfs::list_patches(&self.root).map_err(|e| HostError::io("listing livepatches".into(), &e))
    }
}
