//! `sockbypass`: the client of `sockbypassd --control`.

fn main() -> std::process::ExitCode {
    eprintln!("sockbypass: not built yet");
    std::process::ExitCode::from(2)
}
