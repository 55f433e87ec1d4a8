//! `suture status`: the host's effective patch level, each patch's state,
//! the transition in progress with the tasks not yet switched (pid,
//! command, kernel stack, the function blocking them), installed patches
//! the crash-loop guard set aside, and `--prometheus FILE` for
//! node_exporter's textfile collector (written atomically).
//!
//! Exit status: 0 success; 1 the state could not be read.

use crate::host_cmd::{fail, host, StateArgs};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub state: StateArgs,
    /// Also write the status as a node_exporter textfile (e.g.
    /// /var/lib/prometheus/node-exporter/suture.prom).
    #[arg(long, value_name = "FILE")]
    pub prometheus: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let st = a.state.dir();
    let s = match host().status(Some(&st)) {
        Ok(s) => s,
        Err(e) => return fail("status", e, a.json),
    };
    if let Some(p) = &a.prometheus {
        let text = suture_host::report::prometheus_text(&s);
        if let Err(e) = suture_host::state::write_atomic(p, text.as_bytes()) {
            let err = suture_host::HostError::io(format!("writing {}", p.display()), &e)
                .hint("the directory must exist and be writable (node_exporter's --collector.textfile.directory)");
            return fail("status", err, a.json);
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "ok": true, "status": s }))?
        );
    } else {
        print!("{}", suture_host::report::format_status(&s));
    }
    Ok(0)
}
