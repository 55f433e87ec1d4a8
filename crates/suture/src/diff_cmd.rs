//! `suture diff`: compare two builds of one kernel object and write the klp object.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use suture_diff::{Options, Outcome, Report};

#[derive(clap::Args)]
#[command(after_help = "\
Exit status: 0 a patch object was written; 3 no functional change (nothing written);
2 the change cannot be live-patched (nothing written, reasons printed); 1 bad input.

Without -o the patch is written beside PATCHED as <PATCHED stem>.klp.o
(foo.PATCHED.o -> foo.PATCHED.klp.o), atomically (temporary file, then rename).")]
pub struct Args {
    /// The object compiled before the source patch (-ffunction-sections -fdata-sections).
    pub orig: PathBuf,
    /// The same object compiled after the source patch.
    pub patched: PathBuf,
    /// Where to write the klp object [default: <PATCHED stem>.klp.o beside PATCHED].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The target's symbols: an ELF object or module (its symbol table), or a copy
    /// of /proc/kallsyms. Without it ORIG's own symbol table stands in.
    #[arg(long, value_name = "FILE")]
    pub symbols: Option<PathBuf>,
    /// Object name the klp symbols use (vmlinux or a module name) [default: vmlinux,
    /// or the module name when --symbols is a .ko].
    #[arg(long)]
    pub objname: Option<String>,
    /// Entry size of a special section, e.g. __jump_table=16 (repeatable).
    #[arg(long = "entry-size", value_name = "SECTION=BYTES")]
    pub entry_size: Vec<String>,
    /// Print the report as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Explain why FUNC counts as changed (first differing instruction or relocation).
    #[arg(long, value_name = "FUNC")]
    pub explain: Option<String>,
}

#[derive(serde::Serialize)]
struct JsonOut<'a> {
    outcome: &'static str,
    exit_status: i32,
    output: Option<String>,
    #[serde(flatten)]
    report: &'a Report,
    replaced: Vec<suture_diff::ReplacedFunc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    explanation: Option<suture_diff::Explanation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Replaces this process with `suture-diff` from the directory of the running
/// executable, with `args` (the command line after `diff`). Returns only when
/// that cannot be done (not installed there, not executable), and then
/// `suture diff` runs in this process: same output, a higher memory peak.
pub fn exec_suture_diff(args: &[std::ffi::OsString]) {
    use std::os::unix::process::CommandExt;
    let Ok(me) = std::env::current_exe() else {
        return;
    };
    let _ = std::process::Command::new(me.with_file_name("suture-diff"))
        .arg0("suture diff")
        .args(args)
        .exec();
}

fn parse_entry_sizes(v: &[String]) -> anyhow::Result<HashMap<String, usize>> {
    let mut m = HashMap::new();
    for s in v {
        let (k, n) = s
            .split_once('=')
            .with_context(|| format!("--entry-size {s}: expected SECTION=BYTES"))?;
        let n: usize = n
            .parse()
            .with_context(|| format!("--entry-size {s}: {n} is not a number"))?;
        anyhow::ensure!(n > 0, "--entry-size {s}: the size must be positive");
        m.insert(k.to_string(), n);
    }
    Ok(m)
}

fn default_output(patched: &Path) -> PathBuf {
    let stem = patched
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "patch".into());
    patched.with_file_name(format!("{stem}.klp.o"))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A random name created with O_EXCL (never a planted file or symlink),
    // removed unless the rename happens.
    let mut tmp = tempfile::Builder::new()
        .prefix(".suture-diff.")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| {
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
        })
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    // No fsync: the rename is what keeps readers from seeing a partial
    // object; durability across a power cut is not a build tool's job (gcc
    // and ld do not sync their outputs either), and a sync costs more than
    // the whole diff of a small object.
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn print_report(r: &Report) {
    for f in &r.changed {
        println!("changed function: {f}");
    }
    for f in &r.new {
        println!("new function: {f}");
    }
    for c in &r.callbacks {
        println!("callback: {c}");
    }
    for x in &r.refusals {
        println!("refused: {}: {}", x.subject, x.reason);
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    for (k, e) in &r.entry_sizes {
        println!("entry size: {k} = {} ({})", e.size, e.source);
    }
}

/// A read-only private mapping of an input object. Mapping instead of reading
/// keeps the pages nobody looks at (most of a kernel object is debug
/// information the differ skips) out of memory entirely.
struct Map {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value until dropped.
unsafe impl Send for Map {}
unsafe impl Sync for Map {}

impl AsRef<[u8]> for Map {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is a live PROT_READ mapping (see map_file).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what map_file mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// The file's bytes: mapped when it is a non-empty regular file, read otherwise
/// (pipes, empty files). A file truncated by someone else while mapped would
/// fault; inputs of `suture diff` are build products nobody rewrites mid-run.
fn map_file(path: &Path) -> std::io::Result<suture_diff::Shared> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if meta.is_file() && meta.len() > 0 {
        let len = meta.len() as usize;
        // SAFETY: a fresh private read-only mapping of an open file.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        if p != libc::MAP_FAILED {
            return Ok(std::sync::Arc::new(Map {
                ptr: p as *const u8,
                len,
            }));
        }
    }
    Ok(std::sync::Arc::new(std::fs::read(path)?))
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    // The report goes to a pager or `head` as often as to a terminal: a closed
    // pipe ends the process quietly, like any Unix filter, instead of a panic
    // in `println!` (Rust ignores SIGPIPE by default). The object, if any, is
    // complete by then: it is written before the report.
    // SAFETY: setting a signal's disposition to the default has no
    // preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let fail = |json: bool, msg: String| -> anyhow::Result<i32> {
        if json {
            let r = Report::default();
            let j = JsonOut {
                outcome: "error",
                exit_status: 1,
                output: None,
                report: &r,
                replaced: vec![],
                explanation: None,
                error: Some(msg),
            };
            println!("{}", serde_json::to_string_pretty(&j)?);
            Ok(1)
        } else {
            Err(anyhow::anyhow!(msg))
        }
    };
    let orig = match map_file(&args.orig) {
        Ok(b) => b,
        Err(e) => return fail(args.json, format!("{}: {e}", args.orig.display())),
    };
    let patched = match map_file(&args.patched) {
        Ok(b) => b,
        Err(e) => return fail(args.json, format!("{}: {e}", args.patched.display())),
    };
    let mut opts = Options {
        entry_sizes: parse_entry_sizes(&args.entry_size)?,
        target: None,
        ..Default::default()
    };
    if let Some(s) = &args.symbols {
        match suture_symbols::symbols_from_file(s, args.objname.as_deref()) {
            Ok(t) => opts.target = Some(t),
            Err(e) => return fail(args.json, format!("{e:#}")),
        }
    }
    let explanation = match &args.explain {
        Some(f) => match suture_diff::explain_shared(orig.clone(), patched.clone(), f, &opts) {
            Ok(x) => Some(x),
            Err(e) => return fail(args.json, e.to_string()),
        },
        None => None,
    };
    let outcome = match suture_diff::diff_shared_keep(orig, patched, &opts) {
        Ok((o, model)) => {
            // The process exits after the report; the kernel frees the model
            // at once, faster than its destructors would.
            std::mem::forget(model);
            o
        }
        Err(e) => return fail(args.json, e.to_string()),
    };
    let (name, code, report, replaced, written) = match outcome {
        Outcome::Changes(p) => {
            let out = args
                .output
                .clone()
                .unwrap_or_else(|| default_output(&args.patched));
            write_atomic(&out, &p.object)?;
            (
                "changes",
                0,
                p.report,
                p.replaced,
                Some(out.display().to_string()),
            )
        }
        Outcome::NoChange(r) => ("no-change", 3, r, vec![], None),
        Outcome::Refused(r) => ("refused", 2, r, vec![], None),
        Outcome::InitExitOnly(r) => ("init-exit-only", 3, r, vec![], None),
    };
    if args.json {
        let j = JsonOut {
            outcome: name,
            exit_status: code,
            output: written,
            report: &report,
            replaced,
            explanation,
            error: None,
        };
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        if let Some(x) = &explanation {
            println!("explain {}:", x.function);
            for l in &x.lines {
                println!("  {l}");
            }
        }
        print_report(&report);
        match code {
            0 => println!(
                "wrote {} ({} replaced function(s))",
                written.unwrap(),
                replaced.len()
            ),
            3 => println!("no functional change: nothing to patch"),
            _ => println!(
                "refused: {} unsupported change(s); nothing written",
                report.refusals.len()
            ),
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_size_arguments() {
        let m = parse_entry_sizes(&["__jump_table=16".into()]).unwrap();
        assert_eq!(m["__jump_table"], 16);
        assert!(parse_entry_sizes(&["__jump_table".into()]).is_err());
        assert!(parse_entry_sizes(&["x=0".into()]).is_err());
    }

    #[test]
    fn default_output_name() {
        assert_eq!(
            default_output(Path::new("/a/foo.PATCHED.o")),
            PathBuf::from("/a/foo.PATCHED.klp.o")
        );
    }
}
