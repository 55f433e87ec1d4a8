//! `suture diff`: compare two builds of one kernel object and write the klp object.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use suture_diff::{Options, Outcome, Report, Target, TargetSym};

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

/// `suture diff` as scripts run it, once per object and often thousands of
/// times: the plain forms of its arguments parsed by hand, before clap builds
/// the whole command tree (a quarter of the instructions of diffing a small
/// object). `args` is the command line after the program name. `None`
/// whenever the line uses anything else (help, `--`, `-oFILE`, an option
/// twice, a value that starts with `-`, non-UTF-8 text): clap then parses it
/// and gives its usual answer or error, so the result is the same either way.
pub fn parse_fast(args: &[std::ffi::OsString]) -> Option<Args> {
    let mut it = args.iter();
    if it.next()?.to_str()? != "diff" {
        return None;
    }
    let mut a = Args {
        orig: PathBuf::new(),
        patched: PathBuf::new(),
        output: None,
        symbols: None,
        objname: None,
        entry_size: Vec::new(),
        json: false,
        explain: None,
    };
    let mut positional = 0;
    while let Some(arg) = it.next() {
        let text = arg.to_str()?;
        let (flag, inline) = match text.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (text, None),
        };
        let mut value = || -> Option<String> {
            let v = match inline {
                Some(v) => v.to_string(),
                None => it.next()?.to_str()?.to_string(),
            };
            (!v.starts_with('-') && !v.is_empty()).then_some(v)
        };
        match flag {
            "-o" | "--output" if a.output.is_none() => a.output = Some(PathBuf::from(value()?)),
            "--symbols" if a.symbols.is_none() => a.symbols = Some(PathBuf::from(value()?)),
            "--objname" if a.objname.is_none() => a.objname = Some(value()?),
            "--explain" if a.explain.is_none() => a.explain = Some(value()?),
            "--entry-size" => a.entry_size.push(value()?),
            "--json" if !a.json && inline.is_none() => a.json = true,
            _ if text.starts_with('-') || text.is_empty() => return None,
            _ => {
                match positional {
                    0 => a.orig = PathBuf::from(text),
                    1 => a.patched = PathBuf::from(text),
                    _ => return None,
                }
                positional += 1;
            }
        }
    }
    (positional == 2).then_some(a)
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

/// Symbols of the target from an ELF object/module or a kallsyms text copy.
pub fn load_symbols(path: &Path, objname: Option<&str>) -> anyhow::Result<Target> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(b"\x7fELF") {
        symbols_from_elf(&bytes, path, objname)
    } else {
        let text = String::from_utf8(bytes)
            .with_context(|| format!("{}: neither ELF nor text", path.display()))?;
        symbols_from_kallsyms(&text, objname.unwrap_or("vmlinux"))
            .with_context(|| format!("{}: not a kallsyms copy", path.display()))
    }
}

fn symbols_from_elf(bytes: &[u8], path: &Path, objname: Option<&str>) -> anyhow::Result<Target> {
    let o =
        suture_elf::Object::parse(bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let objname = match objname {
        Some(n) => n.to_string(),
        None if path.extension().is_some_and(|e| e == "ko") => path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .replace('-', "_"),
        None => "vmlinux".to_string(),
    };
    // Exports are visible as __ksymtab_<name> entries.
    let exported: std::collections::HashSet<&str> = o
        .symbols
        .iter()
        .filter_map(|s| s.name.strip_prefix("__ksymtab_"))
        .collect();
    let mut count: HashMap<&str, u32> = HashMap::new();
    for s in o
        .symbols
        .iter()
        .filter(|s| s.bind == suture_elf::STB_LOCAL && s.section().is_some())
    {
        *count.entry(s.name.as_str()).or_default() += 1;
    }
    let mut seen: HashMap<&str, u32> = HashMap::new();
    let mut symbols = HashMap::new();
    for s in &o.symbols {
        if s.name.is_empty()
            || s.section().is_none()
            || matches!(s.typ, suture_elf::STT_SECTION | suture_elf::STT_FILE)
        {
            continue;
        }
        let ts = if s.bind == suture_elf::STB_LOCAL {
            let k = seen.entry(s.name.as_str()).or_default();
            *k += 1;
            TargetSym::Unexported {
                sympos: if count[s.name.as_str()] > 1 { *k } else { 0 },
            }
        } else if exported.contains(s.name.as_str()) {
            TargetSym::Exported
        } else {
            TargetSym::Unexported { sympos: 0 }
        };
        symbols.entry(s.name.to_string()).or_insert(ts);
    }
    Ok(Target { objname, symbols })
}

/// `ADDR TYPE NAME [mod]` lines; positions count same-named symbols of the
/// object in file order.
pub fn symbols_from_kallsyms(text: &str, objname: &str) -> anyhow::Result<Target> {
    let mut lines = Vec::new();
    for (n, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let k = suture_abi::kallsyms::parse_line(l)
            .map_err(|why| anyhow::anyhow!("line {}: {why}: {l:?}", n + 1))?;
        if k.object() == objname {
            lines.push(k.name.to_string());
        }
    }
    let mut count: HashMap<&str, u32> = HashMap::new();
    for n in &lines {
        *count.entry(n.as_str()).or_default() += 1;
    }
    let mut seen: HashMap<&str, u32> = HashMap::new();
    let mut symbols = HashMap::new();
    for n in &lines {
        let k = seen.entry(n.as_str()).or_default();
        *k += 1;
        let pos = if count[n.as_str()] > 1 { *k } else { 0 };
        symbols
            .entry(n.clone())
            .or_insert(TargetSym::Unexported { sympos: pos });
    }
    Ok(Target {
        objname: objname.to_string(),
        symbols,
    })
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
        match load_symbols(s, args.objname.as_deref()) {
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
    fn kallsyms_positions_and_modules() {
        let t = symbols_from_kallsyms(
            "ffffffff81000000 T _stext\nffffffff81001000 t foo\nffffffff81002000 t foo\nffffffffc0000000 t foo\t[ext4]\nffffffff81003000 t bar\n",
            "vmlinux",
        )
        .unwrap();
        assert_eq!(t.symbols["foo"], TargetSym::Unexported { sympos: 1 });
        assert_eq!(t.symbols["bar"], TargetSym::Unexported { sympos: 0 });
        let m = symbols_from_kallsyms("ffffffffc0000000 t foo\t[ext4]\n", "ext4").unwrap();
        assert_eq!(m.symbols["foo"], TargetSym::Unexported { sympos: 0 });
        assert!(symbols_from_kallsyms("garbage\n", "vmlinux").is_err());
    }

    #[test]
    fn entry_size_arguments() {
        let m = parse_entry_sizes(&["__jump_table=16".into()]).unwrap();
        assert_eq!(m["__jump_table"], 16);
        assert!(parse_entry_sizes(&["__jump_table".into()]).is_err());
        assert!(parse_entry_sizes(&["x=0".into()]).is_err());
    }

    #[test]
    fn elf_symbols_locals_positions_and_exports() {
        let dir = std::env::temp_dir().join(format!("suture-diffcmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = dir.join("t.c");
        std::fs::write(
            &c,
            "static int dup(void) { return 1; }\nint use1(void) { return dup(); }\nint expd(void) { return 2; }\nint unexp(void) { return 3; }\nint __ksymtab_expd;\n",
        )
        .unwrap();
        let c2 = dir.join("u.c");
        std::fs::write(
            &c2,
            "static int dup(void) { return 4; }\nint use2(void) { return dup(); }\n",
        )
        .unwrap();
        let o1 = dir.join("t.o");
        let o2 = dir.join("u.o");
        let o = dir.join("both.o");
        for (src, obj) in [(&c, &o1), (&c2, &o2)] {
            let st = std::process::Command::new("gcc")
                .args(["-c", "-O0", "-o"])
                .arg(obj)
                .arg(src)
                .status()
                .unwrap();
            assert!(st.success());
        }
        let st = std::process::Command::new("ld")
            .arg("-r")
            .arg("-o")
            .arg(&o)
            .arg(&o1)
            .arg(&o2)
            .status()
            .unwrap();
        assert!(st.success());
        let t = load_symbols(&o, None).unwrap();
        assert_eq!(t.objname, "vmlinux");
        assert_eq!(
            t.symbols["dup"],
            TargetSym::Unexported { sympos: 1 },
            "two local dups: positions from 1"
        );
        assert_eq!(t.symbols["expd"], TargetSym::Exported);
        assert_eq!(t.symbols["unexp"], TargetSym::Unexported { sympos: 0 });
        let t = load_symbols(&o, Some("my_mod")).unwrap();
        assert_eq!(t.objname, "my_mod");
    }

    #[test]
    fn fast_parse_agrees_with_clap() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: Cmd,
        }
        #[derive(clap::Subcommand)]
        enum Cmd {
            Diff(Args),
        }
        let os = |l: &[&str]| l.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let key = |a: &Args| {
            format!(
                "{:?} {:?} {:?} {:?} {:?} {:?} {} {:?}",
                a.orig, a.patched, a.output, a.symbols, a.objname, a.entry_size, a.json, a.explain
            )
        };
        let accepted: &[&[&str]] = &[
            &["diff", "a.o", "b.o"],
            &["diff", "a.o", "b.o", "-o", "out.o", "--json"],
            &[
                "diff",
                "--entry-size",
                "__jump_table=16",
                "a.o",
                "--entry-size=.altinstructions=13",
                "b.o",
                "--output=x.o",
            ],
            &[
                "diff",
                "a.o",
                "b.o",
                "--symbols",
                "k.txt",
                "--objname",
                "ext4",
                "--explain",
                "f",
            ],
        ];
        for l in accepted {
            let fast =
                parse_fast(&os(l)).unwrap_or_else(|| panic!("{l:?} should take the fast path"));
            let mut full = vec!["suture"];
            full.extend_from_slice(l);
            let Cmd::Diff(slow) = Cli::try_parse_from(full).unwrap().cmd;
            assert_eq!(key(&fast), key(&slow), "{l:?}");
        }
        // Left to clap: its help and errors stay what they are.
        let declined: &[&[&str]] = &[
            &["diff", "--help"],
            &["diff", "a.o"],
            &["diff", "a.o", "b.o", "c.o"],
            &["diff", "a.o", "b.o", "--json", "--json"],
            &["diff", "a.o", "b.o", "-o", "x", "-o", "y"],
            &["diff", "a.o", "b.o", "-ox.o"],
            &["diff", "a.o", "b.o", "-o"],
            &["diff", "a.o", "b.o", "-o", "--json"],
            &["diff", "--", "a.o", "b.o"],
            &["diff", "a.o", "b.o", "--unknown"],
            &["build", "a.patch"],
        ];
        for l in declined {
            assert!(parse_fast(&os(l)).is_none(), "{l:?} should go to clap");
        }
    }

    #[test]
    fn default_output_name() {
        assert_eq!(
            default_output(Path::new("/a/foo.PATCHED.o")),
            PathBuf::from("/a/foo.PATCHED.klp.o")
        );
    }
}
