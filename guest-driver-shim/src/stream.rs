//! A fast-path connection: [`FastStream`], its two rings, blocking and non-blocking reads and
//! writes, the wake-up protocol of SPEC.md §13.3/§13.5, and [`Readiness`] for a later
//! `poll(2)`/`epoll` integration.
//!
//! A blocking read (write) that finds its ring empty (full) spins for the [`SpinBudget`],
//! then stores its sleeping flag, fences, looks at the ring again, and only then waits on the
//! control channel for a `WAKE`, `CLOSED` or `RESET` of its connection; woken, it clears its
//! flag before it looks at the ring. After a write that made bytes readable (or a read that
//! freed space) it fences and looks whether the other side sleeps — the consumer's (producer's)
//! flag of the ring in a direct pair, the window's `host_sleeping` in the host-copied
//! placement — and sends `KICK` if so (direct: only if the other side has not taken
//! everything already, and once per sleep; see `sockbypass_wire::fastpath::wake_gate`).

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use sockbypass_wire::fastpath::control::{ControlMsg, Op, Placement, Reason};
use sockbypass_wire::fastpath::layout::RING_SIZE;
use sockbypass_wire::fastpath::ring::RingError;
use sockbypass_wire::fastpath::wake_gate::{self, WakeGate};

use crate::control::Transport;
use crate::error::StreamError;
use crate::ring::{RingRx, RingTx};
use crate::session::{ConnFlags, Session};
use crate::window::Window;

/// Which ring a blocked call waits on.
#[derive(Debug, Clone, Copy)]
enum Direction {
    /// For data in the RX ring.
    Read,
    /// For space in the TX ring.
    Write,
}

/// How long a blocking read or write spins on its ring before it sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpinBudget {
    /// Looks at the ring before sleeping (0: sleep at once).
    pub iterations: u32,
}

impl SpinBudget {
    /// Sleep at once (the right choice when guests and the host share few cores, §13.5).
    pub const NONE: SpinBudget = SpinBudget { iterations: 0 };

    /// `iterations` looks at the ring.
    pub fn iterations(iterations: u32) -> SpinBudget {
        SpinBudget { iterations }
    }
}

impl Default for SpinBudget {
    /// 20,000 looks: tens of microseconds on a host CPU, a few hundred under TCG; long enough
    /// to cover the daemon's naps between copier passes (SPEC.md §13.5) before a reader or
    /// writer falls back to sleeping on a vsock message.
    fn default() -> SpinBudget {
        SpinBudget { iterations: 20_000 }
    }
}

/// What a stream could do now without blocking (for `poll`-like integration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    /// A read would not block (data, end of stream, or an error).
    pub readable: bool,
    /// A write would not block (space, or an error).
    pub writable: bool,
    /// The connection is over: reset, broken, closed by the other side, or closed here.
    pub hup: bool,
}

/// Where a stream's rings are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// The connection id (also the slot's `generation`).
    pub conn: u32,
    /// The slot in the window.
    pub slot: u32,
    /// Host-copied (own window) or direct (pair window).
    pub placement: Placement,
    /// The ring this side produces (0 or 1).
    pub tx_ring: u8,
    /// The ring this side consumes (0 or 1).
    pub rx_ring: u8,
    /// The other VM's CID.
    pub peer_cid: u64,
    /// This side's port.
    pub port: u32,
    /// The other side's port.
    pub peer_port: u32,
}

/// Why a stream is over (kept so that every later call says the same).
#[derive(Debug, Clone, Copy)]
enum Failure {
    Reset(Reason),
    BrokenRing(RingError),
    Epoch { was: u32, now: u32 },
}

impl Failure {
    fn error(self) -> StreamError {
        match self {
            Failure::Reset(r) => StreamError::Reset(r),
            Failure::BrokenRing(e) => StreamError::BrokenRing(e),
            Failure::Epoch { was, now } => StreamError::EpochChanged { was, now },
        }
    }
}

/// One fast-path connection. Reads and writes take `&mut self`: one thread at a time per
/// stream; different streams of one [`FastPath`](crate::FastPath) may be used from different
/// threads.
#[derive(Debug)]
pub struct FastStream<T: Transport> {
    session: Arc<Session<T>>,
    flags: Arc<ConnFlags>,
    window: Arc<Window>,
    epoch: u32,
    info: StreamInfo,
    tx: RingTx,
    rx: RingRx,
    nonblocking: bool,
    spin: SpinBudget,
    /// `KICK`s for the reader of the TX ring (direct pairs, §13.5).
    tx_gate: WakeGate,
    /// `KICK`s for the writer of the RX ring.
    rx_gate: WakeGate,
    read_shut: bool,
    write_shut: bool,
    closed: bool,
    failure: Option<Failure>,
}

impl<T: Transport> FastStream<T> {
    pub(crate) fn new(
        session: Arc<Session<T>>,
        window: Arc<Window>,
        info: StreamInfo,
        tx: RingTx,
        rx: RingRx,
        spin: SpinBudget,
    ) -> FastStream<T> {
        let flags = session.flags(info.conn);
        FastStream {
            session,
            flags,
            epoch: window.epoch(),
            window,
            info,
            tx,
            rx,
            nonblocking: false,
            spin,
            tx_gate: WakeGate::default(),
            rx_gate: WakeGate::default(),
            read_shut: false,
            write_shut: false,
            closed: false,
            failure: None,
        }
    }

    /// Where its rings are.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The connection id.
    pub fn conn(&self) -> u32 {
        self.info.conn
    }

    /// The window its rings are in.
    pub fn window(&self) -> &Arc<Window> {
        &self.window
    }

    /// Non-blocking: reads and writes that cannot proceed fail with
    /// [`StreamError::WouldBlock`].
    pub fn set_nonblocking(&mut self, on: bool) {
        self.nonblocking = on;
    }

    /// Whether it is non-blocking.
    pub fn is_nonblocking(&self) -> bool {
        self.nonblocking
    }

    /// The spin budget of blocking reads and writes.
    pub fn set_spin_budget(&mut self, spin: SpinBudget) {
        self.spin = spin;
    }

    /// The error that ends this stream now, if any (recorded, so it stays).
    fn check(&mut self) -> Result<(), StreamError> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        if let Some(f) = self.failure {
            return Err(f.error());
        }
        if let Some(r) = self.flags.reset_reason() {
            self.failure = Some(Failure::Reset(r));
            return Err(StreamError::Reset(r));
        }
        let now = self.window.current_epoch();
        if now != self.epoch {
            let f = Failure::Epoch {
                was: self.epoch,
                now,
            };
            self.failure = Some(f);
            return Err(f.error());
        }
        if self.session.is_failed() {
            // The daemon resets every connection of a control channel that fails.
            self.session.check()?;
        }
        Ok(())
    }

    /// A broken ring: the stream is over; a direct pair tells the daemon (`ABORT`, reason 8).
    fn broken(&mut self, e: RingError) -> StreamError {
        if self.failure.is_none() {
            self.failure = Some(Failure::BrokenRing(e));
            if self.info.placement == Placement::Direct {
                // Best effort: a failed channel resets the connection anyway.
                let _ = self.session.send(&ControlMsg {
                    conn: self.info.conn,
                    code: Reason::BrokenRing.raw(),
                    ..ControlMsg::new(Op::Abort)
                });
            }
        }
        StreamError::BrokenRing(e)
    }

    fn kick(&self) {
        // A failed channel shows at the next call; the bytes are in the ring already.
        let _ = self.session.send(&ControlMsg {
            conn: self.info.conn,
            ..ControlMsg::new(Op::Kick)
        });
    }

    /// After this side moved its index in `dir`'s ring (`head` or `closed` for a write, `tail`
    /// for a read): wake the other side if it sleeps on that ring. Direct: a `KICK` when its
    /// flag is set, once until it moves (§13.5); host-copied: a `KICK` when the daemon sleeps.
    fn after_move(&mut self, dir: Direction) {
        match self.info.placement {
            Placement::Direct => {
                // Only for something new (bytes or the end past its `tail`, space past its
                // `head`), once per sleep, the index read before the flag (§13.5). A broken
                // index shows at the next call; kick anyway if the other side sleeps.
                let kick = match dir {
                    Direction::Write => {
                        let tx = &self.tx;
                        self.tx_gate.should_wake(
                            || match tx.peer_tail() {
                                Ok(tail) => {
                                    wake_gate::for_consumer(tail, tx.head(), tx.is_closed())
                                }
                                Err(_) => Some(u64::MAX),
                            },
                            || tx.consumer_sleeping(),
                        )
                    }
                    Direction::Read => {
                        let rx = &self.rx;
                        self.rx_gate.should_wake(
                            || match rx.peer_head() {
                                Ok(head) => wake_gate::for_producer(head, rx.tail(), RING_SIZE),
                                Err(_) => Some(u64::MAX),
                            },
                            || rx.producer_sleeping(),
                        )
                    }
                };
                if kick {
                    self.kick();
                }
            }
            Placement::HostCopied => {
                fence(Ordering::SeqCst);
                if self.window.host_sleeping() {
                    self.kick();
                }
            }
        }
    }

    /// Blocks until the daemon says something about this connection.
    fn wait_event(&self) -> Result<(), StreamError> {
        let flags = &self.flags;
        self.session.wait_until(|_| {
            (flags.woken.swap(false, Ordering::AcqRel) || flags.reset_reason().is_some())
                .then_some(())
        })?;
        Ok(())
    }

    /// Reads into `buf`: the bytes read; 0 at end of stream (or after
    /// `shutdown(Read)`, or for an empty `buf`, which still checks the connection and the
    /// ring). Blocks until something is readable unless non-blocking.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, StreamError> {
        let mut spins = 0u32;
        loop {
            self.check()?;
            if self.read_shut {
                return Ok(0);
            }
            let n = match self.rx.read(buf) {
                Ok(n) => n,
                Err(e) => return Err(self.broken(e)),
            };
            if n > 0 {
                self.after_move(Direction::Read);
                return Ok(n);
            }
            if buf.is_empty() {
                return Ok(0);
            }
            match self.rx.at_end() {
                Ok(true) => return Ok(0),
                Ok(false) => {}
                Err(e) => return Err(self.broken(e)),
            }
            self.idle(&mut spins, Direction::Read)?;
        }
    }

    /// Writes at most the free space of `buf`: the bytes written (0 only for an empty `buf`,
    /// which still checks the connection and the ring). Blocks until there is space unless
    /// non-blocking. Fails after `shutdown(Write)` or the other side's `CLOSED`.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, StreamError> {
        let mut spins = 0u32;
        loop {
            self.check()?;
            if self.write_shut {
                return Err(StreamError::WriteShutdown);
            }
            if self.flags.peer_closed.load(Ordering::Acquire) {
                return Err(StreamError::PeerClosed);
            }
            let n = match self.tx.write(buf) {
                Ok(n) => n,
                Err(e) => return Err(self.broken(e)),
            };
            if n > 0 {
                self.after_move(Direction::Write);
                return Ok(n);
            }
            if buf.is_empty() {
                return Ok(0);
            }
            self.idle(&mut spins, Direction::Write)?;
        }
    }

    /// What a read or write that found nothing to do does next: `WouldBlock` when
    /// non-blocking; a spin while the budget lasts; then sleep (§13.3): set the ring's
    /// sleeping flag, look once more, wait for the daemon's message unless something came, and
    /// clear the flag before the caller looks at the ring again.
    fn idle(&mut self, spins: &mut u32, dir: Direction) -> Result<(), StreamError> {
        if self.nonblocking {
            self.session.pump()?;
            self.check()?;
            return Err(StreamError::WouldBlock);
        }
        if *spins < self.spin.iterations {
            *spins += 1;
            std::hint::spin_loop();
            return Ok(());
        }
        *spins = 0;
        let ready = match dir {
            Direction::Read => self.rx.set_sleeping(true),
            Direction::Write => self.tx.set_sleeping(true).map(|space| space > 0),
        };
        let clear = |st: &mut Self| {
            let _ = match dir {
                Direction::Read => st.rx.set_sleeping(false).map(|_| ()),
                Direction::Write => st.tx.set_sleeping(false).map(|_| ()),
            };
        };
        let ready = match ready {
            Ok(r) => r,
            Err(e) => {
                clear(self);
                return Err(self.broken(e));
            }
        };
        let waited = if ready { Ok(()) } else { self.wait_event() };
        clear(self);
        waited
    }

    /// Writes all of `buf` (blocking streams; a non-blocking one may fail with `WouldBlock`
    /// after writing part of it).
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), StreamError> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// What a read or write could do now, from the rings and the daemon's messages seen so
    /// far; never blocks, sends nothing.
    pub fn poll_ready(&self) -> Readiness {
        let over = Readiness {
            readable: true,
            writable: true,
            hup: true,
        };
        if self.closed
            || self.failure.is_some()
            || self.flags.reset_reason().is_some()
            || self.window.current_epoch() != self.epoch
            || self.session.is_failed()
        {
            return over;
        }
        let peer_closed = self.flags.peer_closed.load(Ordering::Acquire);
        let readable = match (self.rx.readable(), self.rx.at_end()) {
            (Ok(n), Ok(end)) => self.read_shut || n > 0 || end,
            _ => return over,
        };
        let writable = match self.tx.space() {
            Ok(n) => self.write_shut || peer_closed || n > 0,
            Err(_) => return over,
        };
        Readiness {
            readable,
            writable,
            hup: peer_closed,
        }
    }

    /// `Write`: sets `closed` on the TX ring (end of stream for the other side, which is
    /// woken if it sleeps); `Read`: later reads return 0; `Both`: both. The connection stays
    /// until [`FastStream::close`] (or drop) sends `CLOSE`.
    pub fn shutdown(&mut self, how: Shutdown) -> Result<(), StreamError> {
        self.check()?;
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            self.read_shut = true;
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) && !self.write_shut {
            self.write_shut = true;
            self.tx.close();
            self.after_move(Direction::Write);
        }
        Ok(())
    }

    /// Ends the connection: sets `closed` on the TX ring and sends `CLOSE` (neither after a
    /// `RESET`, an epoch change, or an `ABORT`: the slot is no longer this side's). Later
    /// calls fail with [`StreamError::Closed`]. Drop does the same, ignoring errors.
    pub fn close(&mut self) -> Result<(), StreamError> {
        if self.closed {
            return Ok(());
        }
        let alive = self.check().is_ok();
        let aborted = matches!(self.failure, Some(Failure::BrokenRing(_)))
            && self.info.placement == Placement::Direct;
        let still_ours = self.failure.is_none()
            || matches!(self.failure, Some(Failure::BrokenRing(_))) && !aborted;
        self.closed = true;
        let mut r = Ok(());
        if alive {
            self.tx.close();
            self.after_move(Direction::Write);
        }
        if still_ours && !self.session.is_failed() {
            r = self.session.send(&ControlMsg {
                conn: self.info.conn,
                ..ControlMsg::new(Op::Close)
            });
        }
        self.session.forget(self.info.conn);
        Ok(r?)
    }
}

impl<T: Transport> Drop for FastStream<T> {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl<T: Transport> io::Read for FastStream<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(FastStream::read(self, buf)?)
    }
}

impl<T: Transport> io::Write for FastStream<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(FastStream::write(self, buf)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
