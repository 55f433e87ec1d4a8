//! `suture verify FILE.ko`: what `suture load` checks before calling into
//! the kernel (a livepatch module, this release, this build of it by
//! build-id, and a signature the trust store accepts when it holds
//! certificates), then Ksplice's run-pre check against the running kernel's
//! memory: each replaced function's bytes, read through /proc/kcore, must
//! hash (masked) to what the build recorded. Loads nothing.
//! `--dump OBJ:FUNC[,POS]` prints a function's bytes as the kernel runs them.
//!
//! Exit status: 0 verified; 1 error (unreadable kcore, a symbol not found);
//! 2 refused (another release or build, not a livepatch, bytes differ);
//! 3 nothing to compare (the module records no function bytes).

use crate::host_cmd::{fail, host};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The livepatch module to check.
    #[arg(required_unless_present = "dump")]
    pub module: Option<PathBuf>,
    /// Print the bytes of OBJ:FUNC[,SYMPOS] (e.g. vmlinux:cmdline_proc_show)
    /// from kernel memory instead, up to the next symbol (at most 4096).
    #[arg(long, value_name = "OBJ:FUNC[,POS]", conflicts_with = "module")]
    pub dump: Option<String>,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

fn dump(spec: &str, json: bool) -> anyhow::Result<i32> {
    let (obj, rest) = spec.split_once(':').ok_or_else(|| {
        anyhow::anyhow!("--dump wants OBJ:FUNC[,POS], e.g. vmlinux:cmdline_proc_show")
    })?;
    let (name, pos) = match rest.split_once(',') {
        Some((n, p)) => (
            n,
            p.parse()
                .map_err(|_| anyhow::anyhow!("bad position {p:?} in {spec}"))?,
        ),
        None => (rest, 0),
    };
    let h = host();
    let (addr, next) = suture_host::kcore::kallsyms_lookup(&h.root, obj, name, pos)
        .map_err(|e| anyhow::anyhow!("looking up {spec}: {e}"))?;
    let len = next.unwrap_or(64).min(4096) as usize;
    let bytes = suture_host::kcore::read_kcore(&h.root, addr, len).map_err(|e| {
        anyhow::anyhow!("reading {spec} at {addr:#x} from /proc/kcore: {e} (needs root)")
    })?;
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": true, "object": obj, "function": name, "address": format!("{addr:#x}"), "bytes": hex.join("")
            }))?
        );
    } else {
        println!("{obj}:{name} at {addr:#x}, {len} bytes:");
        for chunk in hex.chunks(16) {
            println!("  {}", chunk.join(" "));
        }
    }
    Ok(0)
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    if let Some(d) = &a.dump {
        return dump(d, a.json);
    }
    let module = a
        .module
        .as_deref()
        .expect("clap requires MODULE without --dump");
    let h = host();
    let store = h.trust_store_dir();
    let r = match h.verify(module) {
        Ok(r) => r,
        Err(e) => return fail("verify", e, a.json),
    };
    let differs = r.functions.iter().any(|f| f.outcome == "differs");
    let errors = r.functions.iter().any(|f| f.outcome == "error");
    let code = if differs {
        2
    } else if errors {
        1
    } else if !r.verified {
        3
    } else {
        0
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "ok": code == 0, "verify": r }))?
        );
    } else {
        println!(
            "{}: a livepatch for {} ({}); build-id {}",
            r.name,
            r.release,
            if r.build_id_checked {
                "this build"
            } else {
                "build not recorded in the module"
            },
            r.build_id.as_deref().unwrap_or("unknown")
        );
        match &r.signature {
            Some(s) => println!(
                "  signed by {} ({:?}): {}",
                s.signer,
                s.hash,
                s.verified_by.as_deref().map_or(
                    format!("not verified: the trust store {} is empty", store.display()),
                    |c| format!("verified with {c}")
                )
            ),
            None => println!(
                "  not signed (the trust store {} is empty, so that is allowed)",
                store.display()
            ),
        }
        for f in &r.functions {
            println!(
                "  {}:{},{} at {}: {}{}",
                f.spec.object,
                f.spec.name,
                f.spec.sympos,
                f.address.as_deref().unwrap_or("?"),
                f.outcome,
                f.detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            );
        }
        match code {
            0 => println!("verified: every replaced function matches the running kernel"),
            2 => eprintln!("error: the running kernel's code differs from what the patch was built against: do not load it; rebuild from this kernel's exact source, config and compiler"),
            3 => eprintln!("warning: nothing was compared: the module records no function bytes (suture_func with LEN SHA256 MASK)"),
            _ => eprintln!("error: some functions could not be checked (see above)"),
        }
    }
    Ok(code)
}
