//! `ballast`: operator CLI of the Ballast engine. See `ballast --help`.

use std::io::Write as _;
use std::process::ExitCode;

use ballast_cli::{Cli, CliError};
use clap::Parser as _;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(ballast_cli::run(&cli)) {
        Ok(out) => {
            // A closed stdout (`ballast device list | head -0`) is not an error.
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(CliError::Exit {
            stdout,
            stderr,
            code,
        }) => {
            let _ = std::io::stdout().lock().write_all(stdout.as_bytes());
            let _ = std::io::stderr().lock().write_all(stderr.as_bytes());
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
