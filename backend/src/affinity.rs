//! CPU affinity of the calling thread: the CPUs it may run on, and pinning it to one. Used by
//! the poll threads (`--poll-cpus`), by the check of that list, and by the microbenchmark.

use std::io;

/// A set of CPUs, as `sched_getaffinity`/`sched_setaffinity` use it.
#[derive(Clone, Copy)]
pub struct CpuMask(libc::cpu_set_t);

impl std::fmt::Debug for CpuMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CpuMask").field(&self.cpus()).finish()
    }
}

impl CpuMask {
    /// The calling thread's mask (as `taskset`, a cgroup or an earlier pin set it).
    pub fn current() -> io::Result<CpuMask> {
        // SAFETY: cpu_set_t is plain bytes; all-zero is an empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
        let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(CpuMask(set))
    }

    /// A mask holding only `cpu`.
    pub fn single(cpu: usize) -> io::Result<CpuMask> {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {cpu} is beyond the kernel's CPU set size"),
            ));
        }
        // SAFETY: cpu_set_t is plain bytes; all-zero is an empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so CPU_SET writes inside `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        Ok(CpuMask(set))
    }

    /// The CPUs in the mask, in increasing order.
    pub fn cpus(&self) -> Vec<usize> {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: CPU_ISSET reads one bit of the set, and `c` is below CPU_SETSIZE.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &self.0) })
            .collect()
    }

    /// Makes this the calling thread's mask.
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY: `self.0` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&self.0), &self.0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Pins the calling thread to `cpu`; returns the mask it had, to [`CpuMask::apply`] later.
pub fn pin_current_thread(cpu: usize) -> io::Result<CpuMask> {
    let old = CpuMask::current()?;
    CpuMask::single(cpu)?.apply()?;
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_moves_the_thread_and_restoring_gives_the_mask_back() {
        let before = CpuMask::current().expect("current mask");
        let allowed = before.cpus();
        assert!(!allowed.is_empty());
        let last = *allowed.last().expect("a CPU");
        let old = pin_current_thread(last).expect("pin");
        assert_eq!(old.cpus(), allowed);
        assert_eq!(CpuMask::current().expect("pinned").cpus(), vec![last]);
        old.apply().expect("restore");
        assert_eq!(CpuMask::current().expect("restored").cpus(), allowed);
        assert!(CpuMask::single(libc::CPU_SETSIZE as usize).is_err());
    }
}
