//! `--seccomp` / `seccomp`: what the daemon's seccomp filter does with a system call outside its
//! allowlist (the filter itself is [`crate::seccomp`]).

use std::str::FromStr;

use super::ConfigError;

/// What happens to a system call the daemon's threads are not allowed to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// No filter at all.
    Off,
    /// The call is made, and the kernel logs it (`SECCOMP_RET_LOG`): for operators looking for a
    /// call the allowlist misses.
    Log,
    /// The kernel kills the whole daemon with SIGSYS (`SECCOMP_RET_KILL_PROCESS`).
    #[default]
    Kill,
}

impl FromStr for SeccompMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "off" => Ok(SeccompMode::Off),
            "log" => Ok(SeccompMode::Log),
            "kill" => Ok(SeccompMode::Kill),
            other => Err(ConfigError::InvalidSeccompMode {
                value: other.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_unknown_ones_are_named() {
        assert_eq!("off".parse::<SeccompMode>().ok(), Some(SeccompMode::Off));
        assert_eq!("log".parse::<SeccompMode>().ok(), Some(SeccompMode::Log));
        assert_eq!("kill".parse::<SeccompMode>().ok(), Some(SeccompMode::Kill));
        assert_eq!(SeccompMode::default(), SeccompMode::Kill);
        let e = "Kill".parse::<SeccompMode>().err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("invalid seccomp mode `Kill`: expected off, log or kill")
        );
    }
}
