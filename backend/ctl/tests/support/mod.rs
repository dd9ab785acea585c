//! For the tests of the `sockbypass` binary: a stand-in daemon on a control socket in a
//! temporary directory, answering each request with what the test's function returns and
//! recording the requests; and a runner of the binary with a deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sockbypass_ctl::protocol::{Origin, Reply, Request, VmInfo, WindowInfo};

/// How long one run of the binary may take.
const RUN_WITHIN: Duration = Duration::from_secs(30);

/// A control socket answered by a function of the request.
pub struct FakeDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeDaemon {
    pub fn start(answer: impl Fn(&Request) -> Reply + Send + 'static) -> FakeDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("control.sock");
        let listener = UnixListener::bind(&socket).expect("bind the control socket");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopping) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let mut writer = conn.try_clone().expect("clone the connection");
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { break };
                    let request: Request = serde_json::from_str(&line).expect("a valid request");
                    let reply = answer(&request);
                    seen.lock().expect("lock").push(request);
                    let mut text = serde_json::to_string(&reply).expect("reply as JSON");
                    text.push('\n');
                    if writer.write_all(text.as_bytes()).is_err() {
                        break;
                    }
                }
            }
        });
        FakeDaemon {
            dir,
            socket,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }

    /// Runs `sockbypass --control SOCKET args...`.
    pub fn run(&self, args: &[&str]) -> Output {
        let control = self.socket.to_str().expect("UTF-8 path");
        let mut all = vec!["--control", control];
        all.extend_from_slice(args);
        run(&all)
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the binary with `args` (SOCKBYPASS_CONTROL removed) until it exits; kills it and
/// fails after [`RUN_WITHIN`].
pub fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sockbypass"))
        .args(args)
        .env_remove("SOCKBYPASS_CONTROL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sockbypass");
    let deadline = Instant::now() + RUN_WITHIN;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sockbypass {args:?}: still running after {RUN_WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("output")
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("UTF-8 stdout")
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("UTF-8 stderr")
}

/// Checks exit status `code`, nothing on stdout and exactly one line on stderr starting with
/// `sockbypass: `; returns that line.
pub fn one_error_line(out: &Output, code: i32) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err:?}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", stdout(out));
    let line = err
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("stderr does not end in a newline: {err:?}"));
    assert!(!line.contains('\n'), "stderr is not one line: {err:?}");
    assert!(line.starts_with("sockbypass: "), "stderr: {err:?}");
    line.to_owned()
}

/// A VM as a daemon would describe it.
pub fn vm_info(name: &str, cid: u64, socket: &str, windows: &[(&str, u64)]) -> VmInfo {
    VmInfo {
        name: name.into(),
        cid,
        socket: socket.into(),
        uds: None,
        groups: vec!["prod".into()],
        ports: None,
        ips: Vec::new(),
        windows: windows
            .iter()
            .map(|(path, size)| WindowInfo {
                path: (*path).into(),
                size: *size,
                pair_with: None,
            })
            .collect(),
        attached: false,
        origin: Origin::Control,
    }
}
