//! Following a guest's serial log while it grows: its complete lines in order, each handed out
//! once, with the moment this process first read it. Polled every millisecond, so a line's
//! time is when it reached the log file plus at most about a millisecond: the host-side clock
//! for events inside a guest (the guest's own clock is another one).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::qemu::QemuGuest;
use super::{interrupt, GuestError};

/// How often the log is read while waiting.
const POLL: Duration = Duration::from_millis(1);

/// A reader of one serial log from its start.
#[derive(Debug)]
pub struct SerialWatch {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    lines: VecDeque<(String, Instant)>,
}

impl SerialWatch {
    /// Follows `path` from its first byte.
    pub fn new(path: &Path) -> SerialWatch {
        SerialWatch {
            path: path.to_owned(),
            offset: 0,
            partial: Vec::new(),
            lines: VecDeque::new(),
        }
    }

    /// Reads what was appended since the last call and queues its complete lines.
    fn poll(&mut self) {
        let Ok(mut f) = File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut fresh = Vec::new();
        if f.read_to_end(&mut fresh).is_err() || fresh.is_empty() {
            return;
        }
        let now = Instant::now();
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            self.lines.push_back((text, now));
        }
    }

    /// The next line for which `wanted` holds among those written so far, passing over the
    /// lines before it; `None` (having passed over every line so far) when there is none yet.
    pub fn try_next_line(
        &mut self,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Option<(String, Instant)> {
        self.poll();
        while let Some((line, at)) = self.lines.pop_front() {
            if wanted(&line) {
                return Some((line, at));
            }
        }
        None
    }

    fn error(&self, guest: &QemuGuest, what: String) -> GuestError {
        GuestError::Guest {
            guest: guest.name().to_owned(),
            what,
            log: self.path.display().to_string(),
        }
    }

    /// The next line for which `wanted` holds, and when it was read; the lines before it are
    /// passed over. Fails when `guest` exits, after `timeout`, or on Ctrl-C.
    pub fn next_line(
        &mut self,
        guest: &mut QemuGuest,
        what: &str,
        timeout: Duration,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Result<(String, Instant), GuestError> {
        let end = Instant::now() + timeout;
        loop {
            self.poll();
            while let Some((line, at)) = self.lines.pop_front() {
                if wanted(&line) {
                    return Ok((line, at));
                }
            }
            if interrupt::interrupted() {
                return Err(self.error(guest, format!("interrupted while waiting for {what}")));
            }
            if !guest.is_running() {
                // One last read: the line may have been written just before QEMU exited.
                self.poll();
                while let Some((line, at)) = self.lines.pop_front() {
                    if wanted(&line) {
                        return Ok((line, at));
                    }
                }
                return Err(self.error(guest, format!("QEMU exited before {what}")));
            }
            if Instant::now() >= end {
                return Err(self.error(guest, format!("no {what} within {timeout:?}")));
            }
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lines_come_once_in_order_and_partial_lines_wait() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("serial.log");
        let mut f = File::create(&path).expect("create");
        let mut w = SerialWatch::new(&path);
        f.write_all(b"one\ntwo\nthr").expect("write");
        w.poll();
        let got: Vec<String> = w.lines.drain(..).map(|(l, _)| l).collect();
        assert_eq!(got, ["one", "two"]);
        f.write_all(b"ee\r\nfour").expect("write");
        w.poll();
        let got: Vec<String> = w.lines.drain(..).map(|(l, _)| l).collect();
        assert_eq!(
            got,
            ["three"],
            "a line split across reads comes whole, once"
        );
    }
}
