//! What `sockbypassd` logs on SIGUSR1, read back: for every VM a `VM counters` line
//! (`VmCountersSnapshot { tx_packets: 1, ... }`) and a `VM gauges` line
//! (`VmGauges { peer_conns: 0, ... }`), parsed into name → value maps.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// One VM's counters and gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmFigures {
    /// Counters (totals since start): `tx_packets`, `rst_sent`, `fwd_bytes`...
    pub counters: BTreeMap<String, u64>,
    /// Gauges (live state): `peer_conns`, `held_chains`, `host_conns`...
    pub gauges: BTreeMap<String, u64>,
}

impl VmFigures {
    /// A counter, 0 when absent.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// A gauge, 0 when absent.
    pub fn gauge(&self, name: &str) -> u64 {
        self.gauges.get(name).copied().unwrap_or(0)
    }
}

/// Every VM's figures from one SIGUSR1 report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// By VM name.
    pub vms: BTreeMap<String, VmFigures>,
}

/// The gauges that hold connection state or memory tied to connections: all zero when the
/// daemon holds no connection of any kind.
pub const CONNECTION_GAUGES: [&str; 6] = [
    "peer_conns",
    "held_chains",
    "queued_replies",
    "inbound_queued",
    "host_conns",
    "host_buffered_bytes",
];

impl Snapshot {
    /// Parses the report lines in `log` (later lines win for a VM seen twice).
    pub fn parse(log: &str) -> Snapshot {
        let mut s = Snapshot::default();
        for line in log.lines() {
            for (marker, gauges) in [(" VM counters vm=", false), (" VM gauges vm=", true)] {
                let Some(at) = line.find(marker) else {
                    continue;
                };
                let rest = &line[at + marker.len()..];
                let Some(name) = rest.split_whitespace().next() else {
                    continue;
                };
                let fields = fields(rest);
                let vm = s.vms.entry(name.to_owned()).or_default();
                if gauges {
                    vm.gauges = fields;
                } else {
                    vm.counters = fields;
                }
            }
        }
        s
    }

    /// Whether every VM of `names` has its gauges in this snapshot.
    pub fn has_gauges_of<'a>(&self, mut names: impl Iterator<Item = &'a str>) -> bool {
        names.all(|n| self.vms.get(n).is_some_and(|v| !v.gauges.is_empty()))
    }

    /// The sum of gauge `name` over all VMs.
    pub fn gauge_sum(&self, name: &str) -> u64 {
        self.vms.values().map(|v| v.gauge(name)).sum()
    }

    /// The sum of counter `name` over all VMs.
    pub fn counter_sum(&self, name: &str) -> u64 {
        self.vms.values().map(|v| v.counter(name)).sum()
    }

    /// VM-to-VM connection entries in the daemon's table: every entry between two VMs counts
    /// in both VMs' `peer_conns` (the guests here never connect to themselves).
    pub fn peer_entries(&self) -> u64 {
        self.gauge_sum("peer_conns") / 2
    }

    /// Whether the daemon holds no connection state at all (every [`CONNECTION_GAUGES`] gauge
    /// of every VM is zero).
    pub fn holds_nothing(&self) -> bool {
        CONNECTION_GAUGES.iter().all(|g| self.gauge_sum(g) == 0)
    }

    /// The connection gauges of every VM, as JSON.
    pub fn connection_gauges_json(&self) -> Value {
        let per_vm: serde_json::Map<String, Value> = self
            .vms
            .iter()
            .map(|(name, v)| {
                let g: serde_json::Map<String, Value> = CONNECTION_GAUGES
                    .iter()
                    .map(|k| ((*k).to_owned(), json!(v.gauge(k))))
                    .collect();
                (name.clone(), Value::Object(g))
            })
            .collect();
        Value::Object(per_vm)
    }
}

/// `key: number` pairs between the first `{` and the last `}` of `text`.
fn fields(text: &str) -> BTreeMap<String, u64> {
    let (Some(open), Some(close)) = (text.find('{'), text.rfind('}')) else {
        return BTreeMap::new();
    };
    if close <= open {
        return BTreeMap::new();
    }
    text[open + 1..close]
        .split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-12-02T05:39:13.234937Z  INFO VM counters vm=a counters=VmCountersSnapshot { tx_packets: 5853, rst_sent: 2, fwd_bytes: 140181505 }
2026-12-02T05:39:13.234950Z  INFO VM gauges vm=a gauges=VmGauges { peer_conns: 1, held_chains: 0, queued_replies: 0, inbound_queued: 0, host_conns: 0, host_buffer_granted: 0, host_buffered_bytes: 0 }
2026-12-02T05:39:13.234960Z  WARN something else { peer_conns: 99 }
2026-12-02T05:39:13.234981Z  INFO VM counters vm=b counters=VmCountersSnapshot { tx_packets: 6354, rst_sent: 0, fwd_bytes: 7 }
2026-12-02T05:39:13.234990Z  INFO VM gauges vm=b gauges=VmGauges { peer_conns: 1, held_chains: 3, queued_replies: 0, inbound_queued: 0, host_conns: 0, host_buffer_granted: 0, host_buffered_bytes: 0 }
2026-12-02T05:39:13.234987Z  INFO poll thread counters thread=0 counters=PollCountersSnapshot { loops: 99352 }
";

    #[test]
    fn parses_counters_and_gauges_per_vm() {
        let s = Snapshot::parse(LOG);
        assert_eq!(s.vms.len(), 2);
        assert_eq!(s.vms["a"].counter("rst_sent"), 2);
        assert_eq!(s.vms["a"].counter("fwd_bytes"), 140_181_505);
        assert_eq!(s.vms["b"].gauge("held_chains"), 3);
        assert_eq!(s.counter_sum("tx_packets"), 5853 + 6354);
        assert_eq!(s.peer_entries(), 1);
        assert!(!s.holds_nothing());
        assert!(s.has_gauges_of(["a", "b"].into_iter()));
        assert!(!s.has_gauges_of(["a", "c"].into_iter()));
        assert_eq!(s.connection_gauges_json()["b"]["held_chains"], 3);
    }

    #[test]
    fn empty_when_every_connection_gauge_is_zero() {
        let log = "x INFO VM gauges vm=a gauges=VmGauges { peer_conns: 0, held_chains: 0, queued_replies: 0, inbound_queued: 0, host_conns: 0, host_buffer_granted: 4096, host_buffered_bytes: 0 }\n";
        let s = Snapshot::parse(log);
        assert!(s.holds_nothing(), "a granted budget is not a connection");
        assert_eq!(Snapshot::parse("no report here").vms.len(), 0);
    }
}
