//! `suture`: a thin command line over the suture crates.
//!
//! Exit status: 0 success; 1 error (bad input, environment); 2 refused (an
//! unsupported change); 3 no functional change. Subcommands document their own.

use clap::{Parser, Subcommand};

mod build_cmd;
mod diff_cmd;
mod host_cmd;

#[derive(Parser)]
#[command(name = "suture", version, about = "Live kernel patching for Debian kernels")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a livepatch module from a source patch for one kernel release.
    Build(build_cmd::Args),
    /// Diff two kernel objects function by function and emit a klp object.
    Diff(diff_cmd::Args),
    /// Load a livepatch module and wait for its transition.
    Load(host_cmd::LoadArgs),
    /// Disable a loaded livepatch, wait for the transition, remove the module.
    Unload(host_cmd::UnloadArgs),
    /// List loaded livepatches and their state.
    List(host_cmd::ListArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Build(a) => build_cmd::run(a),
        Cmd::Diff(a) => diff_cmd::run(a),
        Cmd::Load(a) => host_cmd::load(a),
        Cmd::Unload(a) => host_cmd::unload(a),
        Cmd::List(a) => host_cmd::list(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
