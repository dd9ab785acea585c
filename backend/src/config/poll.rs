//! The poll engine's settings (`--poll-mode`, `--poll-threads`, `--poll-budget-us`,
//! `--poll-cpus`, and the same keys in the config file), parsed and checked.

use std::str::FromStr;

use super::ConfigError;

/// How the switch learns about new work (see `backend/DESIGN-poller.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PollMode {
    /// Never spin: every kick wakes a thread.
    Event,
    /// Always spin: never sleep, never take kicks.
    Poll,
    /// Spin while there is work; after the budget with none, sleep until a kick.
    #[default]
    Adaptive,
}

impl FromStr for PollMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "event" => Ok(PollMode::Event),
            "poll" => Ok(PollMode::Poll),
            "adaptive" => Ok(PollMode::Adaptive),
            other => Err(ConfigError::InvalidPollMode {
                value: other.to_owned(),
            }),
        }
    }
}

/// Default `--poll-budget-us`: short, because a spinning thread competes with the guests' own
/// vCPUs on small hosts.
pub const DEFAULT_POLL_BUDGET_US: u64 = 50;
/// Largest `--poll-budget-us` (one second).
pub const MAX_POLL_BUDGET_US: u64 = 1_000_000;

/// The poll engine's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollConfig {
    /// The mode.
    pub mode: PollMode,
    /// Poll threads (at least 1; unused in event mode).
    pub threads: u32,
    /// Idle time before an adaptive poll thread sleeps, in µs.
    pub budget_us: u64,
    /// CPUs to pin poll threads to, thread *k* on the *k*-th (cycling); `None`: no pinning.
    pub cpus: Option<Vec<usize>>,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            mode: PollMode::default(),
            threads: 1,
            budget_us: DEFAULT_POLL_BUDGET_US,
            cpus: None,
        }
    }
}

/// The CPUs this process may run on (its affinity mask, as `taskset` or a cgroup set it);
/// `None` if the kernel does not say.
fn allowed_cpus() -> Option<Vec<usize>> {
    crate::affinity::CpuMask::current().ok().map(|m| m.cpus())
}

/// `[0, 1, 2, 5]` as `0-2,5`.
fn cpu_list_text(cpus: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        parts.push(if cpus[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", cpus[i])
        });
        i += 1;
    }
    parts.join(",")
}

/// CPU numbers a list may name: below the kernel's CPU set size (`CPU_SETSIZE`), which no
/// `sched_setaffinity` mask can exceed.
pub const CPU_LIMIT: usize = 1024;
const _: () = assert!(libc::CPU_SETSIZE as usize == CPU_LIMIT);

/// Parses a CPU list such as `0,2-3`. Every number is checked against [`CPU_LIMIT`] before a
/// range is expanded, so `0-99999999999` fails at once instead of filling memory.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, ConfigError> {
    let bad = || ConfigError::InvalidCpuList {
        value: text.to_owned(),
    };
    let cpu = |s: &str| -> Result<usize, ConfigError> {
        let n: usize = s.trim().parse().map_err(|_| bad())?;
        if n >= CPU_LIMIT {
            return Err(ConfigError::CpuBeyondLimit {
                cpu: s.trim().to_owned(),
                limit: CPU_LIMIT,
            });
        }
        Ok(n)
    };
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (cpu(a)?, cpu(b)?);
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(cpu(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

impl PollConfig {
    /// Checks the values: at least one thread, a budget in 1..=1,000,000 µs, CPUs that exist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.threads == 0 {
            return Err(ConfigError::InvalidPollThreads {
                threads: self.threads,
            });
        }
        if self.budget_us == 0 || self.budget_us > MAX_POLL_BUDGET_US {
            return Err(ConfigError::InvalidPollBudget {
                budget_us: self.budget_us,
                max: MAX_POLL_BUDGET_US,
            });
        }
        if let Some(cpus) = &self.cpus {
            if cpus.is_empty() {
                return Err(ConfigError::InvalidCpuList {
                    value: String::new(),
                });
            }
            if let Some(allowed) = allowed_cpus() {
                if let Some(cpu) = cpus.iter().find(|c| !allowed.contains(c)) {
                    return Err(ConfigError::CpuNotAvailable {
                        cpu: *cpu,
                        allowed: cpu_list_text(&allowed),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_print_as_ranges() {
        assert_eq!(cpu_list_text(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(cpu_list_text(&[3]), "3");
        assert_eq!(cpu_list_text(&[]), "");
    }

    #[test]
    fn poll_cpus_must_be_in_this_process_affinity() {
        let allowed = allowed_cpus().expect("sched_getaffinity");
        let first = allowed[0];
        let ok = PollConfig {
            cpus: Some(vec![first]),
            ..PollConfig::default()
        };
        assert!(ok.validate().is_ok());
        let outside = (0..4096)
            .find(|c| !allowed.contains(c))
            .expect("a CPU outside");
        let bad = PollConfig {
            cpus: Some(vec![first, outside]),
            ..PollConfig::default()
        };
        let err = bad.validate().expect_err("outside the affinity");
        assert!(
            err.to_string().contains(&format!("CPU {outside} ")),
            "{err}"
        );
        assert!(err.to_string().contains(&cpu_list_text(&allowed)), "{err}");
    }

    #[test]
    fn modes_parse_and_unknown_ones_are_named() {
        assert_eq!("poll".parse::<PollMode>().ok(), Some(PollMode::Poll));
        assert_eq!("event".parse::<PollMode>().ok(), Some(PollMode::Event));
        assert_eq!(
            "adaptive".parse::<PollMode>().ok(),
            Some(PollMode::Adaptive)
        );
        let e = "spin".parse::<PollMode>().err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("`spin`")));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0").ok(), Some(vec![0]));
        assert_eq!(parse_cpu_list("0,2-4").ok(), Some(vec![0, 2, 3, 4]));
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    #[test]
    fn validation() {
        assert!(PollConfig::default().validate().is_ok());
        let zero = PollConfig {
            threads: 0,
            ..PollConfig::default()
        };
        assert!(zero.validate().is_err());
        let budget = PollConfig {
            budget_us: 0,
            ..PollConfig::default()
        };
        assert!(budget.validate().is_err());
        let cpus = PollConfig {
            cpus: Some(vec![100_000]),
            ..PollConfig::default()
        };
        assert!(cpus
            .validate()
            .err()
            .is_some_and(|e| e.to_string().contains("100000")));
    }
}
