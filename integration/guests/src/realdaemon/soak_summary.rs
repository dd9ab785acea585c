//! The verdict and the results document of a soak: connections and bytes verified per guest
//! and in all, the connection table over time and at the end, the daemon's memory.

use serde_json::{json, Value};

use super::soak::{Outcome, Params};

/// The checks of a soak and the results document.
#[derive(Debug)]
pub struct Verdict {
    /// Failed checks, empty when the soak passed.
    pub failures: Vec<String>,
    /// The summary line.
    pub line: String,
    /// The results document.
    pub doc: Value,
}

fn sum(results: &[Value], key: &str) -> u64 {
    results.iter().map(|r| r[key].as_u64().unwrap_or(0)).sum()
}

/// Judges `o`, a soak of `p`; `meta` (commit, machine, time) goes into the document as is.
pub fn verdict(p: &Params, o: &Outcome, meta: Value) -> Verdict {
    let mut failures = Vec::new();
    if let Some(e) = &o.error {
        failures.push(format!("the soak stopped early: {e}"));
    }
    let r = &o.guest_results;
    if r.len() != p.guests as usize && o.error.is_none() {
        failures.push(format!("{} of {} guests reported", r.len(), p.guests));
    }
    for (i, g) in r.iter().enumerate() {
        if g["ok"] != true {
            failures.push(format!("guest g{i}'s soak failed: {g}"));
        }
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        if g["max_open"].as_u64().unwrap_or(0) < u64::from(p.slots_of(i)) {
            failures.push(format!(
                "guest g{i} never had its {} connections open at once: {g}",
                p.slots_of(i)
            ));
        }
    }
    // The table: reaches `conns` within the ramp, then holds at least that until the first
    // guest's run ends (a second of margin for that guest's clock and start-up).
    let ramp = p.ramp.as_secs_f64();
    let reached = o
        .samples
        .iter()
        .find(|s| s.entries >= u64::from(p.conns))
        .map(|s| s.at_s);
    match reached {
        Some(at) if at <= ramp => {}
        Some(at) => failures.push(format!(
            "the table reached {} entries only {at:.1} s after the last guest started (limit {ramp:.0} s)",
            p.conns
        )),
        None if o.error.is_none() => failures.push(format!(
            "the table never held {} entries (most: {})",
            p.conns,
            o.samples.iter().map(|s| s.entries).max().unwrap_or(0)
        )),
        None => {}
    }
    let steady_end = o.steady_until_s - 1.0;
    let steady: Vec<_> = o
        .samples
        .iter()
        .filter(|s| reached.is_some_and(|r| s.at_s >= r) && s.at_s <= steady_end)
        .collect();
    let steady_min = steady.iter().map(|s| s.entries).min();
    let steady_max = steady.iter().map(|s| s.entries).max();
    if let Some(min) = steady_min.filter(|&m| m < u64::from(p.conns)) {
        failures.push(format!(
            "the table fell to {min} entries while every client should hold {}",
            p.conns
        ));
    }
    let end = o.end_report.as_ref();
    let holds_nothing = end.is_some_and(super::snapshot::Snapshot::holds_nothing);
    if end.is_some() && !holds_nothing {
        failures.push(format!(
            "the daemon still holds connection state after the clients closed: {}",
            end.map_or(
                Value::Null,
                super::snapshot::Snapshot::connection_gauges_json
            )
        ));
    }
    let limit_drops = end.map_or(0, |s| s.counter_sum("drop_conn_limit"));
    if limit_drops > 0 {
        failures.push(format!(
            "{limit_drops} connections were refused for a connection limit"
        ));
    }
    if o.daemon_stopped_cleanly == Some(false) {
        failures.push("the daemon did not exit with status 0 on SIGTERM".into());
    }
    let opened = sum(r, "opened");
    let verified = sum(r, "bytes_verified");
    let rss: Vec<u64> = o.samples.iter().map(|s| s.memory.rss_kib).collect();
    let anon: Vec<u64> = o.samples.iter().map(|s| s.memory.anon_kib).collect();
    let line = format!(
        "soak: {} s, {} guests, {} connections at once (table min {} / max {} in the steady \
         window), {opened} connections opened, {} completed, {} failed, {:.1} GiB verified \
         ({} messages, {} bulk sessions); daemon peak RSS {} KiB (own heap and stacks at most {} \
         KiB); table at the end: {}: {}",
        p.seconds,
        p.guests,
        p.conns,
        steady_min.map_or("-".into(), |v| v.to_string()),
        steady_max.map_or("-".into(), |v| v.to_string()),
        sum(r, "completed"),
        sum(r, "failed"),
        verified as f64 / f64::from(1u32 << 30),
        sum(r, "messages"),
        sum(r, "bulk_sessions"),
        o.peak_rss_kib,
        anon.iter().max().copied().unwrap_or(0),
        end.map_or("no report".into(), |s| format!(
            "{} entries",
            s.peer_entries()
        )),
        if failures.is_empty() { "PASS" } else { "FAIL" }
    );
    let mut doc = json!({
        "kind": "soak",
        "seconds": p.seconds,
        "guests": p.guests,
        "conns": p.conns,
        "accel": o.accel,
        "qemu": o.qemu,
        "config": {
            "max_conns": p.max_conns, "max_conns_per_peer": p.max_conns_per_peer,
            "guest_memory_mib": p.memory_mib, "bulk_every": p.bulk_every,
            "bulk_max_bytes": p.bulk_max, "message_bytes": "1..=64 KiB (70% <= 256 B, 25% <= 4 KiB)",
            "sample_every_s": p.sample_every.as_secs_f64(), "ramp_s": ramp,
            "guest_connect_timeout_ms": p.connect_timeout_ms,
            "daemon_args": p.daemon_args,
        },
        "connections_opened": opened,
        "connections_completed": sum(r, "completed"),
        "connections_failed": sum(r, "failed"),
        "messages": sum(r, "messages"),
        "bulk_sessions": sum(r, "bulk_sessions"),
        "bytes_verified": verified,
        "bytes_through_switch": end.map(|s| s.counter_sum("fwd_bytes")),
        "table": {
            "reached_conns_at_s": reached, "steady_until_s": o.steady_until_s,
            "steady_min_entries": steady_min, "steady_max_entries": steady_max,
            "at_end_entries": end.map(|s| s.peer_entries()), "at_end_holds_nothing": holds_nothing,
            "at_end_gauges": end.map(super::snapshot::Snapshot::connection_gauges_json),
            "emptied_after_s": o.emptied_after_s,
        },
        "daemon": {
            "peak_rss_kib": o.peak_rss_kib,
            "rss_kib_min": rss.iter().min(), "rss_kib_max": rss.iter().max(),
            "rss_kib_first_sample": rss.first(), "rss_kib_last_sample": rss.last(),
            "rss_anon_kib_max": anon.iter().max(),
            "at_end": o.end_memory.map(|m| json!({
                "rss_kib": m.rss_kib, "rss_anon_kib": m.anon_kib, "rss_shmem_kib": m.shmem_kib,
            })),
            "note": "RSS counts the pages of the guests' RAM the daemon touched (RssShmem: rings and \
                packet buffers of 4 guests that map 512 MiB each); RssAnon is its own heap and stacks",
            "drop_conn_limit": limit_drops,
            "stopped_cleanly": o.daemon_stopped_cleanly,
        },
        "samples": o.samples.iter().map(|s| json!({
            "t_s": s.at_s, "entries": s.entries, "per_vm": s.per_vm, "rss_kib": s.memory.rss_kib,
            "rss_anon_kib": s.memory.anon_kib, "rss_shmem_kib": s.memory.shmem_kib,
        })).collect::<Vec<_>>(),
        "guest_results": r,
        "error": o.error,
        "failures": failures,
        "ok": failures.is_empty(),
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
