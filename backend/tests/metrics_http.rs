//! The real `sockbypassd` binary with `--metrics-listen`: real HTTP GETs of `/metrics` against
//! the running daemon (under its default seccomp filter, `kill`), the exposition text checked
//! line by line, the per-VM and per-poll-thread series of both VMs, 404 and 405, and the
//! configuration errors.
//!
//! The daemon listens on port 0 and the test learns the port from the daemon's own `info` line
//! (`serving metrics on http://ADDR/metrics`): picking a free port first and passing it would
//! race with anything else on the machine taking it in between.
//!
//! Counters moving with traffic are checked in `integration/device-tests/tests/metrics.rs`,
//! where a test frontend plays the guest.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

/// The daemon as a child process, killed by PID if the test ends early, with its stderr lines.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts the binary with VMs `web` (CID 3) and `db` (CID 4, fast path on) and `extra`,
    /// in which `{dir}` stands for the daemon's temporary directory.
    fn start(extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display();
        let extra: Vec<String> = extra
            .iter()
            .map(|a| a.replace("{dir}", &d.to_string()))
            .collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sockbypassd"))
            .args(["--vm", &format!("name=web,cid=3,socket={d}/web.sock")])
            .args([
                "--vm",
                &format!("name=db,cid=4,socket={d}/db.sock,fastpath=on"),
            ])
            .args(["--log-level", "info"])
            .args(&extra)
            .env_remove("RUST_LOG")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sockbypassd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("daemon: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon { child, lines, dir }
    }

    /// Waits for a stderr line containing `needle`.
    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(e) => panic!("no line with {needle:?}: {e}"),
            }
        }
    }

    /// The metrics address the daemon logged.
    fn metrics_addr(&self) -> SocketAddr {
        let line = self.wait_line("serving metrics on http://");
        let rest = line
            .split("http://")
            .nth(1)
            .expect("an address after http://");
        rest.split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// Stops it with SIGTERM and checks that it exits cleanly.
    fn stop(mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: sending SIGTERM to our own child, whose PID we hold and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "the daemon is still running");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "exit status after SIGTERM: {status}");
    }
}

/// One HTTP exchange: `method path`, then the whole answer until the server closes.
/// Returns the status code, the headers (lower-case names) and the body.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, BTreeMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics port");
    s.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: metrics_http-test\r\n\r\n"
    )
    .expect("send the request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").expect("a header line");
            (k.to_ascii_lowercase(), v.to_owned())
        })
        .collect();
    (status, headers, body.to_owned())
}

/// One sample line: its metric name, labels and value.
#[derive(Debug)]
struct SampleLine {
    name: String,
    labels: BTreeMap<String, String>,
    value: u64,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `k="v",k2="v2"` into a map; panics on anything else (no escapes are expected: VM names are
/// `[A-Za-z0-9_.-]`).
fn parse_labels(text: &str, line: &str) -> BTreeMap<String, String> {
    text.split(',')
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("label without `=` in {line:?}"));
            assert!(
                is_metric_name(k) && !k.contains(':'),
                "label name {k:?} in {line:?}"
            );
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_else(|| panic!("unquoted label value in {line:?}"));
            assert!(!v.contains(['"', '\\']), "escaped label value in {line:?}");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Checks every line of an OpenMetrics text exposition: `# HELP`, `# TYPE` (counter or gauge)
/// before the samples of its family, the families' samples together, counters' samples named
/// `_total`, integer values, `# EOF` last. Returns the samples.
fn parse_exposition(body: &str) -> Vec<SampleLine> {
    let lines: Vec<&str> = body.split('\n').collect();
    assert_eq!(lines.last(), Some(&""), "the body ends with a newline");
    assert_eq!(lines[lines.len() - 2], "# EOF", "the body ends with # EOF");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = BTreeSet::new();
    let mut current: Option<(String, String)> = None;
    let mut samples = Vec::new();
    for line in &lines[..lines.len() - 2] {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("# HELP name text");
            assert!(is_metric_name(name), "{line:?}");
            assert!(!help.is_empty(), "empty help: {line:?}");
            assert!(helped.insert(name.to_owned()), "second # HELP: {line:?}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            assert!(helped.contains(name), "# TYPE before # HELP: {line:?}");
            assert!(matches!(kind, "counter" | "gauge"), "{line:?}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "family {name} declared twice"
            );
            current = Some((name.to_owned(), kind.to_owned()));
        } else {
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let (series, value) = line.rsplit_once(' ').expect("a sample: series value");
            let value: u64 = value
                .parse()
                .unwrap_or_else(|_| panic!("non-integer value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (
                    name,
                    parse_labels(labels.strip_suffix('}').expect("closing }"), line),
                ),
                None => (series, BTreeMap::new()),
            };
            let (family, kind) = current.as_ref().expect("a sample before any # TYPE");
            let expected = if kind == "counter" {
                format!("{family}_total")
            } else {
                family.clone()
            };
            assert_eq!(name, expected, "sample outside its family: {line:?}");
            samples.push(SampleLine {
                name: name.to_owned(),
                labels,
                value,
            });
        }
    }
    samples
}

/// The value of the sample `name` whose labels are exactly `labels`.
fn value(samples: &[SampleLine], name: &str, labels: &[(&str, &str)]) -> u64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
        .value
}

/// `Seccomp:` of every thread of process `pid` (0 none, 2 filter), by thread name.
fn thread_seccomp(pid: u32) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("status")).ok()?;
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim().to_owned())
            };
            Some((field("Name:")?, field("Seccomp:")?.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_are_served_over_http_for_every_vm_under_the_seccomp_filter() {
    let daemon = Daemon::start(&["--metrics-listen", "127.0.0.1:0", "--poll-mode", "adaptive"]);
    let addr = daemon.metrics_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    let (status, headers, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert_eq!(headers.get("content-length"), Some(&body.len().to_string()));
    let samples = parse_exposition(&body);

    for (vm, cid) in [("web", "3"), ("db", "4")] {
        let labels = [("vm", vm), ("cid", cid)];
        for name in [
            "sockbypass_vm_tx_packets_total",
            "sockbypass_vm_tx_bytes_total",
            "sockbypass_vm_rx_packets_total",
            "sockbypass_vm_rx_bytes_total",
            "sockbypass_vm_fwd_packets_total",
            "sockbypass_vm_fwd_bytes_total",
            "sockbypass_vm_rst_sent_total",
            "sockbypass_vm_host_conns_opened_total",
            "sockbypass_vm_peer_conns",
            "sockbypass_vm_host_conns",
        ] {
            // Nothing has attached: every counter and gauge is still at zero.
            assert_eq!(value(&samples, name, &labels), 0, "{name} of {vm}");
        }
        assert_eq!(value(&samples, "sockbypass_vm_attached", &labels), 0);
        for reason in ["spoofed_src", "policy", "no_connection", "conn_limit"] {
            let with_reason = [labels[0], labels[1], ("reason", reason)];
            assert_eq!(
                value(&samples, "sockbypass_vm_drops_total", &with_reason),
                0
            );
        }
    }
    // The fast-path series exist for `db` only.
    value(
        &samples,
        "sockbypass_vm_fastpath_conns_total",
        &[("vm", "db"), ("cid", "4")],
    );
    assert!(!samples
        .iter()
        .any(|s| s.name.starts_with("sockbypass_vm_fastpath_")
            && s.labels.get("vm").map(String::as_str) == Some("web")));
    // One poll thread (the default), which has looped at least once by now.
    for name in [
        "sockbypass_poll_loops_total",
        "sockbypass_poll_useful_loops_total",
        "sockbypass_poll_packets_total",
        "sockbypass_poll_sleeps_total",
        "sockbypass_poll_wakeups_total",
    ] {
        value(&samples, name, &[("thread", "0")]);
    }
    // The poll thread's loops are read at each scrape: they appear once it has run.
    let deadline = Instant::now() + DEADLINE;
    while value(
        &parse_exposition(&http(addr, "GET", "/metrics").2),
        "sockbypass_poll_loops_total",
        &[("thread", "0")],
    ) == 0
    {
        assert!(Instant::now() < deadline, "the poll thread never looped");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!samples
        .iter()
        .any(|s| s.labels.get("thread").map(String::as_str) == Some("1")));

    let (status, _, _) = http(addr, "GET", "/other");
    assert_eq!(status, 404);
    let (status, headers, _) = http(addr, "POST", "/metrics");
    assert_eq!(status, 405);
    assert_eq!(headers.get("allow").map(String::as_str), Some("GET"));

    // The metrics thread runs under the filter like every thread (the control thread,
    // `sb-control`, under its own variant: see backend/tests/seccomp.rs), and the daemon
    // survived the scrapes (under `kill`, a call outside the allowlist would have ended it).
    // The other threads confine themselves first thing, and the main thread once the daemon
    // has started: on a loaded machine that may come a little after the scrapes.
    let threads = thread_seccomp(daemon.child.id());
    assert!(
        threads
            .iter()
            .any(|(n, mode)| n == "sb-metrics" && *mode == 2),
        "{threads:?}"
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let threads = thread_seccomp(daemon.child.id());
        if threads.iter().all(|(_, mode)| *mode == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "not all confined: {threads:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, _, second) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200);
    parse_exposition(&second);
    daemon.stop();
}

#[test]
fn without_the_flag_nothing_listens() {
    let daemon = Daemon::start(&[]);
    daemon.wait_line("serving vm=db");
    let threads = thread_seccomp(daemon.child.id());
    assert!(
        !threads.iter().any(|(n, _)| n == "sb-metrics"),
        "{threads:?}"
    );
    daemon.stop();
}

/// Runs the binary until it exits (it must, within [`DEADLINE`]); returns status and stderr.
fn run_to_exit(extra: &[&str]) -> (Option<i32>, String) {
    let mut daemon = Daemon::start(extra);
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = daemon.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "still running with {extra:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    // The reader thread ends with the stream.
    let mut stderr = String::new();
    while let Ok(line) = daemon.lines.recv_timeout(Duration::from_secs(5)) {
        stderr.push_str(&line);
        stderr.push('\n');
    }
    (status.code(), stderr)
}

#[test]
fn a_bad_address_is_one_line_naming_the_flag_and_status_2() {
    let (code, stderr) = run_to_exit(&["--metrics-listen", "nonsense"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "sockbypassd: --metrics-listen: `nonsense` is not an IP address and port such as \
         127.0.0.1:9464 or [::1]:9464\n"
    );
}

#[test]
fn an_address_in_use_stops_the_daemon_at_start_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, stderr) = run_to_exit(&["--metrics-listen", &addr]);
    assert_eq!(code, Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "sockbypassd: cannot listen for metrics on {addr}: "
        )),
        "{stderr}"
    );
}

/// The Python used by Debian's `python3-prometheus-client` (installed by `ci/install-deps.sh`):
/// the system one, not whatever `python3` comes first on `PATH`.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Reads an OpenMetrics exposition on stdin with the reference client's strict parser and
/// prints each sample as `name<TAB>labels as k=v,...<TAB>value`.
const REFERENCE_PARSER: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{family.type}\t{s.name}\t{labels}\t{int(s.value)}")
"#;

/// Whether the reference parser can run here; with `CI=true` its absence fails the test.
fn reference_parser_available() -> bool {
    let ok = Command::new(SYSTEM_PYTHON)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let reason = "the python3-prometheus-client package is not installed (ci/install-deps.sh)";
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true: this test could not run, which is a failure in CI: {reason}"
        );
        eprintln!("SKIPPED (CI would fail): {reason}");
    }
    ok
}

#[test]
fn the_reference_openmetrics_parser_reads_every_sample() {
    if !reference_parser_available() {
        return;
    }
    let daemon = Daemon::start(&["--metrics-listen", "127.0.0.1:0"]);
    let (status, _, body) = http(daemon.metrics_addr(), "GET", "/metrics");
    assert_eq!(status, 200);
    let ours = parse_exposition(&body);

    let mut python = Command::new(SYSTEM_PYTHON)
        .args(["-c", REFERENCE_PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the reference parser");
    python
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed the exposition");
    let out = python.wait_with_output().expect("the parser's output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the reference parser refused it: {stderr}\n{body}"
    );
    let theirs: Vec<(String, String, String, u64)> = String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "{l:?}");
            (
                f[0].to_owned(),
                f[1].to_owned(),
                f[2].to_owned(),
                f[3].parse().expect("value"),
            )
        })
        .collect();
    // Sample by sample, the same names, labels and values as this test's own reading.
    assert_eq!(theirs.len(), ours.len());
    for (sample, (kind, name, labels, value)) in ours.iter().zip(&theirs) {
        let ours_labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            (&sample.name, &ours_labels.join(","), &sample.value),
            (name, labels, value)
        );
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} is a {kind}"
        );
    }
    assert!(theirs
        .iter()
        .any(|(_, n, l, _)| n == "sockbypass_vm_drops_total" && l == "cid=4,reason=policy,vm=db"));
    daemon.stop();
}

/// The samples of VM `vm` in `samples`, as `name{other labels}` → value.
fn samples_of_vm(samples: &[SampleLine], vm: &str) -> BTreeMap<String, u64> {
    samples
        .iter()
        .filter(|s| s.labels.get("vm").map(String::as_str) == Some(vm))
        .map(|s| {
            let reason = s.labels.get("reason").map_or("", String::as_str);
            (format!("{}{reason}", s.name), s.value)
        })
        .collect()
}

#[test]
fn vms_added_and_removed_at_run_time_appear_and_disappear_and_agree_with_stats() {
    use sockbypass_ctl::protocol::{Answer, Request};
    use sockbypass_ctl::Client;

    let daemon = Daemon::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--control",
        "{dir}/control.sock",
    ]);
    let addr = daemon.metrics_addr();
    let control = daemon.dir.path().join("control.sock");
    let call = |request: Request| {
        Client::connect(&control)
            .expect("connect to the control socket")
            .call(&request)
            .expect("the control socket answers")
    };
    let spec = format!(
        "name=extra,cid=9,socket={}/extra.sock",
        daemon.dir.path().display()
    );
    assert!(matches!(call(Request::VmAdd { spec }), Answer::Added(_)));
    let samples = parse_exposition(&http(addr, "GET", "/metrics").2);
    assert_eq!(
        value(
            &samples,
            "sockbypass_vm_tx_packets_total",
            &[("vm", "extra"), ("cid", "9")]
        ),
        0
    );
    assert!(!samples_of_vm(&samples, "web").is_empty());

    assert!(matches!(
        call(Request::VmRemove { name: "web".into() }),
        Answer::Removed(name) if name == "web"
    ));
    let samples = parse_exposition(&http(addr, "GET", "/metrics").2);
    assert!(samples_of_vm(&samples, "web").is_empty(), "web is gone");
    for vm in ["db", "extra"] {
        assert!(!samples_of_vm(&samples, vm).is_empty(), "{vm} is served");
    }

    // What /metrics says of each VM is what `sockbypass stats` says (nothing moves here).
    let Answer::Stats(stats) = call(Request::Stats {}) else {
        panic!("stats answered something else");
    };
    let names: Vec<&str> = stats.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["db", "extra"]);
    for vm in &stats.vms {
        let exported = samples_of_vm(&samples, &vm.name);
        for (name, value) in &vm.counters {
            let key = match name.strip_prefix("drop_") {
                Some(reason) => format!("sockbypass_vm_drops_total{reason}"),
                None => format!("sockbypass_vm_{name}_total"),
            };
            assert_eq!(exported.get(&key), Some(value), "{} {key}", vm.name);
        }
        for (name, value) in &vm.gauges {
            let key = format!("sockbypass_vm_{name}");
            assert_eq!(exported.get(&key), Some(value), "{} {key}", vm.name);
        }
    }
    daemon.stop();
}

#[test]
fn the_config_file_key_is_served_and_a_reload_that_changes_it_asks_for_a_restart() {
    use sockbypass_ctl::protocol::{Answer, Request};
    use sockbypass_ctl::Client;

    let file = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(file.path(), "metrics_listen = \"127.0.0.1:0\"\n").expect("write");
    let config = file.path().display().to_string();
    let daemon = Daemon::start(&["--config", &config, "--control", "{dir}/control.sock"]);
    let addr = daemon.metrics_addr();
    assert_eq!(http(addr, "GET", "/metrics").0, 200);

    std::fs::write(file.path(), "metrics_listen = \"127.0.0.1:1\"\n").expect("rewrite");
    let control = daemon.dir.path().join("control.sock");
    let answer = Client::connect(&control)
        .expect("connect to the control socket")
        .call(&Request::Reload {})
        .expect("reload");
    let Answer::Reloaded(report) = answer else {
        panic!("reload answered {answer:?}");
    };
    assert_eq!(report.needs_restart, ["metrics_listen"]);
    // Still served where it was.
    assert_eq!(http(addr, "GET", "/metrics").0, 200);
    daemon.stop();
}
