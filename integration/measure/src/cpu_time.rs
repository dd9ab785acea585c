//! CPU time of a process from `/proc/<pid>/stat`: what the in-process daemon burns (idle or
//! busy), and what the guests' QEMU processes got.

use std::time::Duration;

/// User plus system CPU time of this whole process so far; `None` if `/proc` cannot be read.
pub fn process_cpu_time() -> Option<Duration> {
    stat_cpu_time("/proc/self/stat")
}

/// The same for process `pid` (its threads included).
pub fn cpu_time_of(pid: u32) -> Option<Duration> {
    stat_cpu_time(&format!("/proc/{pid}/stat"))
}

/// Time the hypervisor ran something else while this (virtual) machine's CPUs wanted to run,
/// summed over all CPUs (`steal` in `/proc/stat`). On a VM, figures measured while it grows are
/// suspect.
pub fn steal_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq steal ...
    let steal: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    ticks_to_duration(steal)
}

fn ticks_to_duration(ticks: u64) -> Option<Duration> {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&t| t > 0)?;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

fn stat_cpu_time(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    ticks_to_duration(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_while_spinning() {
        let before = process_cpu_time().expect("/proc/self/stat");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        // Spin until 200 ms of CPU time show up (ticks are 10 ms), on a loaded machine too;
        // the deadline is wall time.
        while after - before < Duration::from_millis(200) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "20 s of spinning never showed 200 ms of CPU time: {before:?} -> {after:?}"
            );
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            after = process_cpu_time().expect("/proc/self/stat");
        }
        let mine = cpu_time_of(std::process::id()).expect("/proc/<pid>/stat");
        assert!(mine >= after);
        assert_eq!(cpu_time_of(u32::MAX), None);
        // Steal time exists in /proc/stat on any Linux (zero on bare metal) and never shrinks.
        let s1 = steal_time().expect("/proc/stat steal");
        let s2 = steal_time().expect("/proc/stat steal");
        assert!(s2 >= s1);
    }
}
