//! Full-duplex stream jobs. A [`Job`] is one side of one stream: it writes its data in random
//! write sizes and reads the peer's data in random read sizes, never blocking, so [`run`] can
//! drive many streams of one guest driver from one thread, and two VMs sending to each other at
//! once never wait on each other (each keeps reading while it writes).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sockbypass_frontend::{StreamId, VsockDriver};

use crate::random_chunks;

/// Largest single write a job makes.
pub const MAX_WRITE: usize = 70_000;
/// Largest single read a job makes.
const MAX_READ: usize = 80_000;
/// How long [`run`] waits for the device when a round made no progress.
const IDLE_WAIT: Duration = Duration::from_millis(5);

/// One side of one stream: what it sends, and how much it expects back.
#[derive(Debug)]
pub struct Job {
    /// The stream.
    pub id: StreamId,
    out: Vec<u8>,
    sent: usize,
    writes: std::vec::IntoIter<usize>,
    write_left: usize,
    want: usize,
    /// What arrived so far.
    pub got: Vec<u8>,
    rng: StdRng,
}

impl Job {
    /// Sends `out` on stream `id` in random writes (up to [`MAX_WRITE`] bytes) and expects
    /// `want` bytes back; `seed` fixes the write and read sizes.
    pub fn new(id: StreamId, out: Vec<u8>, want: usize, seed: u64) -> Job {
        Job::with_max_write(id, out, want, seed, MAX_WRITE)
    }

    /// Like [`Job::new`] with writes of at most `max_write` bytes.
    pub fn with_max_write(
        id: StreamId,
        out: Vec<u8>,
        want: usize,
        seed: u64,
        max_write: usize,
    ) -> Job {
        let writes = random_chunks(out.len(), max_write, seed).into_iter();
        Job {
            id,
            out,
            sent: 0,
            writes,
            write_left: 0,
            want,
            got: Vec::with_capacity(want),
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
        }
    }

    /// Bytes handed to the driver so far.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Whether everything was sent and everything expected arrived.
    pub fn done(&self) -> bool {
        self.sent == self.out.len() && self.got.len() == self.want
    }

    /// Sends what credit and room allow of the current write, and reads one random-size read.
    /// Returns whether anything moved.
    pub fn step(&mut self, d: &mut VsockDriver) -> bool {
        let mut moved = false;
        if self.sent < self.out.len() {
            if self.write_left == 0 {
                self.write_left = self.writes.next().unwrap_or(self.out.len() - self.sent);
            }
            let chunk = &self.out[self.sent..self.sent + self.write_left];
            let n = d
                .send(self.id, chunk)
                .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.status()));
            self.sent += n;
            self.write_left -= n;
            moved |= n > 0;
        }
        if self.got.len() < self.want {
            let max = self
                .rng
                .gen_range(1..=MAX_READ)
                .min(self.want - self.got.len());
            let n = d
                .recv_max(self.id, &mut self.got, max)
                .unwrap_or_else(|e| panic!("{}: recv failed: {e}", self.status()));
            moved |= n > 0;
        }
        moved
    }

    /// Panics if the stream ended before the job was done.
    fn check_alive(&self, d: &VsockDriver, who: &str) {
        let info = d.stream_info(self.id).expect("stream info");
        assert!(
            !info.state.is_terminal() || info.rx_buffered > 0 || self.done(),
            "{who}: stream {} ended ({:?}) after sending {}/{} and receiving {}/{} bytes",
            self.id,
            info.state,
            self.sent,
            self.out.len(),
            self.got.len(),
            self.want
        );
    }

    fn status(&self) -> String {
        format!(
            "{}: sent {}/{}, got {}/{}",
            self.id,
            self.sent,
            self.out.len(),
            self.got.len(),
            self.want
        )
    }
}

/// Runs `jobs` (streams of driver `d`) round-robin until all are done; panics after `timeout`
/// with the progress of each. `who` names the VM in messages.
pub fn run(d: &mut VsockDriver, jobs: &mut [Job], timeout: Duration, who: &str) {
    let deadline = Instant::now() + timeout;
    run_until(d, jobs, who, |jobs| {
        assert!(
            Instant::now() < deadline,
            "{who}: timed out after {timeout:?}: {}",
            jobs.iter().map(Job::status).collect::<Vec<_>>().join("; ")
        );
        jobs.iter().all(Job::done)
    });
}

/// Steps `jobs` and pumps `d` until `stop` says so (it sees the jobs before every round). It
/// has no deadline of its own: `stop` brings it ([`run`] does).
fn run_until(
    d: &mut VsockDriver,
    jobs: &mut [Job],
    who: &str,
    mut stop: impl FnMut(&[Job]) -> bool,
) {
    while !stop(jobs) {
        let mut moved = false;
        for j in jobs.iter_mut() {
            moved |= j.step(d);
        }
        if moved {
            d.poll().expect("poll");
        } else {
            for j in jobs.iter() {
                j.check_alive(d, who);
            }
            d.pump(IDLE_WAIT).expect("pump");
        }
    }
}
