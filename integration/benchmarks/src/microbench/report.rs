//! The microbenchmark's results: the table people read and the JSON document scripts read,
//! with the two ratios against the physical limits and whether their goals are met.

use serde_json::{json, Value};
use sockbypassd::config::PollMode;
use sockbypassd::poll::BATCH_BUCKETS;

use super::scenarios::{ModeResult, Rate};

/// Goal: the switch's time per packet is at most this many cache-line round trips.
pub const GOAL_SWITCH_VS_CACHELINE: f64 = 2.0;
/// Goal: bulk bandwidth through the switch is at least this share of one core's `memcpy`.
pub const GOAL_BULK_VS_MEMCPY: f64 = 0.7;

/// Reference figures for the machine.
#[derive(Clone, Copy, Debug)]
pub struct Reference {
    /// Cache-line round trip between two cores, ns (`None` on one CPU).
    pub cacheline_rtt_ns: Option<f64>,
}

/// A whole run.
#[derive(Clone, Debug)]
pub struct Report {
    /// Machine description.
    pub machine: String,
    /// Commit of the code measured.
    pub commit: String,
    /// Reference figures.
    pub reference: Reference,
    /// One entry per mode.
    pub modes: Vec<ModeResult>,
    /// Whether the driver thread ran on the first allowed CPU and the poll threads on the others.
    pub pinned: bool,
}

/// The name the CLI and the config file use for `mode`.
pub fn mode_name(mode: PollMode) -> &'static str {
    match mode {
        PollMode::Event => "event",
        PollMode::Poll => "poll",
        PollMode::Adaptive => "adaptive",
    }
}

impl Report {
    /// The mode the ratios are taken from: poll if measured (the switch at its best), else the
    /// first one.
    fn headline(&self) -> Option<&ModeResult> {
        self.modes
            .iter()
            .find(|m| m.mode == PollMode::Poll)
            .or_else(|| self.modes.first())
    }

    /// Switch ns per 64 B packet (latency median, the measured pair alone) ÷ cache-line round
    /// trip.
    pub fn ratio_switch_vs_cacheline(&self, m: &ModeResult) -> Option<f64> {
        self.reference
            .cacheline_rtt_ns
            .filter(|&r| r > 0.0)
            .map(|r| m.latency.p50_ns / r)
    }

    /// Bulk GB/s ÷ `memcpy` GB/s (each bulk run against a `memcpy` run just before it).
    pub fn ratio_bulk_vs_memcpy(&self, m: &ModeResult) -> f64 {
        m.bulk_vs_memcpy
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = format!(
            "sockbypass switch microbenchmark ({}, commit {}, host only: no VM, no TCG/KVM)\n",
            self.machine, self.commit
        );
        let r = &self.reference;
        out += &format!(
            "reference: cache-line round trip {} (memcpy: measured before each bulk run)\n\n",
            r.cacheline_rtt_ns
                .map_or("n/a (one CPU)".into(), |v| format!("{v:.0} ns")),
        );
        if self.pinned {
            out += "driver thread on the first allowed CPU, poll threads on the others";
            out += " (--no-pin: no pinning)\n";
        }
        out +=
            "one way (TX avail to RX used), 64 B: p50/p99 ns with 2 VMs attached, p50 with all;\n";
        out += "ns/pkt: 64 B with the ring kept full; bulk: 64 KiB packets\n";
        out += &format!(
            "{:<9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>8} {:>8}\n",
            "mode",
            "p50 ns",
            "p99 ns",
            "all p50",
            "ns/pkt",
            "bulk GB/s",
            "idle CPU",
            "kicks",
            "irqs"
        );
        for m in &self.modes {
            out += &format!(
                "{:<9} {:>9.0} {:>9.0} {:>9.0} {:>10.0} {:>10.2} {:>9} {:>8} {:>8}\n",
                mode_name(m.mode),
                m.latency.p50_ns,
                m.latency.p99_ns,
                m.latency_all_attached.p50_ns,
                m.small.ns_per_packet(),
                m.bulk.gbytes_per_s(),
                m.idle_cpu_percent
                    .map_or("n/a".into(), |v| format!("{v:.1}%")),
                m.totals.kicks_received,
                m.totals.interrupts_sent,
            );
        }
        let steal: Vec<String> = self
            .modes
            .iter()
            .map(|m| {
                let v = m.steal_percent.map_or("n/a".into(), |v| format!("{v:.1}%"));
                format!("{} {v}", mode_name(m.mode))
            })
            .collect();
        out += &format!(
            "steal time (the hypervisor running others on these CPUs): {}\n",
            steal.join(", ")
        );
        out += "\nscaling, 64 B, Mpps over all pairs (ns/packet):\n";
        for m in &self.modes {
            out += &format!("{:<9}", mode_name(m.mode));
            for s in &m.scaling {
                out += &format!(" {}p {:.2} ({:.0})", s.pairs, s.mpps(), s.ns_per_packet());
            }
            out += "\n";
        }
        out += "\npackets per poll-thread batch (1, 2-3, 4-7 ... 128+):\n";
        // Event mode has no poll threads, hence no batches.
        for m in self.modes.iter().filter(|m| m.mode != PollMode::Event) {
            out += &format!("{:<9} {:?}\n", mode_name(m.mode), m.totals.batch_histogram);
        }
        if let Some(h) = self.headline() {
            out += &format!("\ngoals ({} mode):\n", mode_name(h.mode));
            out += &match self.ratio_switch_vs_cacheline(h) {
                Some(v) => format!(
                    "  switch ns/packet ÷ cache-line round trip = {v:.1} (goal ≤ {GOAL_SWITCH_VS_CACHELINE}): {}\n",
                    met(v <= GOAL_SWITCH_VS_CACHELINE)
                ),
                None => "  switch ÷ cache line: n/a (one CPU)\n".into(),
            };
            let b = self.ratio_bulk_vs_memcpy(h);
            out += &format!(
                "  bulk ÷ memcpy = {b:.2} ({:.2} GB/s ÷ {:.2} GB/s, the memcpy run just before it; \
                 goal ≥ {GOAL_BULK_VS_MEMCPY}): {}\n",
                h.bulk.gbytes_per_s(),
                h.memcpy_gbytes_per_s,
                met(b >= GOAL_BULK_VS_MEMCPY)
            );
        }
        out
    }

    /// The JSON document (`--json`).
    pub fn to_json(&self) -> Value {
        let modes: serde_json::Map<String, Value> = self
            .modes
            .iter()
            .map(|m| {
                (
                    mode_name(m.mode).to_string(),
                    json!({
                        "latency_ns_p50": m.latency.p50_ns,
                        "latency_ns_p99": m.latency.p99_ns,
                        "latency_samples": m.latency.samples,
                        "latency_all_attached_ns_p50": m.latency_all_attached.p50_ns,
                        "latency_all_attached_ns_p99": m.latency_all_attached.p99_ns,
                        "vms_attached": m.vms_attached,
                        "small_ns_per_packet": m.small.ns_per_packet(),
                        "small_mpps": m.small.mpps(),
                        "bulk_gbytes_per_s": m.bulk.gbytes_per_s(),
                        "memcpy_gbytes_per_s": m.memcpy_gbytes_per_s,
                        "scaling": m.scaling.iter().map(rate_json).collect::<Vec<_>>(),
                        "idle_cpu_percent": m.idle_cpu_percent,
                        "kicks_received": m.totals.kicks_received,
                        "interrupts_sent": m.totals.interrupts_sent,
                        "forwarded_packets": m.totals.forwarded,
                        "poll_loops": m.totals.loops,
                        "poll_useful_loops": m.totals.useful_loops,
                        "poll_sleeps": m.totals.sleeps,
                        "batch_histogram": m.totals.batch_histogram,
                        "steal_percent": m.steal_percent,
                        "batch_buckets": BATCH_BUCKETS,
                        "ratio_switch_vs_cacheline": self.ratio_switch_vs_cacheline(m),
                        "ratio_bulk_vs_memcpy": self.ratio_bulk_vs_memcpy(m),
                    }),
                )
            })
            .collect();
        let headline = self.headline();
        let ratio_switch = headline.and_then(|h| self.ratio_switch_vs_cacheline(h));
        let ratio_bulk = headline.map(|h| self.ratio_bulk_vs_memcpy(h));
        json!({
            "machine": self.machine,
            "commit": self.commit,
            "environment": "host only (simulated VMs in one process; no TCG or KVM involved)",
            "pinned": self.pinned,
            "reference": {
                "cacheline_rtt_ns": self.reference.cacheline_rtt_ns,
            },
            "modes": modes,
            "headline_mode": headline.map(|h| mode_name(h.mode)),
            "ratio_switch_vs_cacheline": ratio_switch,
            "ratio_bulk_vs_memcpy": ratio_bulk,
            "goals": {
                "ratio_switch_vs_cacheline_max": GOAL_SWITCH_VS_CACHELINE,
                "ratio_bulk_vs_memcpy_min": GOAL_BULK_VS_MEMCPY,
                "switch_vs_cacheline_met": ratio_switch.map(|v| v <= GOAL_SWITCH_VS_CACHELINE),
                "bulk_vs_memcpy_met": ratio_bulk.map(|v| v >= GOAL_BULK_VS_MEMCPY),
            },
        })
    }
}

fn rate_json(r: &Rate) -> Value {
    json!({
        "pairs": r.pairs,
        "packets": r.packets,
        "mpps": r.mpps(),
        "ns_per_packet": r.ns_per_packet(),
    })
}

fn met(yes: bool) -> &'static str {
    if yes {
        "met"
    } else {
        "NOT met"
    }
}
