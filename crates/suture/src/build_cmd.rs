use std::path::PathBuf;
use std::time::Instant;
use suture_build::{BuildError, BuildOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Unified diffs against the release's kernel source (`git diff` style paths).
    #[arg(required = true)]
    patches: Vec<PathBuf>,
    /// The Debian kernel release to build for, as `uname -r` prints it (6.1.0-56-amd64). Repeat it to
    /// build one module per release in one run (exit status: 1 if any failed, else 2 if any was refused,
    /// else 0 if any was built, else 3).
    #[arg(long = "kernel", value_name = "RELEASE", required = true)]
    kernel: Vec<String>,
    /// Where to write the module (default: NAME.ko in the current directory); with several --kernel, a
    /// directory that receives NAME-RELEASE.ko for each release (default: the current directory).
    #[arg(short = 'o', long = "output", value_name = "FILE.ko")]
    output: Option<PathBuf>,
    /// Module name, and so /sys/kernel/livepatch/NAME (default: livepatch_ + the first patch's file name).
    #[arg(long)]
    name: Option<String>,
    /// A copy of /proc/kallsyms from a host running RELEASE, used instead of the image's own tables.
    #[arg(long, value_name = "FILE")]
    kallsyms: Option<PathBuf>,
    /// Build a patch that stacks on loaded patches instead of replacing them.
    #[arg(long)]
    no_replace: bool,
    /// Record a livepatch state (struct klp_state) ID:VERSION in the patch; repeatable. The kernel then
    /// refuses a later replacing patch that drops the state or lowers its version.
    #[arg(long = "state", value_name = "ID:VERSION", value_parser = parse_state)]
    states: Vec<suture_build::State>,
    /// Keep the work directory (objects before and after, klp objects, kbuild files).
    #[arg(long)]
    keep_work: bool,
    /// Patch a module built out of tree from DIR (the patch applies to DIR).
    #[arg(long, value_name = "DIR")]
    module_src: Option<PathBuf>,
    /// A CVE id the patch fixes (repeatable); `suture status` reports them.
    #[arg(long = "cve", value_name = "CVE-YYYY-NNNN")]
    cves: Vec<String>,
    /// One line saying what the patch does; `suture status` reports it.
    #[arg(long)]
    description: Option<String>,
    /// Sign the module with this PEM private key (needs --sign-cert).
    #[arg(long, value_name = "KEY.pem", requires = "sign_cert")]
    sign_key: Option<PathBuf>,
    /// The X.509 certificate (PEM or DER) that goes with --sign-key.
    #[arg(long, value_name = "CERT.pem", requires = "sign_key")]
    sign_cert: Option<PathBuf>,
    /// Refuse, before compiling anything, a patch that needs more than N units compiled (a changed
    /// header is compiled in every unit of the release that includes it).
    #[arg(long, value_name = "N")]
    max_units: Option<usize>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_state(s: &str) -> Result<suture_build::State, String> {
    suture_build::parse_state(s).map_err(|e| format!("{e:#}"))
}

/// Checks `-o FILE.ko` before any work: its directory exists and is a
/// directory, and the file itself is not a directory.
fn check_output(out: &std::path::Path) -> anyhow::Result<()> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        anyhow::bail!(
            "-o {}: the directory {} does not exist or is not a directory",
            out.display(),
            dir.display()
        );
    }
    if out.is_dir() {
        anyhow::bail!(
            "-o {}: is a directory; give the module's file name (DIR/NAME.ko)",
            out.display()
        );
    }
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let releases = a.kernel.clone();
    if releases.len() == 1 {
        if let Some(out) = &a.output {
            check_output(out)?;
        }
    }
    let opts = BuildOptions {
        patches: a.patches,
        release: releases[0].clone(),
        output: a.output,
        name: a.name,
        kallsyms: a.kallsyms,
        replace: !a.no_replace,
        cache: suture_build::cache_root(),
        keep_work: a.keep_work,
        states: a.states,
        sign: a.sign_key.zip(a.sign_cert),
        cves: a.cves,
        description: a.description,
        module_src: a.module_src,
        max_units: a.max_units,
    };
    let start = Instant::now();
    if releases.len() > 1 {
        return run_many(&opts, &releases, a.json, start);
    }
    let progress = |msg: &str| eprintln!("[{:5.1}s] {msg}", start.elapsed().as_secs_f64());
    match suture_build::build(&opts, &progress) {
        Ok(r) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for w in &r.warnings {
                    eprintln!("warning: {w}");
                }
                for n in &r.not_built {
                    eprintln!("note: {n}: left out of the module");
                }
                println!(
                    "built {} in {:.1}s",
                    r.module.display(),
                    start.elapsed().as_secs_f64()
                );
                println!(
                    "  livepatch {} for {} (symbols: {})",
                    r.name, r.release, r.symbol_source
                );
                for f in &r.replaced {
                    let pos = if f.sympos == 0 {
                        String::new()
                    } else {
                        format!(",{}", f.sympos)
                    };
                    println!(
                        "  replaces {}:{}{} ({})",
                        f.objname, f.function, pos, f.source_file
                    );
                }
                for f in &r.new_functions {
                    println!("  adds     {f}");
                }
                for c in &r.callbacks {
                    println!("  callback {c}");
                }
                for s in &r.states {
                    println!("  state    {}:{}", s.id, s.version);
                }
                if !r.replace {
                    println!("  stacks on loaded patches (--no-replace)");
                }
            }
            Ok(0)
        }
        Err(e) if a.json => {
            // The same document a multi-release build gives per release;
            // an error (bad input, the environment) is `status: error`.
            let exit = match e.downcast_ref::<BuildError>() {
                Some(BuildError::Refused(_) | BuildError::NeedsOtherChanges { .. }) => 2,
                _ if is_outcome(&e) => 3,
                _ => 1,
            };
            if exit == 1 {
                eprintln!("error: {e:#}");
            } else {
                eprintln!("{e}");
            }
            let result = crate::build_many::classify(Err(e));
            let doc = crate::build_many::Outcome {
                release: opts.release.clone(),
                result,
                seconds: start.elapsed().as_secs_f64(),
            };
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(exit)
        }
        Err(e) => match e.downcast_ref::<BuildError>() {
            Some(be @ BuildError::Refused(_)) => {
                eprintln!("error: {be}");
                eprintln!("nothing was written.");
                Ok(2)
            }
            Some(
                be @ (BuildError::NoChange(_)
                | BuildError::InitExitOnly(_)
                | BuildError::NotBuilt(_)),
            ) => {
                eprintln!("{be}");
                Ok(3)
            }
            Some(be @ BuildError::NeedsOtherChanges { .. }) => {
                eprintln!("error: {be}");
                eprintln!("nothing was written: backport the change this fix builds on, or build the fix with it.");
                Ok(2)
            }
            // Like no change: nothing to build for this release.
            None => match e.downcast_ref::<suture_build::NotApplicable>() {
                Some(na) if na.kind == suture_build::NotApplicableKind::NoSuchFile => {
                    eprintln!("{na}");
                    Ok(3)
                }
                _ => Err(e),
            },
        },
    }
}

/// A build that ended with an answer about the patch (refused, no change,
/// not built, init/exit only, needs other changes, a missing file) rather
/// than an error.
fn is_outcome(e: &anyhow::Error) -> bool {
    e.downcast_ref::<BuildError>().is_some()
        || e.downcast_ref::<suture_build::NotApplicable>()
            .is_some_and(|na| na.kind == suture_build::NotApplicableKind::NoSuchFile)
}

/// `--kernel R1 --kernel R2 ...`: see [`crate::build_many`].
fn run_many(
    opts: &BuildOptions,
    releases: &[String],
    json: bool,
    start: Instant,
) -> anyhow::Result<i32> {
    let dir = opts.output.clone().unwrap_or_else(|| PathBuf::from("."));
    if dir.extension().is_some_and(|e| e == "ko") {
        anyhow::bail!(
            "with several --kernel, -o names a directory (one NAME-RELEASE.ko per release), not {}",
            dir.display()
        );
    }
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| suture_build::default_module_name(&opts.patches[0]));
    let outcomes = crate::build_many::build_all(opts, releases, &dir, &name, start)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "releases": outcomes }))?
        );
    } else {
        use crate::build_many::PerRelease::*;
        for o in &outcomes {
            match &o.result {
                Built { report } => {
                    println!(
                        "{}: built {} ({:.1}s)",
                        o.release,
                        report.module.display(),
                        o.seconds
                    );
                    for n in &report.not_built {
                        println!("{}:   left out: {n}", o.release);
                    }
                }
                NotBuilt { files } => println!("{}: not built: {}", o.release, files.join("; ")),
                NeedsOtherChanges { detail } => {
                    println!("{}: needs changes in other files: {detail}", o.release)
                }
                Refused { reasons } => println!("{}: refused: {}", o.release, reasons.join("; ")),
                NoChange { detail } => println!("{}: no change: {detail}", o.release),
                InitExitOnly { reasons } => {
                    println!("{}: init/exit code only: {}", o.release, reasons.join("; "))
                }
                NotApplicable { detail, .. } => println!("{}: not applicable: {detail}", o.release),
                Error { detail } => println!("{}: error: {detail}", o.release),
            }
        }
        println!(
            "{} release(s) in {:.1}s",
            outcomes.len(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(crate::build_many::exit_status(&outcomes))
}
