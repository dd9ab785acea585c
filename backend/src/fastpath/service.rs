//! The fast-path service's state (SPEC.md §13.6–§13.8): the VMs with their policy, limits and
//! windows, the free slots, the control connections, who listens where, and the connections.
//! One thread owns it ([`super::thread`]); nothing here takes a lock.
//!
//! What a guest can make it hold, and what bounds it:
//! - control connections: [`MAX_CONTROLS_PER_VM`] per VM (past it, a new one is closed);
//! - listening ports: [`MAX_LISTENS`] per control connection (past it, a protocol error);
//! - connections: the VM's `max_conns` and `max_conns_per_peer` (§11), and the slots;
//! - offered connections: [`MAX_WAITING`] `CONNECT`s per control connection and `INCOMING`s
//!   per listening port;
//! - answers waiting to be written: `control_stream::MAX_QUEUED` per control connection, and
//!   `WAKE`s at most one per connection among them (a peer's `KICK`s cannot fill it).

use std::collections::HashMap;
use std::sync::Arc;

use sockbypass_wire::fastpath::control::{ControlMsg, Op, Reason};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn::Conn;
use super::control_stream::{ControlStream, StreamEnd};
use super::intake::NewControl;
use super::slots::SlotPool;
use super::window::Window;
use crate::config::DaemonConfig;
use crate::logging::RateLimiter;
use crate::metrics::FastPathCounters;
use crate::switch::policy::VmPolicy;
use crate::warn_limited;

/// Control connections one VM may have at once.
pub const MAX_CONTROLS_PER_VM: usize = 64;
/// Ports one control connection may listen on.
pub const MAX_LISTENS: usize = 64;
/// `CONNECT`s waiting per control connection, and `INCOMING`s waiting per listening port.
pub const MAX_WAITING: usize = 64;
/// The epoll token of the intake eventfd.
pub const INTAKE_TOKEN: u64 = 0;
/// The epoll token of the stop eventfd.
pub const STOP_TOKEN: u64 = 1;
const FIRST_CONTROL_TOKEN: u64 = 2;

/// One VM as the fast path sees it.
#[derive(Debug)]
pub struct VmState {
    /// Its name.
    pub name: String,
    /// Its CID.
    pub cid: u64,
    pub(super) policy: VmPolicy,
    pub(super) max_conns: usize,
    pub(super) per_peer: usize,
    /// Its own window (index into the windows), if it has `fastpath=on`.
    pub window: Option<usize>,
    /// Its counters.
    pub counters: Arc<FastPathCounters>,
    /// Fast-path connections it takes part in.
    pub(super) conns: usize,
    /// Its control connections.
    pub(super) controls: usize,
}

/// One control connection.
#[derive(Debug)]
pub struct Control {
    /// The VM it belongs to.
    pub vm: usize,
    pub(super) stream: ControlStream,
    pub(super) hello: bool,
    pub(super) listens: Vec<u32>,
    /// Its `CONNECT`s waiting for the listener's answer.
    pub(super) waiting: usize,
}

/// Why the daemon closes a control connection (SPEC.md §13.7).
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Anything before `HELLO`, or a second `HELLO`.
    #[error("{0:?} out of turn")]
    OutOfTurn(Op),
    /// A daemon's message sent by a guest.
    #[error("{0:?} is the daemon's")]
    DaemonOp(Op),
    /// A connection id that belongs to someone else.
    #[error("connection {0} is not this control connection's")]
    NotYours(u32),
}

/// The fast-path service.
#[derive(Debug)]
pub struct Service {
    pub(super) vms: Vec<VmState>,
    pub(super) by_cid: HashMap<u64, usize>,
    pub(super) windows: Arc<[Window]>,
    pub(super) pools: Vec<SlotPool>,
    /// The pair window of two VMs, keyed by (lower index, higher index).
    pub(super) pairs: HashMap<(usize, usize), usize>,
    pub(super) controls: HashMap<u64, Control>,
    /// Who listens on (VM, port).
    pub(super) listeners: HashMap<(usize, u32), u64>,
    /// `INCOMING`s waiting on (VM, port).
    pub(super) offered: HashMap<(usize, u32), usize>,
    /// Live connections by (initiator, listener), for `max_conns_per_peer`.
    pub(super) opened_by: HashMap<(usize, usize), usize>,
    pub(super) conns: HashMap<u32, Conn>,
    /// The host-copied connections the copier serves.
    pub(super) copied: Vec<u32>,
    next_conn: u32,
    next_token: u64,
    epoll: Epoll,
    /// Control connections to close once the current step is done.
    doomed: Vec<(u64, Option<String>)>,
    pub(super) warn: RateLimiter,
}

/// The key of the pair window of VMs `a` and `b`.
pub(super) fn pair_key(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Service {
    /// The service for `config`'s VMs, over `windows` (the VMs' own windows in configuration
    /// order, then the pairs', as the daemon made them).
    pub fn new(config: &DaemonConfig, windows: Arc<[Window]>, epoll: Epoll) -> Service {
        let mut own = 0;
        let vms: Vec<VmState> = config
            .vms
            .iter()
            .map(|vm| {
                let window = vm.fastpath_size.map(|_| {
                    own += 1;
                    own - 1
                });
                VmState {
                    name: vm.name.clone(),
                    cid: vm.cid,
                    policy: VmPolicy::new(vm),
                    max_conns: vm.max_conns as usize,
                    per_peer: vm.peer_conn_limit() as usize,
                    window,
                    counters: Arc::new(FastPathCounters::default()),
                    conns: 0,
                    controls: 0,
                }
            })
            .collect();
        let index = |name: &str| config.vms.iter().position(|vm| vm.name == name);
        let mut pairs = HashMap::new();
        for (i, pair) in config.pairs.iter().enumerate() {
            if let (Some(a), Some(b)) = (index(&pair.vms[0]), index(&pair.vms[1])) {
                pairs.insert(pair_key(a, b), own + i);
            }
        }
        let pools = windows
            .iter()
            .map(|w| SlotPool::new(w.header().geometry.slots()))
            .collect();
        Service {
            by_cid: vms.iter().enumerate().map(|(i, vm)| (vm.cid, i)).collect(),
            vms,
            windows,
            pools,
            pairs,
            controls: HashMap::new(),
            listeners: HashMap::new(),
            offered: HashMap::new(),
            opened_by: HashMap::new(),
            conns: HashMap::new(),
            copied: Vec::new(),
            next_conn: 1,
            next_token: FIRST_CONTROL_TOKEN,
            epoll,
            doomed: Vec::new(),
            warn: RateLimiter::per_packet(),
        }
    }

    /// The epoll instance the service's thread sleeps on.
    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    /// Each VM's counters, in configuration order.
    pub fn counters(&self) -> Vec<Arc<FastPathCounters>> {
        self.vms.iter().map(|vm| vm.counters.clone()).collect()
    }

    /// Stores `host_sleeping` in every VM's own window (§13.5).
    pub fn set_host_sleeping(&self, sleeping: bool) {
        for w in self.vms.iter().filter_map(|vm| vm.window) {
            if let Some(w) = self.windows.get(w) {
                w.set_host_sleeping(sleeping);
            }
        }
    }

    /// Takes a new control connection, or closes it when its VM has too many.
    pub fn add_control(&mut self, new: NewControl) {
        let Some(vm) = self.vms.get_mut(new.vm) else {
            return;
        };
        // A VM without a window has no sink (the switch gives it none), so this is a bug guard.
        if vm.window.is_none() {
            return;
        }
        if vm.controls >= MAX_CONTROLS_PER_VM {
            warn_limited!(self.warn, vm = %vm.name, "too many fast-path control connections; closing one");
            return;
        }
        let stream = match ControlStream::new(new.stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take a fast-path control connection");
                return;
            }
        };
        let token = self.next_token;
        let event = EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, token);
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            std::os::fd::AsRawFd::as_raw_fd(stream.socket()),
            event,
        ) {
            tracing::warn!(error = %e, "cannot watch a fast-path control connection");
            return;
        }
        self.next_token += 1;
        vm.controls += 1;
        vm.counters
            .fastpath_control_conns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.controls.insert(
            token,
            Control {
                vm: new.vm,
                stream,
                hello: false,
                listens: Vec::new(),
                waiting: 0,
            },
        );
    }

    /// Reads what control connection `token` sent and acts on it.
    pub fn on_readable(&mut self, token: u64) {
        let mut msgs = Vec::new();
        let read = match self.controls.get_mut(&token) {
            Some(c) => c.stream.read_messages(&mut msgs),
            None => return,
        };
        for msg in msgs {
            if let Err(e) = self.on_message(token, &msg) {
                self.doom(token, Some(e.to_string()));
                return;
            }
        }
        match read {
            Ok(()) => {}
            Err(StreamEnd::Closed) => self.doom(token, None),
            Err(e) => self.doom(token, Some(e.to_string())),
        }
    }

    /// Sends `msg` on control connection `token`; a connection that cannot take it is doomed.
    pub(super) fn send(&mut self, token: u64, msg: &ControlMsg) {
        let Some(c) = self.controls.get_mut(&token) else {
            return;
        };
        if let Err(e) = c.stream.send(msg) {
            let why = (!matches!(e, StreamEnd::Closed)).then(|| e.to_string());
            self.doom(token, why);
        }
    }

    /// Whether `msg` still waits unsent on control connection `token` (coalesced `WAKE`s).
    pub(super) fn is_waiting(&self, token: u64, msg: &ControlMsg) -> bool {
        self.controls
            .get(&token)
            .is_some_and(|c| c.stream.is_waiting(msg))
    }

    /// Writes every control connection's queued answers.
    pub fn flush_all(&mut self) {
        let mut failed = Vec::new();
        for (token, c) in &mut self.controls {
            if c.stream.has_queued() {
                if let Err(e) = c.stream.flush() {
                    failed.push((
                        *token,
                        (!matches!(e, StreamEnd::Closed)).then(|| e.to_string()),
                    ));
                }
            }
        }
        for (token, why) in failed {
            self.doom(token, why);
        }
    }

    /// Whether some answer waits for a full socket.
    pub fn has_unflushed(&self) -> bool {
        self.controls.values().any(|c| c.stream.has_queued())
    }

    fn doom(&mut self, token: u64, why: Option<String>) {
        self.doomed.push((token, why));
    }

    /// Closes the doomed control connections (which may doom others: their peers' sockets).
    pub fn reap(&mut self) {
        while let Some((token, why)) = self.doomed.pop() {
            self.close_control(token, why);
        }
    }

    /// A new connection id: never 0, never one in use.
    pub(super) fn new_conn_id(&mut self) -> u32 {
        loop {
            let id = self.next_conn;
            self.next_conn = self.next_conn.wrapping_add(1).max(1);
            if !self.conns.contains_key(&id) {
                return id;
            }
        }
    }

    /// Sends `RESET` with `reason` for `conn` on `token`.
    pub(super) fn send_reset(&mut self, token: u64, conn: u32, reason: Reason) {
        let mut m = ControlMsg::new(Op::Reset);
        m.conn = conn;
        m.code = reason.raw();
        self.send(token, &m);
    }

    /// Sends `REFUSED` with `reason` for request `req` on `token`, counted on `vm`.
    pub(super) fn send_refused(&mut self, token: u64, vm: usize, req: u32, reason: Reason) {
        if let Some(v) = self.vms.get(vm) {
            v.counters
                .fastpath_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut m = ControlMsg::new(Op::Refused);
        m.req = req;
        m.code = reason.raw();
        self.send(token, &m);
    }

    pub(super) fn forget_fd(&self, c: &Control) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(c.stream.socket());
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}
