//! One compiled unit, judged: its layout checked, its symbols resolved, the
//! differ run, and the result checked against the running kernel. `suture
//! build` and `suture triage` share it, so a unit gets the same answer from
//! both.

use crate::{ibt, reproduces, sealed_pointers, Replaced, SymbolSource};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use suture_diff::{Outcome, Refusal};
use suture_kernel::{ObjectInfo, Tree};

/// What one unit contributes to a module: its klp object and what it replaces.
#[derive(Debug, Clone)]
pub struct LiveUnit {
    /// `fs/proc/cmdline.o`
    pub object: String,
    /// `vmlinux` or the module it is linked into.
    pub objname: String,
    pub klp_object: Vec<u8>,
    pub funcs: Vec<suture_klp::Func>,
    pub replaced: Vec<Replaced>,
    pub new_functions: Vec<String>,
    /// (kind, symbol) of the `SUTURE_*_CALLBACK()`s the unit declares.
    pub callbacks: Vec<(String, String)>,
    /// Functions checked byte-identical to the running kernel's (aliases
    /// included).
    pub verified: usize,
}

/// The verdict on one unit.
#[derive(Debug)]
pub enum Judged {
    Live(Box<LiveUnit>),
    NoChange,
    /// Only `__init`/`__exit` code changed.
    InitExitOnly(Vec<Refusal>),
    /// Each refusal with the file it is about.
    Refused(Vec<(String, Refusal)>),
    /// Only new global functions, nothing replaced: live if another unit of
    /// the patch calls them ([`crate::provides`]), else no change.
    NewOnly(Box<crate::provides::Provider>),
    /// Refused for struct or union layouts the patch changes (each with the
    /// file declaring it, a header mostly): triage tries such a unit's own
    /// `.c` change alone.
    LayoutChanged(Vec<(String, Refusal)>),
}

#[derive(Debug)]
pub struct Judgement {
    pub verdict: Judged,
    /// Said whatever the verdict (an alias dropped, layouts not checked, ...),
    /// each prefixed with the unit.
    pub warnings: Vec<String>,
}

/// What stays the same for every unit of one release.
pub struct Judge<'a> {
    pub symbols: &'a SymbolSource,
    entry_sizes: BTreeMap<String, usize>,
    objtool_at_link: bool,
    ibt_kernel: bool,
}

impl<'a> Judge<'a> {
    pub fn new(tree: &Tree, symbols: &'a SymbolSource) -> Result<Judge<'a>> {
        let config = std::fs::read_to_string(&tree.release.config)
            .with_context(|| format!("reading {}", tree.release.config.display()))?;
        Ok(Judge {
            symbols,
            entry_sizes: tree.entry_sizes()?,
            objtool_at_link: crate::objtool_runs_at_module_link(&config),
            ibt_kernel: suture_kernel::release::config_value(&config, "CONFIG_X86_KERNEL_IBT")
                .as_deref()
                == Some("y"),
        })
    }

    /// Judges one unit from its original and patched objects. An error is a
    /// unit that could not be judged (the build does not reproduce the
    /// kernel, the differ failed): not a refusal of the patch.
    pub fn unit(&self, info: &ObjectInfo, orig: &[u8], patched: &[u8]) -> Result<Judgement> {
        let source = info.object.replace(".o", ".c");
        let code = self.code(info, orig, patched, &source);
        // A struct or union whose layout the patch changes (issue 12.4)
        // refuses a unit whose code changed (or that the differ could not
        // judge): its new code would meet objects of the old layout. A unit
        // whose code is the same either way has nothing to patch, whatever
        // the headers it includes did (a stable update that grows struct
        // device recompiles thousands of units to the same code); init and
        // exit code do not run again.
        if let Ok(Judgement {
            verdict: Judged::NoChange | Judged::InitExitOnly(_),
            ..
        }) = &code
        {
            return code;
        }
        match suture_layout::compare(orig, patched) {
            Ok(changed) if !changed.is_empty() => {
                let mut refusals: Vec<(String, Refusal)> = Vec::new();
                for c in changed {
                    let file = c.file.clone().unwrap_or_else(|| source.clone());
                    let r = Refusal {
                        subject: c.subject(),
                        reason: c.reason(),
                    };
                    if !refusals
                        .iter()
                        .any(|(f, x)| *f == file && x.subject == r.subject)
                    {
                        refusals.push((file, r));
                    }
                }
                Ok(Judgement {
                    verdict: Judged::LayoutChanged(refusals),
                    warnings: vec![],
                })
            }
            Ok(_) => code,
            Err(e) => code.map(|mut j| {
                j.warnings
                    .push(format!("{}: struct layouts not checked: {e}", info.object));
                j
            }),
        }
    }

    /// The unit's code judged: symbols resolved, the differ run, its
    /// replaced functions checked against the running kernel.
    fn code(
        &self,
        info: &ObjectInfo,
        orig: &[u8],
        patched: &[u8],
        source: &str,
    ) -> Result<Judgement> {
        let source = source.to_string();
        let mut warnings = Vec::new();
        let symbols = self.symbols;
        let mut report = symbols.target(&info.objname, orig)?;
        warnings.extend(
            report
                .warnings
                .iter()
                .map(|w| format!("{}: {w}", info.object)),
        );
        symbols.add_new_references(&info.objname, patched, &mut report.target)?;
        let undecided: Vec<String> = report
            .unresolved
            .iter()
            .map(|u| format!("{}: {}", u.name, u.why))
            .collect();
        let dopts = suture_diff::Options {
            entry_sizes: self
                .entry_sizes
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            target: Some(report.target.clone()),
            objtool_at_link: self.objtool_at_link,
        };
        let outcome = suture_diff::diff(orig, patched, &dopts).with_context(|| {
            let mut c = format!("diffing {}", info.object);
            if !undecided.is_empty() {
                c.push_str(&format!(
                    " (symbols of {} whose instance could not be decided: {})",
                    info.objname,
                    undecided.join("; ")
                ));
            }
            c
        })?;
        let refused =
            |r: Vec<Refusal>| Judged::Refused(r.into_iter().map(|x| (source.clone(), x)).collect());
        let verdict = match outcome {
            Outcome::NoChange(_) => Judged::NoChange,
            Outcome::InitExitOnly(r) => Judged::InitExitOnly(r.refusals),
            Outcome::Refused(r) => refused(r.refusals),
            Outcome::Changes(p) => {
                let sealed = if info.objname == "vmlinux" && self.ibt_kernel {
                    sealed_pointers(&p.object, symbols)?
                } else {
                    Vec::new()
                };
                if !sealed.is_empty() {
                    return Ok(Judgement {
                        verdict: refused(
                            sealed
                                .iter()
                                .map(|t| Refusal {
                                    subject: t.name.clone(),
                                    reason: ibt::sealed_reason(t),
                                })
                                .collect(),
                        ),
                        warnings,
                    });
                }
                // A copy chosen among interchangeable ones is fine to call or
                // read, not to replace: the other units' callers would keep
                // theirs, and which is this unit's is unknown.
                let copies: Vec<Refusal> = p
                    .replaced
                    .iter()
                    .filter_map(|f| {
                        let d = report.decisions.iter().find(|d| {
                            d.name == f.name && d.how.starts_with("identical copies")
                        })?;
                        Some(Refusal {
                            subject: f.name.clone(),
                            reason: format!(
                                "the kernel has {} byte-identical copies of it and nothing tells which one is this file's: replacing one would leave this file's callers on another",
                                d.instances
                            ),
                        })
                    })
                    .collect();
                if !copies.is_empty() {
                    return Ok(Judgement {
                        verdict: refused(copies),
                        warnings,
                    });
                }
                let names: Vec<&str> = p.replaced.iter().map(|f| f.name.as_str()).collect();
                reproduces(&report, &info.object, &info.objname, &names)?;
                warnings.extend(
                    p.report
                        .warnings
                        .iter()
                        .map(|w| format!("{}: {w}", info.object)),
                );
                let (keep, aliases) = crate::one_per_address(orig, &p.replaced)?;
                for (dropped, kept) in aliases {
                    warnings.push(format!(
                        "{}: {dropped} is an alias of {kept} (same code): the patch redirects that code once, to {kept}'s replacement",
                        info.object
                    ));
                }
                let mut unit = LiveUnit {
                    object: info.object.clone(),
                    objname: info.objname.clone(),
                    klp_object: Vec::new(),
                    funcs: Vec::new(),
                    replaced: Vec::new(),
                    new_functions: p.report.new.clone(),
                    callbacks: p
                        .callbacks
                        .iter()
                        .map(|c| (c.kind.clone(), c.symbol.clone()))
                        .collect(),
                    verified: names.len(),
                };
                for f in keep {
                    unit.replaced.push(Replaced {
                        objname: info.objname.clone(),
                        function: f.name.clone(),
                        sympos: f.sympos,
                        source_file: source.clone(),
                    });
                    unit.funcs.push(suture_klp::Func {
                        old_name: f.name.clone(),
                        sympos: f.sympos,
                        symbol: f.symbol.clone(),
                    });
                }
                unit.klp_object = p.object;
                // New functions nothing in the unit calls may be called by
                // another unit; callbacks alone (state set up for a later
                // patch) are a patch.
                if unit.funcs.is_empty() && unit.callbacks.is_empty() {
                    let provides =
                        crate::provides::new_globals(&unit.klp_object, &unit.new_functions)?;
                    if provides.is_empty() {
                        Judged::NoChange
                    } else {
                        Judged::NewOnly(Box::new(crate::provides::Provider { unit, provides }))
                    }
                } else {
                    Judged::Live(Box::new(unit))
                }
            }
        };
        Ok(Judgement { verdict, warnings })
    }
}
