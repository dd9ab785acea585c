//! `sockbypass`: the client of `sockbypassd --control`, and the attach generators.
//!
//! Exit status: 0 done; 1 the daemon refused (its error kind is printed) or could not be
//! reached; 2 a usage error. Every error is one line on stderr, `sockbypass: <message>`.

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use sockbypass_ctl::cli::Cli;
use sockbypass_ctl::command;

/// Exit status of a usage error, as clap's own.
const USAGE: u8 = 2;

/// A usage error as one line (clap's first line, which names the problem), or `--help` and
/// `--version` as clap prints them.
fn usage_error(e: &clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            // clap's message is its first paragraph (a list of missing arguments continues on
            // the lines after the first); usage and tips follow after a blank line.
            let rendered = e.render().to_string();
            let message = rendered
                .lines()
                .map(str::trim)
                .skip_while(|l| l.is_empty())
                .take_while(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("sockbypass: {message} (try 'sockbypass --help')");
            ExitCode::from(USAGE)
        }
    }
}

/// Writes `text` to `out`; a reader that went away (`| head`) is no error of ours.
fn emit(mut out: impl Write, text: &str) {
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    match command::run(&cli) {
        Ok(printed) => {
            emit(std::io::stderr().lock(), &printed.stderr);
            emit(std::io::stdout().lock(), &printed.stdout);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sockbypass: {}", e.line());
            ExitCode::FAILURE
        }
    }
}
