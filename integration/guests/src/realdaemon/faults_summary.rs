//! The verdict and the results document of a fault run: reset latencies, the daemon's RSS
//! after the first and the last cycle, what the daemon held at the end, every check.

use serde_json::{json, Value};

use super::faults::{Outcome, Params};
use sockbypass_measure::stats::percentile_of;

use super::summary::change_pct;

/// The checks of a run and the results document.
#[derive(Debug)]
pub struct Verdict {
    /// Failed checks, empty when the run passed.
    pub failures: Vec<String>,
    /// The summary line.
    pub line: String,
    /// The results document.
    pub doc: Value,
}

/// Judges `o`, a run of `p`; `meta` (commit, machine, time) goes into the document as is.
pub fn verdict(p: &Params, o: &Outcome, meta: Value) -> Verdict {
    let mut failures = Vec::new();
    if let Some(e) = &o.error {
        failures.push(format!("the run stopped early: {e}"));
    }
    let done = o.cycles.len();
    if done != p.cycles as usize {
        failures.push(format!("{done} of {} cycles done", p.cycles));
    }
    for c in o.cycles.iter().filter(|c| !c.problems.is_empty()) {
        failures.push(format!("cycle {}: {}", c.n, c.problems.join("; ")));
    }
    let resets: Vec<f64> = o.cycles.iter().map(|c| c.reset_ms).collect();
    let stalls: Vec<f64> = o.cycles.iter().map(|c| c.guest_stall_ms).collect();
    let within = resets
        .iter()
        .filter(|&&ms| ms <= p.max_reset.as_secs_f64() * 1e3)
        .count();
    // The check is on the daemon's own resident memory: VmRSS without the pages of the guests'
    // RAM it maps (RssShmem), which belong to the guests and vary with where their buffers lie.
    let own = |c: &super::faults::Cycle| c.rss_kib.saturating_sub(c.shmem_kib);
    let (own_first, own_last) = (
        o.cycles.first().map_or(0, own),
        o.cycles.last().map_or(0, own),
    );
    let own_change = change_pct(own_first, own_last);
    if done > 0 && own_change.abs() > p.rss_tolerance_pct {
        failures.push(format!(
            "the daemon's RSS without guest RAM went from {own_first} KiB after cycle 1 to \
             {own_last} KiB after cycle {done} ({own_change:+.1}%, limit ±{}%)",
            p.rss_tolerance_pct
        ));
    }
    let rss_first = o.cycles.first().map_or(0, |c| c.rss_kib);
    let rss_last = o.cycles.last().map_or(0, |c| c.rss_kib);
    let rss_change = change_pct(rss_first, rss_last);
    let anon_first = o.cycles.first().map_or(0, |c| c.anon_kib);
    let anon_last = o.cycles.last().map_or(0, |c| c.anon_kib);
    let (entries_left, holds_nothing, gauges) = match &o.last_report {
        Some(s) => (
            s.peer_entries(),
            s.holds_nothing(),
            s.connection_gauges_json(),
        ),
        None => (0, false, Value::Null),
    };
    if o.last_report.is_some() && !holds_nothing {
        failures.push(format!(
            "the daemon still holds connection state at the end: {gauges}"
        ));
    } else if o.last_report.is_none() && o.error.is_none() {
        failures.push("no final report from the daemon".into());
    }
    if o.daemon_stopped_cleanly == Some(false) {
        failures.push("the daemon did not exit with status 0 on SIGTERM".into());
    }
    let fmt = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.1}"));
    let (p50, max) = (percentile_of(&resets, 500), percentile_of(&resets, 1000));
    let line = format!(
        "faults: {done}/{} cycles, reset latency p50 {} ms, max {} ms ({within}/{done} within \
         {:?}), daemon RSS without guest RAM {own_first} KiB after cycle 1, {own_last} KiB \
         after cycle {done} ({own_change:+.1}%; VmRSS {rss_first} -> {rss_last} KiB, \
         {rss_change:+.1}%; heap and stacks {anon_first} -> {anon_last} KiB), {entries_left} \
         connection entries left: {}",
        p.cycles,
        fmt(p50),
        fmt(max),
        p.max_reset,
        if failures.is_empty() { "PASS" } else { "FAIL" }
    );
    let mut doc = json!({
        "kind": "faults",
        "cycles_requested": p.cycles,
        "cycles_done": done,
        "accel": o.accel,
        "qemu": o.qemu,
        "daemon_args": p.daemon_args,
        "what_is_measured": "reset_ms: host monotonic clock, from just before SIGKILL of B's QEMU \
            to the host reading A's `sbtool stream` result line on A's serial log (polled every \
            1 ms); an upper bound of kill-to-reset-seen. guest_stall_ms: A's clock, from its \
            last read of echo data to the end of the stream.",
        "reset_ms": {
            "limit": p.max_reset.as_secs_f64() * 1e3,
            "p50": p50, "p99": percentile_of(&resets, 990), "max": max,
            "min": resets.iter().copied().reduce(f64::min),
            "within_limit": within,
        },
        "guest_stall_ms": { "p50": percentile_of(&stalls, 500), "max": percentile_of(&stalls, 1000) },
        "daemon_rss_kib": {
            "checked": "own = VmRSS - RssShmem after cycle 1 and after the last cycle, within \
                tolerance_pct",
            "own_after_first_cycle": own_first, "own_after_last_cycle": own_last,
            "own_change_pct": own_change, "tolerance_pct": p.rss_tolerance_pct,
            "after_first_cycle": rss_first, "after_last_cycle": rss_last,
            "change_pct": rss_change,
            "anon_after_first_cycle": anon_first, "anon_after_last_cycle": anon_last,
            "note": "VmRSS (after_*) includes the pages of the guests' RAM the daemon maps and \
                touched (RssShmem: rings and packet buffers, owned by the guests, varying with \
                where the guests put them); own_* leaves them out; anon_* is RssAnon, the \
                daemon's heap and stacks",
        },
        "at_end": {
            "peer_entries": entries_left, "holds_nothing": holds_nothing, "gauges": gauges,
        },
        "daemon_stopped_cleanly": o.daemon_stopped_cleanly,
        "params": {
            "verify_bytes": p.verify_bytes, "seed": p.seed, "guest_memory_mib": p.memory_mib,
            "kill_delay_ms": "uniform 0..=300 after 1 MiB of the stream came back",
        },
        "error": o.error,
        "failures": failures,
        "ok": failures.is_empty(),
        "cycles": o.cycles.iter().map(super::faults::Cycle::to_json).collect::<Vec<_>>(),
    });
    if let (Some(d), Value::Object(m)) = (doc.as_object_mut(), meta) {
        d.extend(m);
    }
    Verdict {
        failures,
        line,
        doc,
    }
}
