//! `suture`: a thin command line over the suture crates.
//!
//! Exit status: 0 success; 1 error (bad input, environment); 2 refused (an
//! unsupported change); 3 no functional change. Subcommands document their own.

use clap::{Parser, Subcommand};
use suture::{diff_cmd, exit};

mod build_cmd;
mod build_many;
mod host_cmd;
mod install_cmd;
mod kexec_cmd;
mod package_cmd;
mod status_cmd;
mod triage_cmd;
mod verify_cmd;

#[derive(Parser)]
#[command(
    name = "suture",
    version,
    about = "Live kernel patching for Debian kernels"
)]
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
    /// List loaded and installed livepatches side by side.
    List(host_cmd::ListArgs),
    /// Show the effective patch level, each patch, and a transition in progress.
    Status(status_cmd::Args),
    /// Store a livepatch for its release, load it, and load it at every boot.
    Install(install_cmd::InstallArgs),
    /// Unload an installed livepatch and remove it.
    Uninstall(install_cmd::UninstallArgs),
    /// Clear the crash-loop guard's pending marks of patches that stayed up.
    Confirm(install_cmd::ConfirmArgs),
    /// Check a livepatch against the running kernel (release, build, code bytes) without loading it.
    Verify(verify_cmd::Args),
    /// Build a Debian package that installs a livepatch on hosts running its release.
    Package(package_cmd::Args),
    /// Turn a Debian kernel update into per-object verdicts and one cumulative livepatch per release.
    Triage(triage_cmd::Args),
    /// Boot another installed release with kexec through a clean systemd shutdown (no firmware).
    Kexec(kexec_cmd::Args),
}

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if argv.first().is_some_and(|a| a == "diff") {
        diff_cmd::exec_suture_diff(&argv[1..]);
    }
    // clap exits 2 on a usage error, which suture reserves for refusals: a
    // bad command line is bad input (1); help and --version stay 0.
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 1 } else { 0 })
    });
    let result = match cli.cmd {
        Cmd::Build(a) => build_cmd::run(a),
        Cmd::Diff(a) => diff_cmd::run(a),
        Cmd::Load(a) => host_cmd::load(a),
        Cmd::Unload(a) => host_cmd::unload(a),
        Cmd::List(a) => host_cmd::list(a),
        Cmd::Status(a) => status_cmd::run(a),
        Cmd::Install(a) => install_cmd::install(a),
        Cmd::Uninstall(a) => install_cmd::uninstall(a),
        Cmd::Confirm(a) => install_cmd::confirm(a),
        Cmd::Verify(a) => verify_cmd::run(a),
        Cmd::Package(a) => package_cmd::run(a),
        Cmd::Kexec(a) => kexec_cmd::run(a),
        Cmd::Triage(a) => triage_cmd::run(a),
    };
    exit(result);
}
