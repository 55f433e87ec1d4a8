//! `suture-diff ORIG.o PATCHED.o [...]`: `suture diff` in an executable of its
//! own. `suture diff` runs it when it is installed beside `suture`: a process
//! that maps only the differ's code peaks a megabyte lower on a kernel object
//! (the whole `suture` binary's start-up alone is 3.4 MB resident), which is
//! what keeps the differ's peak memory within three times its two inputs.

use clap::Parser;
use suture::diff_cmd;

#[derive(Parser)]
#[command(
    name = "suture diff",
    version,
    about = "Diff two kernel objects function by function and emit a klp object"
)]
struct Cli {
    #[command(flatten)]
    args: diff_cmd::Args,
}

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 1 } else { 0 })
    });
    suture::exit(diff_cmd::run(cli.args));
}
