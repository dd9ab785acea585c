//! The table of VM-to-VM connections (SPEC.md §4.2, §5.2, §7, §10).
//!
//! Every packet between two VMs is checked here before it moves: policy on REQUEST, the
//! connection's state for every other op, and the receiver's credit for RW. The table never
//! touches a queue; it returns a [`Verdict`] and the switch acts on it. It is bounded: a VM takes
//! part in at most `max_conns` connections, of which one other VM may have opened at most
//! `max_conns_per_peer`; a closed connection's entry is freed on its RST or [`CLOSING_TIMEOUT`]
//! after both directions were shut, and a connection that never got its RESPONSE is freed (and
//! both sides reset) after the half-open timeout.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sockbypass_wire::consts::{SHUTDOWN_RCV, SHUTDOWN_SEND};
use sockbypass_wire::{Op, PacketHeader};

use super::policy::{Refusal, VmPolicy};
use super::replies::rst;
use crate::credit::PeerCredit;

/// How long an entry whose both directions are shut waits for the RST that ends it. Longer than
/// Linux's own close timeout (8 s), after which Linux sends that RST itself.
pub const CLOSING_TIMEOUT: Duration = Duration::from_secs(10);

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Addr {
    cid: u64,
    port: u32,
}

/// The two ends of a connection, lower address first, so both directions find one entry.
type Key = (Addr, Addr);

/// Why the switch refuses a packet between VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Policy refused a REQUEST (§7).
    Policy(Refusal),
    /// One of the two VMs is at its `max_conns`, or the initiator already opened
    /// `max_conns_per_peer` connections to the receiver.
    ConnLimit,
    /// The packet names no connection.
    NoConnection,
    /// The packet contradicts the connection's state (a second REQUEST, a late RESPONSE, RW
    /// after SHUTDOWN...).
    Protocol,
    /// RW beyond the receiver's credit.
    Credit,
}

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it to the destination VM.
    Forward,
    /// Do not deliver; answer the sender with RST.
    Refuse(Refused),
    /// Do not deliver; the connection is gone: RST to the sender and to the destination.
    ResetBoth(Refused),
    /// Do not deliver and do not answer (an RST for no known connection).
    Ignore,
}

#[derive(Debug)]
struct PeerConn {
    vms: [usize; 2],
    initiator: usize,
    /// When the REQUEST passed (for the half-open timeout).
    opened: Instant,
    established: bool,
    shut: [u32; 2],
    closing_since: Option<Instant>,
    /// Receive credit of each side, as it advertised it, and the payload bytes the switch let
    /// through towards it.
    credit: [PeerCredit; 2],
}

impl PeerConn {
    /// Whether no data can flow any more in either direction.
    fn both_directions_shut(&self) -> bool {
        let a_to_b = self.shut[0] & SHUTDOWN_SEND != 0 || self.shut[1] & SHUTDOWN_RCV != 0;
        let b_to_a = self.shut[1] & SHUTDOWN_SEND != 0 || self.shut[0] & SHUTDOWN_RCV != 0;
        a_to_b && b_to_a
    }

    /// Whether side `s` may still send data to the other side.
    fn may_send(&self, s: usize) -> bool {
        self.established
            && self.closing_since.is_none()
            && self.shut[s] & SHUTDOWN_SEND == 0
            && self.shut[1 - s] & SHUTDOWN_RCV == 0
    }
}

#[derive(Debug)]
struct VmSlot {
    policy: VmPolicy,
    max_conns: usize,
    /// Connections one other VM may have opened to this one.
    per_peer: usize,
    conns: usize,
}

impl VmSlot {
    fn new(policy: VmPolicy, limits: ConnLimits) -> Self {
        VmSlot {
            policy,
            max_conns: limits.max_conns,
            per_peer: limits.per_peer,
            conns: 0,
        }
    }
}

/// The limits of one VM in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections the VM takes part in at most (`max_conns`).
    pub max_conns: usize,
    /// Connections one other VM may have opened to it (`max_conns_per_peer`).
    pub per_peer: usize,
}

/// What [`PeerTable::sweep`] freed.
#[derive(Debug, Default)]
pub struct Expired {
    /// RSTs owed for half-open connections that timed out: one to each side.
    pub rsts: Vec<OwedRst>,
    /// The initiator of each half-open connection that timed out (for its counter).
    pub initiators: Vec<usize>,
}

/// An RST the switch owes a VM because a connection ended without its say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwedRst {
    /// The VM to send it to.
    pub vm: usize,
    /// The RST, addressed to that VM.
    pub header: PacketHeader,
}

/// Every VM-to-VM connection of the daemon.
#[derive(Debug)]
pub struct PeerTable {
    /// Keys come from guests, so the hasher is seeded per table (foldhash's quality variant,
    /// several times cheaper than SipHash on these 24-byte keys).
    conns: HashMap<Key, PeerConn, foldhash::quality::RandomState>,
    /// By switch index; `None` for a free index (a VM removed at run time, or never added).
    vms: Vec<Option<VmSlot>>,
    /// Live connections by (initiator, receiver), for `max_conns_per_peer`; a VM's connections
    /// to itself are not counted here.
    opened_by: HashMap<(usize, usize), usize, foldhash::fast::RandomState>,
    half_open_timeout: Duration,
}

/// The VMs of a connection, each once (a VM may connect to itself: it counts once).
fn distinct(vms: [usize; 2]) -> impl Iterator<Item = usize> {
    let second = (vms[1] != vms[0]).then_some(vms[1]);
    std::iter::once(vms[0]).chain(second)
}

/// The key of the connection `h` names, and which side of it `h`'s sender is.
fn key_of_header(h: &PacketHeader) -> (Key, usize) {
    let src = Addr {
        cid: h.src_cid(),
        port: h.src_port(),
    };
    let dst = Addr {
        cid: h.dst_cid(),
        port: h.dst_port(),
    };
    key_of(src, dst)
}

/// Whether `a` and `b` belong to the same connection (either direction).
pub fn same_connection(a: &PacketHeader, b: &PacketHeader) -> bool {
    key_of_header(a).0 == key_of_header(b).0
}

/// The RST owed to side `side` of the connection `key` when it ended without that side's say:
/// from the other end's address to this side's, for this side's VM.
fn owed_rst(key: &Key, conn: &PeerConn, side: usize) -> OwedRst {
    let addrs = [key.0, key.1];
    let (from, to) = (addrs[1 - side], addrs[side]);
    OwedRst {
        vm: conn.vms[side],
        header: rst((from.cid, from.port), (to.cid, to.port)),
    }
}

fn key_of(src: Addr, dst: Addr) -> (Key, usize) {
    if src <= dst {
        ((src, dst), 0)
    } else {
        ((dst, src), 1)
    }
}

impl PeerTable {
    /// A table for VMs with these policies and limits, in switch order. A connection that
    /// gets no RESPONSE within `half_open_timeout` is freed by [`PeerTable::sweep`].
    pub fn new(
        vms: impl IntoIterator<Item = (VmPolicy, ConnLimits)>,
        half_open_timeout: Duration,
    ) -> Self {
        PeerTable {
            conns: HashMap::default(),
            vms: vms
                .into_iter()
                .map(|(policy, limits)| Some(VmSlot::new(policy, limits)))
                .collect(),
            opened_by: HashMap::default(),
            half_open_timeout,
        }
    }

    /// Connections VM `vm` takes part in (closing ones included).
    pub fn count(&self, vm: usize) -> usize {
        self.slot(vm).map_or(0, |s| s.conns)
    }

    /// Gives the VM at switch index `vm` (added at run time) its policy and limits.
    pub fn add_vm(&mut self, vm: usize, policy: VmPolicy, limits: ConnLimits) {
        if self.vms.len() <= vm {
            self.vms.resize_with(vm + 1, || None);
        }
        self.vms[vm] = Some(VmSlot::new(policy, limits));
    }

    /// Forgets VM `vm` (removed at run time): its connections end as a detach ends them, and
    /// the RSTs they owe its peers are returned. No REQUEST to or from it passes afterwards.
    pub fn remove_vm(&mut self, vm: usize) -> Vec<OwedRst> {
        let owed = self.detach(vm);
        if let Some(slot) = self.vms.get_mut(vm) {
            *slot = None;
        }
        owed
    }

    fn slot(&self, vm: usize) -> Option<&VmSlot> {
        self.vms.get(vm).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, vm: usize) -> Option<&mut VmSlot> {
        self.vms.get_mut(vm).and_then(Option::as_mut)
    }

    /// Checks one valid packet from VM `from` (whose CID the header's `src_cid` already matched)
    /// to VM `to`, and updates the connection it names. `now` is read only when a connection
    /// opens or starts closing.
    pub fn on_packet(
        &mut self,
        from: usize,
        to: usize,
        h: &PacketHeader,
        now: impl FnOnce() -> Instant,
    ) -> Verdict {
        let (key, side) = key_of_header(h);
        let Some(op) = h.op() else {
            return Verdict::Ignore;
        };
        if op == Op::Request {
            return self.on_request(from, to, key, side, h, now);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return if op == Op::Rst {
                Verdict::Ignore
            } else {
                Verdict::Refuse(Refused::NoConnection)
            };
        };
        if conn.vms[side] != from || conn.vms[1 - side] != to {
            // The same addresses, but not the VMs that opened it: cannot happen while CIDs are
            // unique and checked, but never let it cross connections.
            return Verdict::Refuse(Refused::NoConnection);
        }
        conn.credit[side].update(h.buf_alloc(), h.fwd_cnt());
        match op {
            Op::Response => {
                if conn.established || conn.initiator == side {
                    self.remove(&key);
                    Verdict::ResetBoth(Refused::Protocol)
                } else {
                    conn.established = true;
                    Verdict::Forward
                }
            }
            Op::Rw => {
                if !conn.may_send(side) {
                    self.remove(&key);
                    return Verdict::ResetBoth(Refused::Protocol);
                }
                let receiver = &mut conn.credit[1 - side];
                if !receiver.admits(h.len()) {
                    self.remove(&key);
                    return Verdict::ResetBoth(Refused::Credit);
                }
                receiver.consume(h.len());
                Verdict::Forward
            }
            // REQUEST went to `on_request` above: only credit messages come here.
            Op::CreditUpdate | Op::CreditRequest | Op::Request => Verdict::Forward,
            Op::Shutdown => {
                conn.shut[side] |= h.flags() & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if conn.closing_since.is_none() && conn.both_directions_shut() {
                    conn.closing_since = Some(now());
                }
                Verdict::Forward
            }
            Op::Rst => {
                self.remove(&key);
                Verdict::Forward
            }
        }
    }

    fn on_request(
        &mut self,
        from: usize,
        to: usize,
        key: Key,
        side: usize,
        h: &PacketHeader,
        now: impl FnOnce() -> Instant,
    ) -> Verdict {
        if let Some(old) = self.conns.get(&key) {
            if old.closing_since.is_none() {
                self.remove(&key);
                return Verdict::ResetBoth(Refused::Protocol);
            }
            // A port reused after a close whose final RST never came.
            self.remove(&key);
        }
        let (Some(a), Some(b)) = (self.slot(from), self.slot(to)) else {
            return Verdict::Refuse(Refused::NoConnection);
        };
        if let Err(r) = a.policy.may_connect(&b.policy, h.dst_port()) {
            return Verdict::Refuse(Refused::Policy(r));
        }
        if a.conns >= a.max_conns || b.conns >= b.max_conns {
            return Verdict::Refuse(Refused::ConnLimit);
        }
        if from != to && self.opened_by.get(&(from, to)).copied().unwrap_or(0) >= b.per_peer {
            return Verdict::Refuse(Refused::ConnLimit);
        }
        let mut vms = [0; 2];
        vms[side] = from;
        vms[1 - side] = to;
        let mut credit = [PeerCredit::default(); 2];
        credit[side].update(h.buf_alloc(), h.fwd_cnt());
        self.conns.insert(
            key,
            PeerConn {
                vms,
                initiator: side,
                opened: now(),
                established: false,
                shut: [0; 2],
                closing_since: None,
                credit,
            },
        );
        for vm in distinct(vms) {
            if let Some(slot) = self.slot_mut(vm) {
                slot.conns += 1;
            }
        }
        if from != to {
            *self.opened_by.entry((from, to)).or_insert(0) += 1;
        }
        Verdict::Forward
    }

    fn remove(&mut self, key: &Key) -> Option<PeerConn> {
        let conn = self.conns.remove(key)?;
        for vm in distinct(conn.vms) {
            if let Some(slot) = self.slot_mut(vm) {
                slot.conns = slot.conns.saturating_sub(1);
            }
        }
        let pair = (conn.vms[conn.initiator], conn.vms[1 - conn.initiator]);
        if pair.0 != pair.1 {
            if let Some(n) = self.opened_by.get_mut(&pair) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.opened_by.remove(&pair);
                }
            }
        }
        Some(conn)
    }

    /// Connections VM `from` opened to VM `to` that are still in the table.
    #[cfg(test)]
    fn opened_by(&self, from: usize, to: usize) -> usize {
        self.opened_by.get(&(from, to)).copied().unwrap_or(0)
    }

    /// Forgets the connection `h` names, if any (its packet could not be delivered).
    pub fn forget(&mut self, h: &PacketHeader) {
        self.remove(&key_of_header(h).0);
    }

    /// Frees every connection of VM `vm` (it detached) and returns the RSTs owed to its peers.
    pub fn detach(&mut self, vm: usize) -> Vec<OwedRst> {
        let gone: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.vms.contains(&vm))
            .map(|(k, _)| *k)
            .collect();
        let mut owed = Vec::with_capacity(gone.len());
        for key in gone {
            let Some(conn) = self.remove(&key) else {
                continue;
            };
            for side in 0..2 {
                if conn.vms[side] != vm && conn.vms[1 - side] == vm {
                    owed.push(owed_rst(&key, &conn, side));
                }
            }
        }
        owed
    }

    /// Frees closed connections whose final RST did not come within [`CLOSING_TIMEOUT`], and
    /// half-open connections whose RESPONSE did not come within the half-open timeout; the
    /// latter owe an RST to each side.
    pub fn sweep(&mut self, now: Instant) -> Expired {
        let half_open = self.half_open_timeout;
        let expired: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.closing_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= CLOSING_TIMEOUT)
                    || (!c.established && now.saturating_duration_since(c.opened) >= half_open)
            })
            .map(|(k, _)| *k)
            .collect();
        let mut out = Expired::default();
        for key in expired {
            let Some(conn) = self.remove(&key) else {
                continue;
            };
            if conn.established {
                continue;
            }
            out.initiators.push(conn.vms[conn.initiator]);
            out.rsts
                .extend((0..2).map(|side| owed_rst(&key, &conn, side)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VmConfig;
    use sockbypass_wire::consts::SHUTDOWN_BOTH;

    const A: u64 = 3;
    const B: u64 = 4;
    const HALF_OPEN: Duration = Duration::from_secs(10);

    fn table(max: usize) -> PeerTable {
        let vm = |groups: &[&str], ports: Option<Vec<u32>>| {
            VmPolicy::new(&VmConfig {
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                ports,
                ..VmConfig::new("x", 0, "/s")
            })
        };
        let limits = ConnLimits {
            max_conns: max,
            per_peer: max,
        };
        PeerTable::new(
            [
                (vm(&["g"], None), limits),
                (vm(&["g"], Some(vec![80])), limits),
                (vm(&["other"], None), limits),
            ],
            HALF_OPEN,
        )
    }

    fn pkt(op: Op, src: (u64, u32), dst: (u64, u32)) -> PacketHeader {
        let mut h = PacketHeader::stream(op, src.0, src.1, dst.0, dst.1);
        h.set_credit(1000, 0);
        h
    }

    fn open(t: &mut PeerTable, now: Instant) {
        let req = pkt(Op::Request, (A, 1000), (B, 80));
        assert_eq!(t.on_packet(0, 1, &req, || now), Verdict::Forward);
        let resp = pkt(Op::Response, (B, 80), (A, 1000));
        assert_eq!(t.on_packet(1, 0, &resp, || now), Verdict::Forward);
    }

    #[test]
    fn request_response_rw_rst() {
        let now = Instant::now();
        let mut t = table(8);
        open(&mut t, now);
        assert_eq!((t.count(0), t.count(1)), (1, 1));
        let mut rw = pkt(Op::Rw, (A, 1000), (B, 80));
        rw.set_len(600);
        assert_eq!(t.on_packet(0, 1, &rw, || now), Verdict::Forward);
        let rst = pkt(Op::Rst, (B, 80), (A, 1000));
        assert_eq!(t.on_packet(1, 0, &rst, || now), Verdict::Forward);
        assert_eq!((t.count(0), t.count(1)), (0, 0));
        assert_eq!(
            t.on_packet(0, 1, &rw, || now),
            Verdict::Refuse(Refused::NoConnection)
        );
        assert_eq!(t.on_packet(1, 0, &rst, || now), Verdict::Ignore);
    }

    #[test]
    fn policy_and_limits() {
        let now = Instant::now();
        let mut t = table(1);
        let wrong_port = pkt(Op::Request, (A, 1000), (B, 81));
        assert_eq!(
            t.on_packet(0, 1, &wrong_port, || now),
            Verdict::Refuse(Refused::Policy(Refusal::PortNotListed))
        );
        let other_group = pkt(Op::Request, (A, 1000), (5, 80));
        assert_eq!(
            t.on_packet(0, 2, &other_group, || now),
            Verdict::Refuse(Refused::Policy(Refusal::NoSharedGroup))
        );
        open(&mut t, now);
        let second = pkt(Op::Request, (A, 1001), (B, 80));
        assert_eq!(
            t.on_packet(0, 1, &second, || now),
            Verdict::Refuse(Refused::ConnLimit)
        );
    }

    #[test]
    fn credit_is_enforced_end_to_end() {
        let now = Instant::now();
        let mut t = table(8);
        open(&mut t, now);
        let mut rw = pkt(Op::Rw, (A, 1000), (B, 80));
        rw.set_len(1000);
        assert_eq!(t.on_packet(0, 1, &rw, || now), Verdict::Forward);
        // B's application consumed 400 bytes: 400 more may come, not 401.
        let mut cu = pkt(Op::CreditUpdate, (B, 80), (A, 1000));
        cu.set_credit(1000, 400);
        assert_eq!(t.on_packet(1, 0, &cu, || now), Verdict::Forward);
        rw.set_len(400);
        assert_eq!(t.on_packet(0, 1, &rw, || now), Verdict::Forward);
        rw.set_len(1);
        assert_eq!(
            t.on_packet(0, 1, &rw, || now),
            Verdict::ResetBoth(Refused::Credit)
        );
        assert_eq!(t.count(0), 0);
    }

    #[test]
    fn half_close_then_close() {
        let now = Instant::now();
        let mut t = table(8);
        open(&mut t, now);
        let mut shut = pkt(Op::Shutdown, (A, 1000), (B, 80));
        shut.set_flags(SHUTDOWN_SEND);
        assert_eq!(t.on_packet(0, 1, &shut, || now), Verdict::Forward);
        // A no longer sends, but B still does.
        let mut back = pkt(Op::Rw, (B, 80), (A, 1000));
        back.set_len(10);
        assert_eq!(t.on_packet(1, 0, &back, || now), Verdict::Forward);
        let mut rw = pkt(Op::Rw, (A, 1000), (B, 80));
        rw.set_len(10);
        assert_eq!(
            t.on_packet(0, 1, &rw, || now),
            Verdict::ResetBoth(Refused::Protocol)
        );
        // A fresh connection closes with SHUTDOWN(both), then lingers until its RST or timeout.
        open(&mut t, now);
        shut.set_flags(SHUTDOWN_BOTH);
        assert_eq!(t.on_packet(0, 1, &shut, || now), Verdict::Forward);
        assert_eq!(
            t.on_packet(1, 0, &back, || now),
            Verdict::ResetBoth(Refused::Protocol)
        );
        open(&mut t, now);
        assert_eq!(t.on_packet(0, 1, &shut, || now), Verdict::Forward);
        t.sweep(now + CLOSING_TIMEOUT / 2);
        assert_eq!(t.count(0), 1);
        t.sweep(now + CLOSING_TIMEOUT);
        assert_eq!(t.count(0), 0);
    }

    #[test]
    fn duplicate_request_and_late_response_reset() {
        let now = Instant::now();
        let mut t = table(8);
        open(&mut t, now);
        let req = pkt(Op::Request, (A, 1000), (B, 80));
        assert_eq!(
            t.on_packet(0, 1, &req, || now),
            Verdict::ResetBoth(Refused::Protocol)
        );
        open(&mut t, now);
        let resp = pkt(Op::Response, (B, 80), (A, 1000));
        assert_eq!(
            t.on_packet(1, 0, &resp, || now),
            Verdict::ResetBoth(Refused::Protocol)
        );
        let req = pkt(Op::Request, (A, 1000), (B, 80));
        assert_eq!(t.on_packet(0, 1, &req, || now), Verdict::Forward);
        let own = pkt(Op::Response, (A, 1000), (B, 80));
        assert_eq!(
            t.on_packet(0, 1, &own, || now),
            Verdict::ResetBoth(Refused::Protocol)
        );
    }

    #[test]
    fn a_connection_to_itself_counts_once() {
        let now = Instant::now();
        let mut t = table(1);
        let req = pkt(Op::Request, (A, 1000), (A, 2000));
        assert_eq!(t.on_packet(0, 0, &req, || now), Verdict::Forward);
        assert_eq!(t.count(0), 1);
        assert!(t.detach(0).is_empty(), "no peer is owed an RST");
        assert_eq!(t.count(0), 0);
    }

    #[test]
    fn detach_owes_rst_to_every_peer() {
        let now = Instant::now();
        let mut t = table(8);
        open(&mut t, now);
        let req = pkt(Op::Request, (B, 2000), (A, 7));
        assert_eq!(t.on_packet(1, 0, &req, || now), Verdict::Forward);
        let mut owed = t.detach(1);
        owed.sort_by_key(|o| o.header.dst_port());
        assert_eq!(owed.len(), 2);
        for o in &owed {
            assert_eq!(o.vm, 0);
            assert_eq!(o.header.op(), Some(Op::Rst));
            assert_eq!((o.header.src_cid(), o.header.dst_cid()), (B, A));
        }
        assert_eq!(owed[0].header.dst_port(), 7);
        assert_eq!(owed[1].header.dst_port(), 1000);
        assert_eq!((t.count(0), t.count(1)), (0, 0));
    }

    #[test]
    fn one_peer_takes_at_most_its_share_of_a_vms_connections() {
        let now = Instant::now();
        let limits = |max_conns, per_peer| ConnLimits {
            max_conns,
            per_peer,
        };
        let vm = || {
            VmPolicy::new(&VmConfig {
                groups: vec!["g".into()],
                ..VmConfig::new("x", 0, "/s")
            })
        };
        // b (index 1) takes 4 connections, at most 2 from any one VM.
        let mut t = PeerTable::new(
            [
                (vm(), limits(8, 8)),
                (vm(), limits(4, 2)),
                (vm(), limits(8, 8)),
            ],
            HALF_OPEN,
        );
        let req = |from: u64, port: u32| pkt(Op::Request, (from, port), (B, 80));
        assert_eq!(t.on_packet(0, 1, &req(A, 1), || now), Verdict::Forward);
        assert_eq!(t.on_packet(0, 1, &req(A, 2), || now), Verdict::Forward);
        assert_eq!(
            t.on_packet(0, 1, &req(A, 3), || now),
            Verdict::Refuse(Refused::ConnLimit),
            "a third from the same VM"
        );
        assert_eq!(t.on_packet(2, 1, &req(5, 1), || now), Verdict::Forward);
        assert_eq!(t.opened_by(0, 1), 2);
        // b's own connections to a count against a's share of nobody: b opens to a freely.
        let own = pkt(Op::Request, (B, 9), (A, 7));
        assert_eq!(t.on_packet(1, 0, &own, || now), Verdict::Forward);
        assert_eq!(t.count(1), 4);
        // A freed connection gives the share back.
        let rst = pkt(Op::Rst, (A, 1), (B, 80));
        assert_eq!(t.on_packet(0, 1, &rst, || now), Verdict::Forward);
        assert_eq!(t.opened_by(0, 1), 1);
        assert_eq!(t.on_packet(0, 1, &req(A, 3), || now), Verdict::Forward);
    }

    #[test]
    fn a_connection_without_response_expires_and_resets_both_sides() {
        let now = Instant::now();
        let mut t = table(8);
        open(&mut t, now); // an answered connection: it never expires
        let req = pkt(Op::Request, (A, 1001), (B, 80));
        assert_eq!(t.on_packet(0, 1, &req, || now), Verdict::Forward);
        assert!(t.sweep(now + HALF_OPEN / 2).rsts.is_empty());
        let gone = t.sweep(now + HALF_OPEN);
        assert_eq!(gone.initiators, vec![0]);
        let mut rsts: Vec<_> = gone.rsts.iter().map(|o| (o.vm, o.header)).collect();
        rsts.sort_by_key(|(vm, _)| *vm);
        assert_eq!(
            rsts,
            vec![
                (0, PacketHeader::stream(Op::Rst, B, 80, A, 1001)),
                (1, PacketHeader::stream(Op::Rst, A, 1001, B, 80)),
            ]
        );
        assert_eq!((t.count(0), t.count(1), t.opened_by(0, 1)), (1, 1, 1));
    }
}
