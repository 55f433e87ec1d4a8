//! `suture build PATCH --kernel R1 --kernel R2 ...`: one module per release,
//! the releases built side by side (each has its own tree, cache and lock),
//! and a report per release: built, refused (with the reasons), no change, or
//! not applicable (the patch does not apply to that release's source).

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use suture_build::{BuildError, BuildOptions, BuildReport, NotApplicable};

/// How one release's build ended.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PerRelease {
    Built {
        report: Box<BuildReport>,
    },
    Refused {
        reasons: Vec<String>,
    },
    NoChange {
        detail: String,
    },
    /// Only init/exit code changed: nothing in the running kernel to patch.
    InitExitOnly {
        reasons: Vec<String>,
    },
    /// `kind`: `does_not_apply` (a hunk's context is not there) or
    /// `no_such_file` (the release's source has no such file).
    NotApplicable {
        kind: &'static str,
        detail: String,
    },
    /// No changed file is built by the release's configuration.
    NotBuilt {
        files: Vec<String>,
    },
    /// The fix needs changes to other files this release lacks.
    NeedsOtherChanges {
        detail: String,
    },
    Error {
        detail: String,
    },
}

#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub release: String,
    #[serde(flatten)]
    pub result: PerRelease,
    pub seconds: f64,
}

/// Where release `r`'s module goes: `DIR/NAME-RELEASE.ko`.
pub fn output_for(dir: &Path, name: &str, release: &str) -> PathBuf {
    dir.join(format!("{name}-{release}.ko"))
}

pub fn classify(r: Result<BuildReport>) -> PerRelease {
    match r {
        Ok(report) => PerRelease::Built {
            report: Box::new(report),
        },
        Err(e) => {
            if let Some(BuildError::Refused(v)) = e.downcast_ref::<BuildError>() {
                let reasons = v
                    .iter()
                    .map(|(f, x)| format!("{f}: {}: {}", x.subject, x.reason))
                    .collect();
                PerRelease::Refused { reasons }
            } else if let Some(BuildError::InitExitOnly(v)) = e.downcast_ref::<BuildError>() {
                let reasons = v
                    .iter()
                    .map(|(f, x)| format!("{f}: {}: {}", x.subject, x.reason))
                    .collect();
                PerRelease::InitExitOnly { reasons }
            } else if let Some(BuildError::NotBuilt(files)) = e.downcast_ref::<BuildError>() {
                PerRelease::NotBuilt {
                    files: files.clone(),
                }
            } else if let Some(n @ BuildError::NeedsOtherChanges { .. }) =
                e.downcast_ref::<BuildError>()
            {
                PerRelease::NeedsOtherChanges {
                    detail: n.to_string(),
                }
            } else if let Some(nc @ BuildError::NoChange(_)) = e.downcast_ref::<BuildError>() {
                PerRelease::NoChange {
                    detail: nc.to_string(),
                }
            } else if let Some(na) = e.downcast_ref::<NotApplicable>() {
                let kind = match na.kind {
                    suture_build::NotApplicableKind::DoesNotApply => "does_not_apply",
                    suture_build::NotApplicableKind::NoSuchFile => "no_such_file",
                };
                PerRelease::NotApplicable {
                    kind,
                    detail: na.to_string(),
                }
            } else {
                PerRelease::Error {
                    detail: format!("{e:#}"),
                }
            }
        }
    }
}

/// The exit status of a build for several releases: 1 if any failed, else 2
/// if any was refused (or needs changes in other files), else 0 if any
/// module was built, else 3 (no change, not built or not applicable
/// everywhere).
pub fn exit_status(outcomes: &[Outcome]) -> i32 {
    let any = |f: fn(&PerRelease) -> bool| outcomes.iter().any(|o| f(&o.result));
    if any(|r| matches!(r, PerRelease::Error { .. })) {
        1
    } else if any(|r| {
        matches!(
            r,
            PerRelease::Refused { .. } | PerRelease::NeedsOtherChanges { .. }
        )
    }) {
        2
    } else if any(|r| matches!(r, PerRelease::Built { .. })) {
        0
    } else {
        3
    }
}

/// Builds `base` for each of `releases` in parallel threads; `out_dir` holds
/// the modules.
pub fn build_all(
    base: &BuildOptions,
    releases: &[String],
    out_dir: &Path,
    name: &str,
    start: Instant,
) -> Result<Vec<Outcome>> {
    let mut seen = std::collections::HashSet::new();
    for r in releases {
        if !seen.insert(r) {
            bail!("--kernel {r} is given twice");
        }
    }
    std::fs::create_dir_all(out_dir)
        .map_err(|e| anyhow::anyhow!("creating the output directory {}: {e}", out_dir.display()))?;
    let outcomes = std::thread::scope(|s| {
        let handles: Vec<_> = releases
            .iter()
            .map(|r| {
                let mut opts = base.clone();
                opts.release = r.clone();
                opts.output = Some(output_for(out_dir, name, r));
                s.spawn(move || {
                    let t = Instant::now();
                    let progress = |m: &str| {
                        eprintln!(
                            "[{:5.1}s] {}: {m}",
                            start.elapsed().as_secs_f64(),
                            opts.release
                        )
                    };
                    let result = classify(suture_build::build(&opts, &progress));
                    Outcome {
                        release: opts.release.clone(),
                        result,
                        seconds: t.elapsed().as_secs_f64(),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(releases)
            .map(|(h, r)| {
                h.join().unwrap_or_else(|_| Outcome {
                    release: r.clone(),
                    result: PerRelease::Error {
                        detail: "the build thread panicked".into(),
                    },
                    seconds: 0.0,
                })
            })
            .collect()
    });
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(result: PerRelease) -> Outcome {
        Outcome {
            release: "r".into(),
            result,
            seconds: 0.0,
        }
    }

    #[test]
    fn exit_status_orders_error_refused_built() {
        let na = || {
            o(PerRelease::NotApplicable {
                kind: "no_such_file",
                detail: "x".into(),
            })
        };
        let nc = || o(PerRelease::NoChange { detail: "x".into() });
        let err = || o(PerRelease::Error { detail: "x".into() });
        let refused = || {
            o(PerRelease::Refused {
                reasons: vec!["x".into()],
            })
        };
        assert_eq!(exit_status(&[na(), nc()]), 3);
        assert_eq!(exit_status(&[na(), refused()]), 2);
        assert_eq!(exit_status(&[refused(), err()]), 1);
    }

    #[test]
    fn outputs_are_per_release() {
        assert_eq!(
            output_for(Path::new("/o"), "livepatch_x", "6.12.117+deb12-amd64"),
            PathBuf::from("/o/livepatch_x-6.12.117+deb12-amd64.ko")
        );
    }
}
