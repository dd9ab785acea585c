//! The measurement plan the client guest runs: for each repetition, RTT and bulk over the
//! bypass (`AF_VSOCK` through `sockbypassd`) and over virtio-net (TCP across the bridge), with
//! the order of the two paths alternating between repetitions so that neither always goes first.

use sockbypass_guests::sbtool::wait_for_server;

/// One way from the client guest to the server guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// `AF_VSOCK` through `sockbypassd`.
    Bypass,
    /// TCP over virtio-net, taps and a Linux bridge.
    VirtioNet,
}

impl Path {
    /// The key used in the JSON report.
    pub fn key(self) -> &'static str {
        match self {
            Path::Bypass => "bypass",
            Path::VirtioNet => "virtio_net",
        }
    }
}

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Repetitions (each measures both paths).
    pub reps: u32,
    /// Round trips per RTT measurement.
    pub rtt_count: u32,
    /// Message size for RTT.
    pub rtt_size: u32,
    /// Seconds per bulk measurement.
    pub bulk_seconds: u32,
    /// Write size for bulk.
    pub bulk_write: u32,
    /// The server's `sbtool` address over the bypass.
    pub bypass_addr: String,
    /// The server's `sbtool` address over virtio-net.
    pub tcp_addr: String,
}

impl Plan {
    /// The address of `path`.
    pub fn addr(&self, path: Path) -> &str {
        match path {
            Path::Bypass => &self.bypass_addr,
            Path::VirtioNet => &self.tcp_addr,
        }
    }

    /// Which path an `sbtool` result's `addr` belongs to.
    pub fn path_of(&self, addr: &str) -> Option<Path> {
        [Path::Bypass, Path::VirtioNet]
            .into_iter()
            .find(|p| self.addr(*p) == addr)
    }

    /// The order of the paths in repetition `rep` (0-based).
    pub fn order(rep: u32) -> [Path; 2] {
        if rep % 2 == 0 {
            [Path::Bypass, Path::VirtioNet]
        } else {
            [Path::VirtioNet, Path::Bypass]
        }
    }

    /// The shell script for the client guest: wait for both servers, then every measurement.
    pub fn client_script(&self) -> String {
        let mut s = String::new();
        for addr in [&self.bypass_addr, &self.tcp_addr] {
            s.push_str(&wait_for_server(addr));
        }
        for rep in 0..self.reps {
            for path in Plan::order(rep) {
                s.push_str(&format!(
                    "sbtool rtt {} --size {} --count {}\n",
                    self.addr(path),
                    self.rtt_size,
                    self.rtt_count
                ));
            }
            for path in Plan::order(rep) {
                s.push_str(&format!(
                    "sbtool bulk {} --seconds {} --write-size {}\n",
                    self.addr(path),
                    self.bulk_seconds,
                    self.bulk_write
                ));
            }
        }
        s
    }

    /// How many `SBRESULT` lines the client prints when all goes well.
    pub fn expected_results(&self) -> usize {
        4 * self.reps as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            reps: 3,
            rtt_count: 2000,
            rtt_size: 64,
            bulk_seconds: 10,
            bulk_write: 65536,
            bypass_addr: "vsock:3:5000".into(),
            tcp_addr: "tcp:10.99.0.3:5001".into(),
        }
    }

    #[test]
    fn paths_alternate_and_every_measurement_is_planned() {
        let p = plan();
        let script = p.client_script();
        let rtt: Vec<&str> = script
            .lines()
            .filter(|l| l.starts_with("sbtool rtt"))
            .collect();
        assert_eq!(rtt.len(), 6);
        assert!(rtt[0].contains("vsock:3:5000") && rtt[1].contains("tcp:"));
        assert!(rtt[2].contains("tcp:") && rtt[3].contains("vsock:3:5000"));
        assert_eq!(
            script
                .lines()
                .filter(|l| l.starts_with("sbtool bulk"))
                .count(),
            6
        );
        assert_eq!(p.expected_results(), 12);
        assert_eq!(p.path_of("tcp:10.99.0.3:5001"), Some(Path::VirtioNet));
        assert_eq!(p.path_of("vsock:9:1"), None);
    }
}
