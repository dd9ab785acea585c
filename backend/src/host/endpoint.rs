//! The host side of one VM: its `uds` listener, half-open `CONNECT` handshakes and every
//! guest↔host connection (SPEC.md §6).
//!
//! The endpoint never touches a queue. The switch hands it validated guest packets
//! ([`HostEndpoint::on_guest_packet`]) and RX buffers to fill
//! ([`HostEndpoint::next_packet_for_guest`]); the host I/O thread hands it socket events
//! ([`HostEndpoint::on_host_event`]).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use sockbypass_wire::consts::{HOST_CID, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND};
use sockbypass_wire::fastpath::control::CONTROL_PORT;
use sockbypass_wire::segments::io_would_block;
use sockbypass_wire::{Op, PacketHeader, RxBuffer, TxPacket};

use super::connection::{ConnKey, ConnState, Fate, HostConn, HOST_BUF_ALLOC, MIN_HOST_BUF_ALLOC};
use super::poller::{token, HostPoller, LISTENER_ID};
use super::uds::{self, MAX_CONNECT_LINE};
use super::{ControlSink, GuestReplies};
use crate::logging::RateLimiter;
use crate::memory::GuestMem;
use crate::metrics::VmCounters;
use crate::warn_limited;

/// How long the guest has to answer a host program's `CONNECT`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a host program has to finish its `CONNECT` line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection the guest closed may wait for the host to take the last bytes.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(8);
/// Host programs accepted on one VM's `uds` per readiness event.
const ACCEPT_BATCH: usize = 64;
/// First port the device hands out on CID 2 for host-started connections.
pub const FIRST_HOST_PORT: u32 = 1 << 30;

/// A host program that connected to `uds` and has not finished its `CONNECT` line.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    since: Instant,
}

/// The host side of one VM.
#[derive(Debug)]
pub struct HostEndpoint {
    vm_index: usize,
    guest_cid: u64,
    uds: Option<PathBuf>,
    /// The fast-path service, for a VM with `fastpath=on` (SPEC.md §13.7).
    control: Option<Arc<dyn ControlSink>>,
    max_conns: usize,
    /// Bytes the connections may buffer in all (`host_buffer_bytes`).
    buffer_budget: u64,
    /// Bytes granted to the live connections (the sum of their `buf_alloc`).
    granted: u64,
    poller: HostPoller,
    listener: Option<UnixListener>,
    conns: HashMap<ConnKey, HostConn>,
    by_token: HashMap<u64, ConnKey>,
    handshakes: HashMap<u64, Handshake>,
    active: VecDeque<ConnKey>,
    next_id: u64,
    next_host_port: u32,
    guest_present: bool,
    warn: RateLimiter,
}

impl HostEndpoint {
    /// The host side of VM `vm_index`; binds its `uds` listener when it has one.
    pub fn new(
        vm_index: usize,
        guest_cid: u64,
        uds: Option<PathBuf>,
        control: Option<Arc<dyn ControlSink>>,
        max_conns: usize,
        buffer_budget: u64,
        poller: HostPoller,
    ) -> io::Result<Self> {
        let listener = match &uds {
            Some(path) => {
                let l = uds::bind_listener(path)?;
                poller.watch_readable(&l, token(vm_index, LISTENER_ID))?;
                Some(l)
            }
            None => None,
        };
        Ok(HostEndpoint {
            vm_index,
            guest_cid,
            uds,
            control,
            max_conns,
            buffer_budget,
            granted: 0,
            poller,
            listener,
            conns: HashMap::new(),
            by_token: HashMap::new(),
            handshakes: HashMap::new(),
            active: VecDeque::new(),
            next_id: LISTENER_ID + 1,
            next_host_port: FIRST_HOST_PORT,
            guest_present: false,
            warn: RateLimiter::per_packet(),
        })
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Buffer bytes granted to the live connections: what they may hold in all, never more
    /// than the VM's `host_buffer_bytes`.
    pub fn granted_bytes(&self) -> u64 {
        self.granted
    }

    /// The buffer a new connection gets: [`HOST_BUF_ALLOC`], or what is left of the budget if
    /// less; `None` when less than [`MIN_HOST_BUF_ALLOC`] is left.
    fn next_grant(&self) -> Option<u32> {
        let left = self.buffer_budget.saturating_sub(self.granted);
        let grant = u32::try_from(left.min(u64::from(HOST_BUF_ALLOC))).ok()?;
        (grant >= MIN_HOST_BUF_ALLOC).then_some(grant)
    }

    /// [`HostEndpoint::next_grant`], or a refusal counted and logged (rate-limited).
    fn grant_or_refuse(&self, counters: &VmCounters) -> Option<u32> {
        let grant = self.next_grant();
        if grant.is_none() {
            counters.drop_host_budget.fetch_add(1, Ordering::Relaxed);
            warn_limited!(
                self.warn,
                vm = self.vm_index,
                granted = self.granted,
                "host buffer budget spent, refusing a host connection"
            );
        }
        grant
    }

    /// Adds `conn` under `key`, its grant counted against the budget.
    fn insert(&mut self, key: ConnKey, conn: HostConn) {
        self.granted += u64::from(conn.local.buf_alloc);
        self.by_token.insert(conn.token, key);
        if let Some(old) = self.conns.insert(key, conn) {
            self.release(&old);
        }
    }

    fn release(&mut self, conn: &HostConn) {
        self.poller.forget(&conn.stream);
        self.by_token.remove(&conn.token);
        self.granted = self.granted.saturating_sub(u64::from(conn.local.buf_alloc));
    }

    /// Guest bytes waiting in the connections' buffers for their host programs to take.
    pub fn buffered_to_host(&self) -> usize {
        self.conns.values().map(|c| c.to_host.len()).sum()
    }

    /// The guest's driver is live: host programs may connect.
    pub fn guest_attached(&mut self) {
        self.guest_present = true;
    }

    /// The guest went away (disconnect, ring stop, device reset): every connection and
    /// handshake is closed, so host programs see the stream end.
    pub fn guest_detached(&mut self) {
        self.guest_present = false;
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.free(key);
        }
        for (_, hs) in self.handshakes.drain() {
            self.poller.forget(&hs.stream);
        }
        self.active.clear();
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn activate(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if !conn.in_active && conn.has_work_for_guest() {
                conn.in_active = true;
                self.active.push_back(key);
            }
        }
    }

    /// Whether some connection may have a packet for the guest.
    pub fn has_work_for_guest(&self) -> bool {
        !self.active.is_empty()
    }

    fn free(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            self.release(&conn);
        }
    }

    fn reset(&mut self, key: ConnKey, replies: &mut impl GuestReplies) {
        self.free(key);
        replies.send_rst(self.header(key, Op::Rst));
    }

    fn header(&self, key: ConnKey, op: Op) -> PacketHeader {
        PacketHeader::stream(op, HOST_CID, key.host_port, self.guest_cid, key.guest_port)
    }

    /// Handles a validated guest packet addressed to CID 2.
    pub fn on_guest_packet(
        &mut self,
        mem: &GuestMem,
        pkt: &TxPacket,
        replies: &mut impl GuestReplies,
        counters: &VmCounters,
    ) {
        let h = &pkt.header;
        let key = ConnKey {
            guest_port: h.src_port(),
            host_port: h.dst_port(),
        };
        let op = pkt.op();
        let Some(conn) = self.conns.get_mut(&key) else {
            match op {
                Op::Request => self.open_for_guest(key, h, replies, counters),
                Op::Rst => {}
                _ => {
                    counters.drop_no_connection.fetch_add(1, Ordering::Relaxed);
                    replies.refuse(h);
                }
            }
            return;
        };
        conn.peer.update(h.buf_alloc(), h.fwd_cnt());
        let verdict = match op {
            Op::Rst => Fate::Drop,
            Op::Request => Fate::Reset,
            Op::Response => match conn.state {
                ConnState::AwaitingGuest { .. } => {
                    match conn
                        .stream
                        .write_all(uds::ok_line(key.host_port).as_bytes())
                    {
                        Ok(()) => {
                            conn.state = ConnState::Established;
                            conn.host_readable = true;
                            Fate::Keep
                        }
                        Err(_) => Fate::Reset,
                    }
                }
                ConnState::Established => Fate::Reset,
            },
            Op::Rw => Self::guest_data(conn, mem, pkt, counters),
            Op::CreditUpdate => Fate::Keep,
            Op::CreditRequest => {
                conn.owed.credit_update = true;
                Fate::Keep
            }
            Op::Shutdown => {
                conn.guest_shutdown |= h.flags() & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                conn.apply_guest_shutdown()
            }
        };
        match verdict {
            Fate::Keep => self.activate(key),
            Fate::Drop => self.free(key),
            Fate::Reset => self.reset(key, replies),
        }
    }

    fn open_for_guest<R: GuestReplies>(
        &mut self,
        key: ConnKey,
        h: &PacketHeader,
        replies: &mut R,
        counters: &VmCounters,
    ) {
        let refuse = |replies: &mut R| replies.refuse(h);
        if key.host_port != CONTROL_PORT && self.uds.is_none() {
            return refuse(replies);
        }
        if self.conns.len() + self.handshakes.len() >= self.max_conns {
            warn_limited!(
                self.warn,
                vm = self.vm_index,
                "connection limit reached, refusing guest connect"
            );
            return refuse(replies);
        }
        let Some(grant) = self.grant_or_refuse(counters) else {
            return refuse(replies);
        };
        let opened = if key.host_port == CONTROL_PORT {
            self.open_control(key)
        } else {
            self.open_uds(key)
        };
        let Some(stream) = opened else {
            return refuse(replies);
        };
        let id = self.alloc_id();
        let tok = token(self.vm_index, id);
        if let Err(e) = self.poller.watch_stream(&stream, tok) {
            tracing::warn!(error = %e, "cannot watch host connection; RST");
            return refuse(replies);
        }
        let mut conn = HostConn::new(stream, tok, ConnState::Established, grant);
        conn.peer.update(h.buf_alloc(), h.fwd_cnt());
        conn.owed.response = true;
        self.insert(key, conn);
        counters.host_conns_opened.fetch_add(1, Ordering::Relaxed);
        self.activate(key);
    }

    /// The host program's end of a guest connect to `uds`: `<uds>_<port>`, connected now.
    fn open_uds(&self, key: ConnKey) -> Option<UnixStream> {
        let target = uds::guest_target_path(self.uds.as_ref()?, key.host_port);
        uds::connect_nonblocking(&target)
            .map_err(|e| {
                tracing::debug!(target = %target.display(), error = %e, "no host listener; RST");
            })
            .ok()
    }

    /// A control connection of the fast path (SPEC.md §13.7): one end of a socket pair for the
    /// guest's side, the other handed to the fast-path service. A VM without `fastpath=on`
    /// has no service here, and its connect is refused.
    fn open_control(&self, key: ConnKey) -> Option<UnixStream> {
        let sink = self.control.as_ref()?;
        let (ours, theirs) = UnixStream::pair()
            .and_then(|(a, b)| a.set_nonblocking(true).map(|()| (a, b)))
            .map_err(|e| tracing::warn!(error = %e, "cannot make a control socket pair; RST"))
            .ok()?;
        sink.take(self.vm_index, key.guest_port, theirs)
            .map_err(|e| tracing::debug!(error = %e, "fast-path service refused a control connection; RST"))
            .ok()?;
        Some(ours)
    }

    fn guest_data(
        conn: &mut HostConn,
        mem: &GuestMem,
        pkt: &TxPacket,
        counters: &VmCounters,
    ) -> Fate {
        let len = pkt.header.len();
        if conn.state != ConnState::Established || conn.guest_shutdown & SHUTDOWN_SEND != 0 {
            return Fate::Reset;
        }
        if !conn.local.admits(len) {
            counters
                .drop_credit_violation
                .fetch_add(1, Ordering::Relaxed);
            return Fate::Reset;
        }
        conn.local.received(len);
        let mut written = 0u32;
        if conn.to_host.is_empty() && len > 0 {
            match pkt.payload.write_to(mem, 0, len, &mut conn.stream) {
                Ok(n) => written = n,
                Err(e) if io_would_block(&e) => {}
                Err(_) => return Fate::Reset,
            }
            conn.local.forwarded(written);
        }
        if written < len {
            // The host is slower than the guest: keep the rest, within the granted credit.
            const CHUNK: u32 = 4096;
            let mut chunk = [0u8; CHUNK as usize];
            let mut off = written;
            while off < len {
                let n = (len - off).min(CHUNK);
                if pkt
                    .payload
                    .read_bytes(mem, off, &mut chunk[..n as usize])
                    .is_err()
                {
                    return Fate::Reset;
                }
                if conn.to_host.capacity() == 0 {
                    // Once, and exactly the grant: credit keeps the backlog within it.
                    conn.to_host.reserve_exact(conn.local.buf_alloc as usize);
                }
                conn.to_host.extend(&chunk[..n as usize]);
                off += n;
            }
        }
        if conn.local.update_due() {
            conn.owed.credit_update = true;
        }
        Fate::Keep
    }

    /// Fills `rx` with the next packet some connection owes the guest. The payload (if any) is
    /// already in the buffer; the caller writes the returned header and returns the buffer.
    /// `None`: nothing to send, the buffer is untouched.
    pub fn next_packet_for_guest(
        &mut self,
        mem: &GuestMem,
        rx: &RxBuffer,
        counters: &VmCounters,
    ) -> Option<(PacketHeader, u32)> {
        while let Some(key) = self.active.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_active = false;
            let produced = Self::produce(conn, key, self.guest_cid, mem, rx);
            match produced {
                Produced::Packet(hdr, len) => {
                    self.activate(key);
                    return Some((hdr, len));
                }
                Produced::Nothing => {}
                Produced::ResetInPlace(hdr) => {
                    self.free(key);
                    counters.rst_sent.fetch_add(1, Ordering::Relaxed);
                    return Some((hdr, 0));
                }
            }
        }
        None
    }

    fn produce(
        conn: &mut HostConn,
        key: ConnKey,
        guest_cid: u64,
        mem: &GuestMem,
        rx: &RxBuffer,
    ) -> Produced {
        let mut hdr =
            PacketHeader::stream(Op::Rw, HOST_CID, key.host_port, guest_cid, key.guest_port);
        let finish = |conn: &mut HostConn, hdr: &mut PacketHeader, op: Op, len: u32| {
            hdr.set_op(op)
                .set_len(len)
                .set_credit(conn.local.buf_alloc, conn.local.fwd_cnt);
            conn.local.mark_sent();
            conn.owed.credit_update = false;
            Produced::Packet(*hdr, len)
        };
        if conn.owed.request {
            conn.owed.request = false;
            return finish(conn, &mut hdr, Op::Request, 0);
        }
        if conn.owed.response {
            conn.owed.response = false;
            return finish(conn, &mut hdr, Op::Response, 0);
        }
        if conn.wants_to_read_host() {
            let cap = rx
                .payload_capacity()
                .min(conn.peer.available())
                .min(MAX_PAYLOAD);
            if cap > 0 {
                let result = rx
                    .payload(cap)
                    .and_then(|payload| payload.read_from(mem, 0, cap, &mut conn.stream));
                match result {
                    Ok(0) => conn.host_closed_writing(),
                    Ok(n) => {
                        conn.peer.consume(n);
                        return finish(conn, &mut hdr, Op::Rw, n);
                    }
                    Err(e) if io_would_block(&e) => conn.host_readable = false,
                    Err(_) => {
                        hdr.set_op(Op::Rst);
                        return Produced::ResetInPlace(hdr);
                    }
                }
            }
        }
        if conn.owed.shutdown != 0 {
            let flags = conn.owed.shutdown;
            conn.owed.shutdown = 0;
            conn.shutdown_sent |= flags;
            hdr.set_flags(flags);
            return finish(conn, &mut hdr, Op::Shutdown, 0);
        }
        if conn.owed.credit_update {
            return finish(conn, &mut hdr, Op::CreditUpdate, 0);
        }
        Produced::Nothing
    }

    /// Handles readiness of a host socket of this VM.
    pub fn on_host_event(
        &mut self,
        id: u64,
        events: EventSet,
        replies: &mut impl GuestReplies,
        counters: &VmCounters,
    ) {
        if id == LISTENER_ID {
            self.accept_all(counters);
            return;
        }
        if self.handshakes.contains_key(&id) {
            self.progress_handshake(id, counters);
            return;
        }
        let tok = token(self.vm_index, id);
        let Some(&key) = self.by_token.get(&tok) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let mut verdict = Fate::Keep;
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            conn.host_readable = true;
        }
        if events.contains(EventSet::OUT) && !conn.to_host.is_empty() {
            verdict = match conn.flush_to_host() {
                Ok(_) => conn.apply_guest_shutdown(),
                Err(_) => Fate::Reset,
            };
        }
        if events.contains(EventSet::ERROR) && conn.to_host.is_empty() && !conn.host_readable {
            verdict = Fate::Reset;
        }
        match verdict {
            Fate::Keep => self.activate(key),
            Fate::Drop => self.free(key),
            Fate::Reset => self.reset(key, replies),
        }
    }

    /// Accepts the host programs waiting on `uds`, at most [`ACCEPT_BATCH`] per event (the
    /// listener stays readable, so the rest come with the next turn of the host thread).
    fn accept_all(&mut self, counters: &VmCounters) {
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = &self.listener else {
                return;
            };
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn_limited!(self.warn, vm = self.vm_index, error = %e, "accept on uds failed");
                    return;
                }
            };
            if !self.guest_present || self.conns.len() + self.handshakes.len() >= self.max_conns {
                // Closing at once tells the host program there is no guest to talk to.
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = self.alloc_id();
            if self
                .poller
                .watch_readable(&stream, token(self.vm_index, id))
                .is_err()
            {
                continue;
            }
            self.handshakes.insert(
                id,
                Handshake {
                    stream,
                    line: Vec::with_capacity(MAX_CONNECT_LINE),
                    since: Instant::now(),
                },
            );
            // The line may already be there.
            self.progress_handshake(id, counters);
        }
    }

    fn progress_handshake(&mut self, id: u64, counters: &VmCounters) {
        let Some(hs) = self.handshakes.get_mut(&id) else {
            return;
        };
        let mut byte = [0u8; 1];
        // Byte by byte, so nothing after the newline (stream payload) is consumed here.
        let done = loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) => {
                    hs.line.push(byte[0]);
                    if byte[0] == b'\n' {
                        break Ok(true);
                    }
                    if hs.line.len() >= MAX_CONNECT_LINE {
                        break Err(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break Err(()),
            }
        };
        match done {
            Ok(false) => {}
            Err(()) => self.drop_handshake(id),
            Ok(true) => {
                let Some(hs) = self.handshakes.remove(&id) else {
                    return;
                };
                self.poller.forget(&hs.stream);
                match uds::parse_connect_line(&hs.line) {
                    Ok(port) => self.open_for_host(id, hs.stream, port, counters),
                    Err(e) => {
                        warn_limited!(self.warn, vm = self.vm_index, error = %e, "bad CONNECT line from host program");
                    }
                }
            }
        }
    }

    fn drop_handshake(&mut self, id: u64) {
        if let Some(hs) = self.handshakes.remove(&id) {
            self.poller.forget(&hs.stream);
        }
    }

    fn open_for_host(
        &mut self,
        id: u64,
        stream: UnixStream,
        guest_port: u32,
        counters: &VmCounters,
    ) {
        if !self.guest_present {
            return;
        }
        let Some(grant) = self.grant_or_refuse(counters) else {
            // The host program sees its connection closed.
            return;
        };
        let host_port = self.alloc_host_port();
        let key = ConnKey {
            guest_port,
            host_port,
        };
        let tok = token(self.vm_index, id);
        if self.poller.watch_stream(&stream, tok).is_err() {
            return;
        }
        let mut conn = HostConn::new(
            stream,
            tok,
            ConnState::AwaitingGuest {
                deadline: Instant::now() + CONNECT_TIMEOUT,
            },
            grant,
        );
        conn.host_readable = false;
        conn.owed.request = true;
        self.insert(key, conn);
        self.activate(key);
    }

    fn alloc_host_port(&mut self) -> u32 {
        loop {
            let p = self.next_host_port;
            self.next_host_port = if p >= u32::MAX - 1 {
                FIRST_HOST_PORT
            } else {
                p + 1
            };
            if !self.conns.keys().any(|k| k.host_port == p) {
                return p;
            }
        }
    }

    /// Expires handshakes, unanswered `CONNECT`s and connections stuck closing.
    pub fn sweep(&mut self, now: Instant, replies: &mut impl GuestReplies) {
        let stale: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, hs)| now.duration_since(hs.since) > HANDSHAKE_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.drop_handshake(id);
        }
        let expired: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| match c.state {
                ConnState::AwaitingGuest { deadline } => now >= deadline,
                ConnState::Established => c
                    .closing_since
                    .is_some_and(|t| now.duration_since(t) > CLOSE_TIMEOUT),
            })
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.reset(key, replies);
        }
    }
}

/// What a connection put into an RX buffer.
enum Produced {
    Packet(PacketHeader, u32),
    Nothing,
    ResetInPlace(PacketHeader),
}
