//! What `/metrics` exports: a [`Sample`] of the daemon, read at each scrape from a [`Source`],
//! turned into metric families ([`families`]) and written by the `prometheus-client` collector
//! ([`SampleCollector`]).
//!
//! Every family is listed on every scrape, from the counter structs' `pairs()`, so a counter
//! added to `metrics.rs`, the poll engine or [`VmGauges`] is exported without a change here
//! (the tests fail until it has a help text in `help.rs` and a line in
//! README.md's "Prometheus metrics"). The samples come from the VMs that exist at the scrape: a VM
//! added or removed at run time appears or disappears with its series.

use std::fmt::Debug;
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::help;
use crate::metrics::{FastPathCountersSnapshot, VmCountersSnapshot};
use crate::poll::{PollCounters, PollCountersSnapshot};
use crate::runtime::VmSet;
use crate::switch::{Switch, VmGauges};

/// One VM at the moment of a scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmSample {
    /// The VM's name (label `vm`).
    pub name: String,
    /// Its CID (label `cid`).
    pub cid: u64,
    /// Whether a VMM has its rings bound.
    pub attached: bool,
    /// Its counters.
    pub counters: VmCountersSnapshot,
    /// What it holds now.
    pub gauges: VmGauges,
    /// Its fast-path counters, when it has the fast path.
    pub fastpath: Option<FastPathCountersSnapshot>,
}

/// Everything one scrape exports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// The VMs that exist now.
    pub vms: Vec<VmSample>,
    /// Every poll thread's counters, by thread number (none in event mode).
    pub poll_threads: Vec<PollCountersSnapshot>,
}

/// Where a scrape reads the daemon's state.
pub trait Source: Send + Sync + Debug + 'static {
    /// The state now.
    fn sample(&self) -> Sample;
}

/// The running daemon as a [`Source`]: the VMs served now (the [`VmSet`], which VMs added
/// and removed at run time change), their ports on the switch (counters and gauges), the
/// fast-path counters and the poll threads' counters, all shared with the threads that count.
#[derive(Debug)]
pub struct DaemonSource {
    vms: Arc<VmSet>,
    switch: Arc<Switch>,
    poll: Vec<Arc<PollCounters>>,
}

impl DaemonSource {
    /// A source over the VM set `vms`, their `switch`, and the poll threads' counters `poll`.
    pub fn new(vms: Arc<VmSet>, switch: Arc<Switch>, poll: Vec<Arc<PollCounters>>) -> Self {
        DaemonSource { vms, switch, poll }
    }

    /// The VMs served now, in the order they were added (as `sockbypass stats` lists them). A
    /// VM being removed while this runs is left out.
    fn current_vms(&self) -> Vec<VmSample> {
        self.vms
            .snapshot()
            .into_iter()
            .filter_map(|(config, index, _)| {
                let vm = self.switch.vm(index)?;
                Some(VmSample {
                    attached: vm.is_attached(),
                    counters: vm.counters.snapshot(),
                    gauges: self.switch.gauges(&config.name).unwrap_or_default(),
                    fastpath: self.vms.fastpath_counters(&config.name),
                    name: config.name,
                    cid: config.cid,
                })
            })
            .collect()
    }
}

impl Source for DaemonSource {
    fn sample(&self) -> Sample {
        Sample {
            vms: self.current_vms(),
            poll_threads: self.poll.iter().map(|c| c.snapshot()).collect(),
        }
    }
}

/// A counter (monotonic; exported with the `_total` suffix) or a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Label names and values of one series.
pub type Labels = Vec<(&'static str, String)>;

/// One metric family: its name (without `_total`), help, type and series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// The family's name; a counter's samples add `_total`.
    pub name: String,
    /// One line of help.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// Each series' labels and value.
    pub series: Vec<(Labels, u64)>,
}

/// Prefix of the per-VM families.
const VM: &str = "sockbypass_vm_";
/// Prefix of the per-poll-thread families.
const POLL: &str = "sockbypass_poll_";
/// Prefix of the drop counters in [`VmCountersSnapshot::pairs`]; the rest is the `reason`.
const DROP: &str = "drop_";
/// Prefix of the batch-size buckets in [`PollCountersSnapshot::pairs`]; the rest is the `size`.
const BATCH: &str = "batch_";

/// The `vm` and `cid` labels of `vm`.
fn vm_labels(vm: &VmSample) -> Labels {
    vec![("vm", vm.name.clone()), ("cid", vm.cid.to_string())]
}

/// Every family of `sample`, in a fixed order. A family whose series come only from VMs with
/// the fast path is left out when none has it; every other family is listed even with no series.
pub fn families(sample: &Sample) -> Vec<Family> {
    let mut out = Vec::new();
    let vm_counters: Vec<(&VmSample, Vec<(&'static str, u64)>)> = sample
        .vms
        .iter()
        .map(|vm| (vm, vm.counters.pairs()))
        .collect();
    out.push(Family {
        name: format!("{VM}attached"),
        help: help::ATTACHED,
        kind: Kind::Gauge,
        series: sample
            .vms
            .iter()
            .map(|vm| (vm_labels(vm), u64::from(vm.attached)))
            .collect(),
    });
    let counter_names = VmCountersSnapshot::default().pairs();
    for (i, (name, _)) in counter_names.iter().enumerate() {
        if name.starts_with(DROP) {
            continue;
        }
        out.push(Family {
            name: format!("{VM}{name}"),
            help: help::vm_counter(name),
            kind: Kind::Counter,
            series: vm_counters
                .iter()
                .map(|(vm, pairs)| (vm_labels(vm), pairs[i].1))
                .collect(),
        });
    }
    out.push(Family {
        name: format!("{VM}drops"),
        help: help::DROPS,
        kind: Kind::Counter,
        series: vm_counters
            .iter()
            .flat_map(|(vm, pairs)| {
                pairs.iter().filter_map(|(name, value)| {
                    let reason = name.strip_prefix(DROP)?;
                    let mut labels = vm_labels(vm);
                    labels.push(("reason", reason.to_owned()));
                    Some((labels, *value))
                })
            })
            .collect(),
    });
    let gauges: Vec<Vec<(&'static str, u64)>> =
        sample.vms.iter().map(|vm| vm.gauges.pairs()).collect();
    for (i, (name, _)) in VmGauges::default().pairs().iter().enumerate() {
        out.push(Family {
            name: format!("{VM}{name}"),
            help: help::vm_gauge(name),
            kind: Kind::Gauge,
            series: sample
                .vms
                .iter()
                .zip(&gauges)
                .map(|(vm, pairs)| (vm_labels(vm), pairs[i].1))
                .collect(),
        });
    }
    let fastpath: Vec<(&VmSample, Vec<(&'static str, u64)>)> = sample
        .vms
        .iter()
        .filter_map(|vm| Some((vm, vm.fastpath?.pairs())))
        .collect();
    if !fastpath.is_empty() {
        for (i, (name, _)) in FastPathCountersSnapshot::default()
            .pairs()
            .iter()
            .enumerate()
        {
            out.push(Family {
                name: format!("{VM}{name}"),
                help: help::fastpath_counter(name),
                kind: Kind::Counter,
                series: fastpath
                    .iter()
                    .map(|(vm, pairs)| (vm_labels(vm), pairs[i].1))
                    .collect(),
            });
        }
    }
    let threads: Vec<Vec<(&'static str, u64)>> =
        sample.poll_threads.iter().map(|t| t.pairs()).collect();
    let thread_label = |k: usize| vec![("thread", k.to_string())];
    for (i, (name, _)) in PollCountersSnapshot::default().pairs().iter().enumerate() {
        if name.starts_with(BATCH) {
            continue;
        }
        out.push(Family {
            name: format!("{POLL}{name}"),
            help: help::poll_counter(name),
            kind: Kind::Counter,
            series: threads
                .iter()
                .enumerate()
                .map(|(k, pairs)| (thread_label(k), pairs[i].1))
                .collect(),
        });
    }
    out.push(Family {
        name: format!("{POLL}batches"),
        help: help::BATCHES,
        kind: Kind::Counter,
        series: threads
            .iter()
            .enumerate()
            .flat_map(|(k, pairs)| {
                pairs.iter().filter_map(move |(name, value)| {
                    let size = name.strip_prefix(BATCH)?.replace('_', "-");
                    let mut labels = thread_label(k);
                    labels.push(("size", size));
                    Some((labels, *value))
                })
            })
            .collect(),
    });
    out
}

/// The `prometheus-client` collector: at each scrape, a fresh [`Sample`] from its [`Source`],
/// written as [`families`].
#[derive(Debug)]
pub struct SampleCollector {
    source: Arc<dyn Source>,
}

impl SampleCollector {
    /// A collector reading `source` at each scrape.
    pub fn new(source: Arc<dyn Source>) -> Self {
        SampleCollector { source }
    }
}

impl prometheus_client::collector::Collector for SampleCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in families(&self.source.sample()) {
            let metric_type = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric =
                encoder.encode_descriptor(&family.name, family.help, None, metric_type)?;
            for (labels, value) in &family.series {
                let series = metric.encode_family(labels)?;
                match family.kind {
                    Kind::Counter => ConstCounter::new(*value).encode(series)?,
                    Kind::Gauge => ConstGauge::new(*value).encode(series)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::exporter::help::UNDOCUMENTED;

    /// Two VMs (the second with the fast path), two poll threads, distinct values.
    pub(in crate::exporter) fn sample() -> Sample {
        let counters = VmCountersSnapshot {
            tx_packets: 7,
            drop_spoofed_src: 2,
            ..VmCountersSnapshot::default()
        };
        Sample {
            vms: vec![
                VmSample {
                    name: "web".into(),
                    cid: 3,
                    attached: true,
                    counters,
                    gauges: VmGauges {
                        peer_conns: 1,
                        ..VmGauges::default()
                    },
                    fastpath: None,
                },
                VmSample {
                    name: "db".into(),
                    cid: 4,
                    attached: false,
                    counters: VmCountersSnapshot::default(),
                    gauges: VmGauges::default(),
                    fastpath: Some(FastPathCountersSnapshot {
                        fastpath_conns: 5,
                        ..FastPathCountersSnapshot::default()
                    }),
                },
            ],
            poll_threads: vec![
                PollCountersSnapshot {
                    loops: 11,
                    batch_2_3: 4,
                    ..PollCountersSnapshot::default()
                },
                PollCountersSnapshot::default(),
            ],
        }
    }

    fn family<'a>(all: &'a [Family], name: &str) -> &'a Family {
        all.iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no family {name}"))
    }

    fn labels(pairs: &[(&'static str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    #[test]
    fn every_family_has_help_and_a_unique_name() {
        let all = families(&sample());
        let mut names: Vec<&str> = all.iter().map(|f| f.name.as_str()).collect();
        for f in &all {
            assert_ne!(f.help, UNDOCUMENTED, "{} has no help in help.rs", f.name);
            assert!(
                !f.help.contains(['"', '\\', '\n']),
                "{}: help must need no escaping",
                f.name
            );
        }
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate family names");
    }

    #[test]
    fn per_vm_series_carry_vm_and_cid() {
        let all = families(&sample());
        let tx = family(&all, "sockbypass_vm_tx_packets");
        assert_eq!(tx.kind, Kind::Counter);
        assert_eq!(
            tx.series,
            vec![
                (labels(&[("vm", "web"), ("cid", "3")]), 7),
                (labels(&[("vm", "db"), ("cid", "4")]), 0),
            ]
        );
        let peer = family(&all, "sockbypass_vm_peer_conns");
        assert_eq!(peer.kind, Kind::Gauge);
        assert_eq!(peer.series[0].1, 1);
        let attached = family(&all, "sockbypass_vm_attached");
        assert_eq!(
            attached.series.iter().map(|s| s.1).collect::<Vec<_>>(),
            [1, 0]
        );
    }

    #[test]
    fn drops_are_one_family_with_a_reason_per_drop_counter() {
        let all = families(&sample());
        assert!(
            !all.iter().any(|f| f.name.contains("_drop_")),
            "drop counters must not be families of their own"
        );
        let drops = family(&all, "sockbypass_vm_drops");
        let reasons: Vec<&str> = VmCountersSnapshot::default()
            .pairs()
            .into_iter()
            .filter_map(|(n, _)| n.strip_prefix("drop_"))
            .collect();
        assert!(reasons.contains(&"spoofed_src") && reasons.contains(&"policy"));
        assert_eq!(drops.series.len(), 2 * reasons.len());
        assert!(drops.series.contains(&(
            labels(&[("vm", "web"), ("cid", "3"), ("reason", "spoofed_src")]),
            2
        )));
        assert!(drops.series.contains(&(
            labels(&[("vm", "db"), ("cid", "4"), ("reason", "spoofed_src")]),
            0
        )));
    }

    #[test]
    fn fast_path_families_list_only_vms_with_the_fast_path() {
        let mut s = sample();
        let all = families(&s);
        let conns = family(&all, "sockbypass_vm_fastpath_conns");
        assert_eq!(
            conns.series,
            vec![(labels(&[("vm", "db"), ("cid", "4")]), 5)]
        );
        s.vms[1].fastpath = None;
        assert!(!families(&s)
            .iter()
            .any(|f| f.name.starts_with("sockbypass_vm_fastpath_")));
    }

    #[test]
    fn poll_threads_are_labelled_by_number_with_a_batch_size_family() {
        let all = families(&sample());
        let loops = family(&all, "sockbypass_poll_loops");
        assert_eq!(
            loops.series,
            vec![
                (labels(&[("thread", "0")]), 11),
                (labels(&[("thread", "1")]), 0)
            ]
        );
        for name in ["useful_loops", "packets", "sleeps", "wakeups"] {
            family(&all, &format!("sockbypass_poll_{name}"));
        }
        let batches = family(&all, "sockbypass_poll_batches");
        assert_eq!(batches.series.len(), 2 * crate::poll::BATCH_BUCKETS.len());
        assert!(batches
            .series
            .contains(&(labels(&[("thread", "0"), ("size", "2-3")]), 4)));
        assert!(batches.series.iter().any(|(l, _)| l[1].1 == "128-up"));
    }

    #[test]
    fn families_follow_the_vm_set() {
        let mut s = sample();
        s.vms.remove(0);
        let all = families(&s);
        assert!(family(&all, "sockbypass_vm_tx_packets")
            .series
            .iter()
            .all(|(l, _)| l[0].1 == "db"));
        s.vms.clear();
        s.poll_threads.clear();
        // No VM: the families are still declared, with no series.
        let all = families(&s);
        assert!(family(&all, "sockbypass_vm_tx_packets").series.is_empty());
    }

    #[test]
    fn deploy_readme_lists_every_family() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let text = std::fs::read_to_string(path).expect("README.md");
        for f in families(&sample()) {
            let exported = match f.kind {
                Kind::Counter => format!("{}_total", f.name),
                Kind::Gauge => f.name.clone(),
            };
            assert!(
                text.contains(&format!("`{exported}`")),
                "{path} does not list `{exported}`"
            );
        }
        for (reason, _) in VmCountersSnapshot::default().pairs() {
            if let Some(reason) = reason.strip_prefix("drop_") {
                assert!(
                    text.contains(&format!("`{reason}`")),
                    "{path} does not list drop reason `{reason}`"
                );
            }
        }
    }
}
