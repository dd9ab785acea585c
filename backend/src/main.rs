//! `sockbypassd`: parse the command line, load and check the configuration, serve every VM.
//!
//! Any configuration error ends the process with one line on stderr and exit status 2.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = sockbypassd::cli::Cli::parse();
    let config = match sockbypassd::config::DaemonConfig::from_cli(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sockbypassd: {}", sockbypassd::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    sockbypassd::logging::init(config.log_level.as_deref());
    // Fail points for tests (`--features failpoints` and `FAILPOINTS`); nothing otherwise.
    let scenario = fail::FailScenario::setup();
    let outcome = sockbypassd::daemon::run(config);
    scenario.teardown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockbypassd: {}", sockbypassd::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
