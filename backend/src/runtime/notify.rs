//! Telling systemd (a `Type=notify` service) that the daemon is ready, or reloading: a
//! datagram to `$NOTIFY_SOCKET`, when the variable is set; nothing otherwise.

/// What the daemon tells systemd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Every socket is bound and every thread started.
    Ready,
    /// A reload started; [`Readiness::Ready`] follows when it ends.
    Reloading,
}

/// Sends `state` to systemd if the daemon runs under it. A failure is logged: systemd then
/// times the start-up out, which says more than a daemon that refuses to run.
pub fn notify_systemd(state: Readiness) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let result = match state {
        Readiness::Ready => sd_notify::notify(false, &[sd_notify::NotifyState::Ready]),
        Readiness::Reloading => {
            let now = monotonic_usec();
            sd_notify::notify(
                false,
                &[
                    sd_notify::NotifyState::Reloading,
                    sd_notify::NotifyState::Custom(&format!("MONOTONIC_USEC={now}")),
                ],
            )
        }
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, ?state, "cannot notify systemd");
    }
}

/// `CLOCK_MONOTONIC` in microseconds, as systemd wants it beside `RELOADING=1`.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, exclusively borrowed timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1_000
}
