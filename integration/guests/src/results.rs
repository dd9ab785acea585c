//! What a guest reports on its serial console: `SBRESULT {json}` lines from `sbtool`, and the
//! `SB-READY` / `SB-EXIT <status>` markers of the image's `/init`.

use serde_json::Value;

/// Printed by `/init` once modules are loaded and the network is configured.
pub const READY: &str = "SB-READY";
/// Printed by `/init` after the command, followed by its exit status.
pub const EXIT: &str = "SB-EXIT ";
/// Prefix of every `sbtool` result line.
pub const RESULT: &str = "SBRESULT ";

/// Every `SBRESULT` object in `log`, in order. Lines that do not parse are skipped (a kernel
/// message can interleave with a line on the console).
pub fn results(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| l.find(RESULT).map(|i| &l[i + RESULT.len()..]))
        .filter_map(|json| serde_json::from_str(json.trim()).ok())
        .collect()
}

/// The results of `mode` (`"rtt"`, `"bulk"`...), in order.
pub fn results_of(log: &str, mode: &str) -> Vec<Value> {
    results(log)
        .into_iter()
        .filter(|v| v.get("mode").and_then(Value::as_str) == Some(mode))
        .collect()
}

/// The exit status `/init` reported, if the command finished.
pub fn exit_status(log: &str) -> Option<i32> {
    log.lines()
        .filter_map(|l| l.find(EXIT).map(|i| &l[i + EXIT.len()..]))
        .find_map(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_results_and_exit_among_kernel_noise() {
        let log = "[    1.0] virtio_net\nSB-READY\nSBRESULT {\"mode\":\"rtt\",\"p50_us\":12.5}\n\
                   [    2.0] noise SBRESULT {broken\nSBRESULT {\"mode\":\"bulk\",\"gbps\":1.0}\nSB-EXIT 0\n";
        assert_eq!(results(log).len(), 2);
        let rtt = results_of(log, "rtt");
        assert_eq!(rtt[0]["p50_us"].as_f64(), Some(12.5));
        assert_eq!(exit_status(log), Some(0));
        assert_eq!(exit_status("SB-READY\n"), None);
    }
}
