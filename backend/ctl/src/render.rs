//! What `sockbypass` prints for people: the VM table, the non-zero counters, a VM added, a
//! reload's report. (`--json` prints the answers as they are.)

use crate::protocol::{CounterMap, Origin, ReloadReport, Stats, VmInfo};

/// Rows of cells as columns aligned on the widest cell, two spaces apart, without trailing
/// blanks.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[c].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat(' ').take(pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn or_dash(list: String) -> String {
    if list.is_empty() {
        "-".into()
    } else {
        list
    }
}

fn origin(o: Origin) -> &'static str {
    match o {
        Origin::Config => "config",
        Origin::Control => "control",
    }
}

/// `vm list`: one row per VM under a header.
pub fn vm_table(vms: &[VmInfo]) -> String {
    let mut rows = vec![[
        "NAME", "CID", "ATTACHED", "ORIGIN", "GROUPS", "PORTS", "IPS", "WINDOWS", "SOCKET",
    ]
    .map(str::to_owned)
    .to_vec()];
    for vm in vms {
        rows.push(vec![
            vm.name.clone(),
            vm.cid.to_string(),
            if vm.attached { "yes" } else { "no" }.into(),
            origin(vm.origin).into(),
            or_dash(vm.groups.join("+")),
            match &vm.ports {
                None => "any".into(),
                Some(p) => or_dash(p.iter().map(u32::to_string).collect::<Vec<_>>().join("+")),
            },
            or_dash(
                vm.ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("+"),
            ),
            vm.windows.len().to_string(),
            vm.socket.display().to_string(),
        ]);
    }
    table(&rows)
}

/// `vm add`: what the daemon now serves.
pub fn vm_added(vm: &VmInfo) -> String {
    let mut out = format!(
        "added VM {} with CID {}: its VMM attaches to {}\n",
        vm.name,
        vm.cid,
        vm.socket.display()
    );
    if let Some(uds) = &vm.uds {
        out.push_str(&format!(
            "  host programs reach it through {}\n",
            uds.display()
        ));
    }
    for w in &vm.windows {
        out.push_str(&format!(
            "  fast-path window {} ({} bytes{})\n",
            w.path.display(),
            w.size,
            w.pair_with
                .as_ref()
                .map(|p| format!(", shared with {p}"))
                .unwrap_or_default()
        ));
    }
    out
}

/// The non-zero entries of `map` as `    name  value` lines, names aligned; `    (all zero)`
/// when none.
fn non_zero(map: &CounterMap) -> String {
    let rows: Vec<Vec<String>> = map
        .iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| vec![format!("    {k}"), v.to_string()])
        .collect();
    if rows.is_empty() {
        "    (all zero)\n".into()
    } else {
        table(&rows)
    }
}

/// `stats`: per VM its non-zero counters, gauges and fast-path counters; per poll thread its
/// non-zero counters.
pub fn stats(stats: &Stats) -> String {
    let mut out = String::new();
    for vm in &stats.vms {
        out.push_str(&format!("VM {} (CID {})\n", vm.name, vm.cid));
        out.push_str("  counters\n");
        out.push_str(&non_zero(&vm.counters));
        out.push_str("  gauges\n");
        out.push_str(&non_zero(&vm.gauges));
        if let Some(fp) = &vm.fastpath {
            out.push_str("  fast path\n");
            out.push_str(&non_zero(fp));
        }
    }
    for (i, thread) in stats.poll_threads.iter().enumerate() {
        out.push_str(&format!("poll thread {i}\n"));
        out.push_str(&non_zero(thread));
    }
    if out.is_empty() {
        out.push_str("no VMs and no poll threads\n");
    }
    out
}

/// `reload`: which VMs were added, removed, replaced, updated and left.
pub fn reloaded(r: &ReloadReport) -> String {
    let list = |v: &[String]| or_dash(v.join(" "));
    let mut out = format!(
        "reloaded: added {}; removed {}; replaced {}; updated {}; unchanged {}\n",
        list(&r.added),
        list(&r.removed),
        list(&r.replaced),
        list(&r.updated),
        list(&r.unchanged)
    );
    if !r.needs_restart.is_empty() {
        out.push_str(&format!(
            "changed but applied only when the daemon restarts: {}\n",
            r.needs_restart.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{test_vm, test_vm_with_windows};
    use crate::protocol::VmStats;

    #[test]
    fn the_vm_table_is_aligned() {
        let mut b = test_vm_with_windows();
        b.name = "database".into();
        b.cid = 12;
        b.attached = true;
        b.origin = Origin::Control;
        b.groups = vec!["prod".into(), "db".into()];
        b.ports = Some(vec![22, 5432]);
        b.ips = vec![
            "10.0.0.12".parse().expect("address"),
            "fd00::c".parse().expect("address"),
        ];
        b.socket = "/run/sockbypass/database.sock".into();
        let text = vm_table(&[test_vm(), b]);
        assert_eq!(
            text,
            "NAME      CID  ATTACHED  ORIGIN   GROUPS   PORTS    IPS                WINDOWS  SOCKET\n\
             vm1       3    no        config   prod     any      -                  0        /run/sockbypass/vm1.sock\n\
             database  12   yes       control  prod+db  22+5432  10.0.0.12+fd00::c  2        /run/sockbypass/database.sock\n"
        );
        assert_eq!(
            vm_table(&[]),
            "NAME  CID  ATTACHED  ORIGIN  GROUPS  PORTS  IPS  WINDOWS  SOCKET\n"
        );
    }

    #[test]
    fn stats_show_only_what_is_not_zero() {
        let vm = VmStats {
            name: "vm1".into(),
            cid: 3,
            counters: [
                ("rx_packets", 5),
                ("drop_policy", 0),
                ("fwd_bytes", 123_456),
            ]
            .map(|(k, v)| (k.to_owned(), v))
            .into(),
            gauges: [("connections", 0)].map(|(k, v)| (k.to_owned(), v)).into(),
            fastpath: None,
        };
        let s = Stats {
            vms: vec![vm],
            poll_threads: vec![[("loops", 7), ("sleeps", 0)]
                .map(|(k, v)| (k.to_owned(), v))
                .into()],
        };
        assert_eq!(
            stats(&s),
            "VM vm1 (CID 3)\n  counters\n    fwd_bytes   123456\n    rx_packets  5\n  gauges\n    (all zero)\n\
             poll thread 0\n    loops  7\n"
        );
        assert_eq!(stats(&Stats::default()), "no VMs and no poll threads\n");
    }

    #[test]
    fn reload_and_add_reports() {
        let r = ReloadReport {
            added: vec!["a".into(), "b".into()],
            updated: vec!["d".into()],
            unchanged: vec!["c".into()],
            ..ReloadReport::default()
        };
        assert_eq!(
            reloaded(&r),
            "reloaded: added a b; removed -; replaced -; updated d; unchanged c\n"
        );
        let r = ReloadReport {
            needs_restart: vec!["poll_mode".into(), "log_level".into()],
            ..r
        };
        assert_eq!(
            reloaded(&r),
            "reloaded: added a b; removed -; replaced -; updated d; unchanged c\n\
             changed but applied only when the daemon restarts: poll_mode, log_level\n"
        );
        let text = vm_added(&test_vm_with_windows());
        assert!(
            text.starts_with(
                "added VM vm1 with CID 3: its VMM attaches to /run/sockbypass/vm1.sock\n"
            ),
            "{text}"
        );
        assert!(text.contains("(1048576 bytes, shared with vm2)"), "{text}");
    }
}
