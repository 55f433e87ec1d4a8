//! `suture-lab`: boot a Debian kernel release in QEMU with a busybox initramfs,
//! run one shell script in it and print what the script printed (kernel
//! messages printed meanwhile included; the firmware's screen and banners
//! not: `--verbose` echoes the whole serial console as it comes). The demo
//! uses it; so can anyone who wants to try a patch without touching a real host.
//!
//! suture-lab --kernel RELEASE [--exec HOST:GUEST]... [--file HOST:GUEST]...
//!            [--module REL_PATH]... [--timeout SECS] [--verbose] SCRIPT
//!
//! Exit status: the script's.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Duration;

fn split(arg: &str) -> Result<(&str, &str)> {
    arg.split_once(':')
        .with_context(|| format!("{arg:?}: expected HOST_PATH:GUEST_PATH"))
}

fn main() {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("suture-lab: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<i32> {
    let mut args = std::env::args().skip(1);
    let mut release = None;
    let mut script = None;
    let mut timeout = 300u64;
    let mut verbose = false;
    let mut adds: Vec<(char, String)> = Vec::new();
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => release = Some(val()?),
            "--exec" => adds.push(('x', val()?)),
            "--file" => adds.push(('f', val()?)),
            "--module" => adds.push(('m', val()?)),
            "--timeout" => timeout = val()?.parse().context("--timeout takes seconds")?,
            "--verbose" => verbose = true,
            "-h" | "--help" => {
                println!("usage: suture-lab --kernel RELEASE [--exec HOST:GUEST]... [--file HOST:GUEST]... [--module REL_PATH]... [--timeout SECS] [--verbose] SCRIPT");
                return Ok(0);
            }
            s if s.starts_with('-') => bail!("unknown option {s} (see --help)"),
            s => script = Some(s.to_string()),
        }
    }
    let release = release.context("--kernel RELEASE is required")?;
    let script = script.context("a script file is required")?;
    let text = std::fs::read_to_string(&script).with_context(|| format!("reading {script}"))?;
    let mut vm = suture_lab::Vm::new(&release)?
        .timeout(Duration::from_secs(timeout))
        .verbose(verbose);
    for (kind, a) in &adds {
        match kind {
            'x' => {
                let (h, g) = split(a)?;
                vm.add_executable(Path::new(h), g)?;
            }
            'f' => {
                let (h, g) = split(a)?;
                vm.add_file(Path::new(h), g)?;
            }
            _ => {
                vm.add_release_module(a)?;
            }
        }
    }
    if !verbose {
        eprintln!("suture-lab: booting {release} in QEMU (TCG: well under a minute); the script's output follows when it ends");
    }
    let out = vm.run(&text)?;
    if !verbose {
        // The script's own lines only: no firmware escape codes or banners.
        print!("{}", out.script_output());
    }
    eprintln!(
        "suture-lab: guest ran {:.1}s, script exit status {}",
        out.duration.as_secs_f64(),
        out.exit_status
    );
    Ok(out.exit_status)
}
