//! Fields of `/proc/PID/status`: the memory of a process (the real daemon's, a test's own).

/// The number in a field of a `/proc/PID/status` text (`name` with its colon, as `"VmRSS:"` or
/// `"Threads:"`), without its `kB` unit.
pub fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
