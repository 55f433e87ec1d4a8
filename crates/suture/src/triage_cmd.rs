use std::path::PathBuf;
use std::time::Instant;
use suture_triage::TriageOptions;

#[derive(clap::Args)]
pub struct Args {
    /// The update: a version of the releases' source package (`linux-source-6.1`), as apt knows it
    /// (6.1.187-1). Downloaded with `apt-get download` and kept in the cache.
    #[arg(long = "to", value_name = "VERSION")]
    to: String,
    /// A running release to triage the update for, as `uname -r` prints it; repeatable (one series).
    #[arg(long = "kernel", value_name = "RELEASE", required = true)]
    kernel: Vec<String>,
    /// Judge only the objects under these tree directories (kernel mm fs net); headers changed
    /// anywhere still count for the units that include them.
    #[arg(long = "only", value_name = "DIR", num_args = 1..)]
    only: Vec<String>,
    /// Also build one cumulative livepatch module per release of every live-patchable object.
    #[arg(long)]
    build: bool,
    /// The output directory (created; must not exist or be empty): triage.json, patches/, modules/.
    #[arg(short = 'o', long = "output", value_name = "OUTDIR")]
    output: PathBuf,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// Exit status: 0 when the report was written (whatever its verdicts), 1 on
/// an error (nothing written).
pub fn run(a: Args) -> anyhow::Result<i32> {
    let opts = TriageOptions {
        to: a.to,
        releases: a.kernel,
        only: a.only,
        build: a.build,
        out: a.output.clone(),
        cache: suture_build::cache_root(),
    };
    let start = Instant::now();
    let progress = |msg: &str| eprintln!("[{:5.1}s] {msg}", start.elapsed().as_secs_f64());
    let report = suture_triage::triage(&opts, &progress)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", suture_triage::report::human(&report));
        println!("report: {}", a.output.join("triage.json").display());
    }
    Ok(0)
}
