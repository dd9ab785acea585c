//! The control channel shared by a [`FastPath`](crate::FastPath) and its streams: a mutex
//! around the [`ControlChannel`], the dispatch of daemon messages into per-connection state,
//! and blocking waits that several threads can do at once.
//!
//! Waiting: the first thread that has to wait becomes the *reader*: it drops the lock, blocks
//! in `poll(2)` on the control socket, then takes the lock, reads and dispatches whatever
//! arrived, and wakes every other waiter (condition variable). The others sleep on the
//! condition variable and look at their state after each dispatch; when the reader's own
//! event has come, it leaves and another waiter takes its place. The lock is never held while
//! blocking. Sending (`KICK`, `CLOSE`, ...) takes only a separate send lock (so that
//! messages do not interleave), never the state lock, so a send that blocks on a full socket
//! cannot stop the dispatch of what the daemon sends meanwhile.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use sockbypass_wire::fastpath::control::{ControlMsg, Op, Reason};

use crate::control::{poll_in, send_msg, ControlChannel, ControlChannelError, Transport};

/// What the daemon said about one connection, read by its stream without the lock.
#[derive(Debug, Default)]
pub(crate) struct ConnFlags {
    /// A `WAKE` (or `CLOSED`/`RESET`) came since the stream last looked.
    pub woken: AtomicBool,
    /// `CLOSED`: the other side is done with the connection.
    pub peer_closed: AtomicBool,
    /// `RESET`: its reason (0: not reset).
    pub reset: AtomicU8,
}

impl ConnFlags {
    pub fn reset_reason(&self) -> Option<Reason> {
        match self.reset.load(Ordering::Acquire) {
            0 => None,
            // A reason that decoded once; `Protocol` if it somehow does not.
            raw => Some(Reason::from_raw(raw).unwrap_or(Reason::Protocol)),
        }
    }
}

#[derive(Debug)]
pub(crate) struct State<T> {
    ch: ControlChannel<T>,
    reader_active: bool,
    conns: HashMap<u32, Arc<ConnFlags>>,
    answers: HashMap<u32, Option<ControlMsg>>,
    listening: HashSet<u32>,
    incoming: VecDeque<ControlMsg>,
    send_lock: Arc<Mutex<()>>,
}

impl<T: Transport> State<T> {
    fn dispatch(&mut self, m: ControlMsg) -> Result<(), ControlChannelError> {
        match m.op {
            Op::Connected | Op::Refused | Op::Listening => match self.answers.get_mut(&m.req) {
                Some(slot @ None) => {
                    if m.op == Op::Connected {
                        self.conns.entry(m.conn).or_default();
                    }
                    *slot = Some(m);
                }
                _ => {
                    return Err(self.ch.fail(ControlChannelError::unexpected(
                        &m,
                        "no CONNECT or LISTEN with this req is waiting",
                    )))
                }
            },
            Op::Incoming => {
                if self.listening.contains(&m.port) {
                    self.conns.entry(m.conn).or_default();
                    self.incoming.push_back(m);
                } else {
                    // Raced with UNLISTEN: refuse it.
                    let _g = self
                        .send_lock
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    self.ch.send(&ControlMsg {
                        conn: m.conn,
                        ..ControlMsg::new(Op::Reject)
                    })?;
                }
            }
            Op::Wake => {
                if let Some(f) = self.conns.get(&m.conn) {
                    f.woken.store(true, Ordering::Release);
                }
            }
            Op::Closed => {
                if let Some(f) = self.conns.get(&m.conn) {
                    f.peer_closed.store(true, Ordering::Release);
                    f.woken.store(true, Ordering::Release);
                }
            }
            Op::Reset => {
                if let Some(f) = self.conns.get(&m.conn) {
                    f.reset.store(m.code.max(1), Ordering::Release);
                    f.woken.store(true, Ordering::Release);
                }
            }
            _ => {
                return Err(self.ch.fail(ControlChannelError::unexpected(
                    &m,
                    "not expected after the handshake",
                )))
            }
        }
        Ok(())
    }

    /// Reads and dispatches every whole message there, without blocking.
    fn pump(&mut self) -> Result<(), ControlChannelError> {
        while let Some(m) = self.ch.try_recv()? {
            self.dispatch(m)?;
        }
        Ok(())
    }
}

/// The shared control channel.
#[derive(Debug)]
pub(crate) struct Session<T> {
    state: Mutex<State<T>>,
    cv: Condvar,
    failed: AtomicBool,
    fd: RawFd,
    send_lock: Arc<Mutex<()>>,
}

impl<T: Transport> Session<T> {
    pub fn new(ch: ControlChannel<T>) -> Session<T> {
        let fd = ch.as_raw_fd();
        let send_lock = Arc::new(Mutex::new(()));
        Session {
            state: Mutex::new(State {
                ch,
                reader_active: false,
                conns: HashMap::new(),
                answers: HashMap::new(),
                listening: HashSet::new(),
                incoming: VecDeque::new(),
                send_lock: Arc::clone(&send_lock),
            }),
            cv: Condvar::new(),
            failed: AtomicBool::new(false),
            fd,
            send_lock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The control socket.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Whether the control channel failed (every connection is gone with it).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn note<R>(
        &self,
        st: &State<T>,
        r: Result<R, ControlChannelError>,
    ) -> Result<R, ControlChannelError> {
        if st.ch.is_failed() {
            self.failed.store(true, Ordering::Release);
        }
        r
    }

    /// The channel's failure, if it failed.
    pub fn check(&self) -> Result<(), ControlChannelError> {
        self.lock().ch.check()
    }

    /// Sends one message (under the send lock only).
    pub fn send(&self, msg: &ControlMsg) -> Result<(), ControlChannelError> {
        if self.is_failed() {
            self.check()?;
        }
        let r = {
            let _g = self
                .send_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            send_msg(self.fd, msg)
        };
        match r {
            Ok(()) => Ok(()),
            Err(source) => {
                let mut st = self.lock();
                let e = st.ch.fail(ControlChannelError::Io {
                    what: "write",
                    source,
                });
                self.failed.store(true, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Sends `msg` with a fresh request number and waits for `CONNECTED` or `REFUSED` with it.
    pub fn connect(&self, msg: ControlMsg) -> Result<ControlMsg, ControlChannelError> {
        let req = {
            let mut st = self.lock();
            let req = st.ch.new_req();
            st.answers.insert(req, None);
            req
        };
        if let Err(e) = self.send(&ControlMsg { req, ..msg }) {
            self.lock().answers.remove(&req);
            return Err(e);
        }
        let r = self.wait_until(|st| match st.answers.get(&req) {
            Some(Some(_)) => st.answers.remove(&req).flatten(),
            _ => None,
        });
        if r.is_err() {
            self.lock().answers.remove(&req);
        }
        r
    }

    /// Starts or stops taking `INCOMING`s for `port` and tells the daemon. `LISTEN` waits
    /// for the daemon's `LISTENING`: `Some(reason)` when it refused the port.
    pub fn listen(&self, port: u32, on: bool) -> Result<Option<Reason>, ControlChannelError> {
        if !on {
            self.lock().listening.remove(&port);
            return self
                .send(&ControlMsg {
                    port,
                    ..ControlMsg::new(Op::Unlisten)
                })
                .map(|()| None);
        }
        self.lock().listening.insert(port);
        let answer = self.connect(ControlMsg {
            port,
            ..ControlMsg::new(Op::Listen)
        });
        let refused = match &answer {
            Ok(m) if m.op == Op::Listening => m.reason(),
            Ok(m) => {
                return Err(self.lock().ch.fail(ControlChannelError::unexpected(
                    m,
                    "a LISTEN is answered with LISTENING",
                )))
            }
            Err(_) => None,
        };
        if answer.is_err() || refused.is_some() {
            self.lock().listening.remove(&port);
        }
        answer.map(|_| refused)
    }

    /// The next `INCOMING`, blocking.
    pub fn next_incoming(&self) -> Result<ControlMsg, ControlChannelError> {
        self.wait_until(|st| st.incoming.pop_front())
    }

    /// The next `INCOMING` if one is there, without blocking.
    pub fn try_next_incoming(&self) -> Result<Option<ControlMsg>, ControlChannelError> {
        self.pump()?;
        Ok(self.lock().incoming.pop_front())
    }

    /// The flags of `conn` (made when its `CONNECTED`/`INCOMING` was dispatched).
    pub fn flags(&self, conn: u32) -> Arc<ConnFlags> {
        Arc::clone(self.lock().conns.entry(conn).or_default())
    }

    /// Forgets `conn` (its stream is closed).
    pub fn forget(&self, conn: u32) {
        self.lock().conns.remove(&conn);
    }

    /// Dispatches whatever arrived, without blocking (nothing if a reader is waiting: it
    /// dispatches as soon as bytes come).
    pub fn pump(&self) -> Result<(), ControlChannelError> {
        let mut st = self.lock();
        if st.reader_active {
            return Ok(());
        }
        let r = st.pump();
        let r = self.note(&st, r);
        drop(st);
        self.cv.notify_all();
        r
    }

    /// Waits until `ready` gives something, reading and dispatching daemon messages meanwhile.
    /// `ready` is asked first, so a state set before the channel failed is still seen.
    pub fn wait_until<R>(
        &self,
        mut ready: impl FnMut(&mut State<T>) -> Option<R>,
    ) -> Result<R, ControlChannelError> {
        let mut st = self.lock();
        loop {
            if let Some(r) = ready(&mut st) {
                return Ok(r);
            }
            // A failed channel gives its error here.
            let r = st.ch.check();
            self.note(&st, r)?;
            if st.reader_active {
                st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            st.reader_active = true;
            drop(st);
            let polled = poll_in(self.fd, None);
            st = self.lock();
            st.reader_active = false;
            let r = match polled {
                Ok(_) => st.pump(),
                Err(source) => Err(st.ch.fail(ControlChannelError::Io {
                    what: "poll",
                    source,
                })),
            };
            let r = self.note(&st, r);
            self.cv.notify_all();
            if let Err(e) = r {
                // What was dispatched before the failure still counts.
                return ready(&mut st).ok_or(e);
            }
        }
    }
}
