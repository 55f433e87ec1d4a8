//! What the `suture` and `suture-diff` executables share: the differ's command
//! line, and how a command's result becomes an exit status.

pub mod diff_cmd;

/// Exits with the command's status, or 1 after printing its error.
pub fn exit(result: anyhow::Result<i32>) -> ! {
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
