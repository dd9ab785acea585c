//! Blocking conveniences over [`VsockDriver`]: each one pumps the driver until its condition
//! holds or its timeout expires, and a timeout is an error ([`DriverError::Timeout`]), never a
//! hang.

use std::time::{Duration, Instant};

use sockbypass_wire::consts::SHUTDOWN_SEND;

use crate::error::DriverError;
use crate::stream::{StreamId, StreamState};
use crate::vsock_driver::{RawPacket, VsockDriver};

impl VsockDriver {
    /// Pumps until `check` returns `Some`, or fails with [`DriverError::Timeout`] naming `what`.
    /// `check` runs first, before any waiting.
    pub fn wait_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&mut Self) -> Result<Option<T>, DriverError>,
    ) -> Result<T, DriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check(self)? {
                return Ok(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DriverError::Timeout {
                    what: what.to_string(),
                    timeout,
                });
            }
            self.pump(deadline - now)?;
        }
    }

    /// Connects and waits for the answer: `Ok` once connected, [`DriverError::Refused`] on RST.
    pub fn connect_blocking(
        &mut self,
        dst_cid: u64,
        dst_port: u32,
        timeout: Duration,
    ) -> Result<StreamId, DriverError> {
        let id = self.connect(dst_cid, dst_port)?;
        let state = self.wait_state(id, |s| s != StreamState::Connecting, timeout)?;
        match state {
            StreamState::Reset => Err(DriverError::Refused {
                cid: dst_cid,
                port: dst_port,
            }),
            s if s.is_established() => Ok(id),
            state => Err(DriverError::BadState {
                id,
                state,
                op: "connect",
            }),
        }
    }

    /// Waits for a connection to the listening `port`.
    pub fn accept_blocking(
        &mut self,
        port: u32,
        timeout: Duration,
    ) -> Result<StreamId, DriverError> {
        self.wait_until(timeout, &format!("a connection on port {port}"), |d| {
            d.accept(port)
        })
    }

    /// Waits until the state of stream `id` satisfies `pred`; returns that state.
    pub fn wait_state(
        &mut self,
        id: StreamId,
        pred: impl Fn(StreamState) -> bool,
        timeout: Duration,
    ) -> Result<StreamState, DriverError> {
        self.wait_until(timeout, &format!("a state change of stream {id}"), |d| {
            let s = d.state(id)?;
            Ok(pred(s).then_some(s))
        })
    }

    /// Sends all of `data`, waiting for credit and TX room as needed. Returns once every byte is
    /// in the TX queue (see [`VsockDriver::flush_tx`] to wait for the device to take them).
    pub fn send_all(
        &mut self,
        id: StreamId,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(), DriverError> {
        let mut off = 0usize;
        let what = format!("credit to send {} bytes on stream {id}", data.len());
        self.wait_until(timeout, &what, |d| {
            off += d.send(id, &data[off..])?;
            Ok((off == data.len()).then_some(()))
        })
    }

    /// Receives exactly `n` bytes from stream `id`. Fails with [`DriverError::Eof`] if the
    /// stream ends first (RST, close, peer shut down sending).
    pub fn recv_exact(
        &mut self,
        id: StreamId,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, DriverError> {
        let mut out = Vec::with_capacity(n);
        let what = format!("{n} bytes on stream {id}");
        self.wait_until(timeout, &what, |d| {
            let want = n - out.len();
            d.recv_max(id, &mut out, want)?;
            if out.len() == n {
                return Ok(Some(()));
            }
            let info = d.stream_info(id)?;
            if info.rx_buffered == 0 && no_more_data(info.state, info.peer_shutdown) {
                return Err(DriverError::Eof {
                    id,
                    state: info.state,
                    got: out.len(),
                    wanted: n,
                });
            }
            Ok(None)
        })?;
        Ok(out)
    }

    /// Receives until the peer shuts down sending or the stream ends; returns everything.
    pub fn recv_to_end(&mut self, id: StreamId, timeout: Duration) -> Result<Vec<u8>, DriverError> {
        let mut out = Vec::new();
        let what = format!("the end of stream {id}");
        self.wait_until(timeout, &what, |d| {
            d.recv(id, &mut out)?;
            let info = d.stream_info(id)?;
            Ok(
                (info.rx_buffered == 0 && no_more_data(info.state, info.peer_shutdown))
                    .then_some(()),
            )
        })?;
        Ok(out)
    }

    /// Waits until the device has completed every TX chain and no control packet waits for room.
    pub fn flush_tx(&mut self, timeout: Duration) -> Result<(), DriverError> {
        self.wait_until(timeout, "the TX queue to drain", |d| {
            Ok((d.tx_in_flight() == 0 && d.backlog_len() == 0).then_some(()))
        })
    }

    /// Closes stream `id` (SHUTDOWN both) and waits for the peer's RST. On timeout sends RST
    /// itself, as Linux does after its close timeout, and fails.
    pub fn close_blocking(
        &mut self,
        id: StreamId,
        timeout: Duration,
    ) -> Result<StreamState, DriverError> {
        self.close(id)?;
        match self.wait_state(id, StreamState::is_terminal, timeout) {
            Err(DriverError::Timeout { what, timeout }) => {
                self.reset_stream(id)?;
                Err(DriverError::Timeout { what, timeout })
            }
            other => other,
        }
    }

    /// Waits until a recorded packet satisfies `pred` (recorded packets already there count);
    /// returns a copy of the first match.
    pub fn wait_for_packet(
        &mut self,
        pred: impl Fn(&RawPacket) -> bool,
        timeout: Duration,
    ) -> Result<RawPacket, DriverError> {
        self.wait_until(timeout, "a matching packet", |d| {
            Ok(d.received_raw().iter().find(|p| pred(p)).cloned())
        })
    }

    /// Waits until at least one event was received; returns and clears them.
    pub fn wait_for_events(&mut self, timeout: Duration) -> Result<Vec<u32>, DriverError> {
        self.wait_until(timeout, "an event-queue event", |d| {
            let ev = d.take_events();
            Ok((!ev.is_empty()).then_some(ev))
        })
    }
}

fn no_more_data(state: StreamState, peer_shutdown: u32) -> bool {
    state.is_terminal() || peer_shutdown & SHUTDOWN_SEND != 0
}
