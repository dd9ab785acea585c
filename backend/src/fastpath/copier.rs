//! The host-copied placement's data path (SPEC.md §13.4, §13.5): for each open host-copied
//! connection, bytes go from each side's TX ring straight into the other side's RX ring, one
//! copy, window to window; end of stream follows the bytes; a side that sleeps on a ring the
//! copy moved gets one `WAKE`.
//!
//! What bounds a pass: one look at each direction of each connection, at most a ring's worth
//! of bytes each. Every index read from a window is checked against the daemon's private copy
//! of the other index (§13.3): a broken ring resets its connection and nothing else.

use std::sync::atomic::{fence, Ordering};

use sockbypass_wire::fastpath::control::{ControlMsg, Op};
use sockbypass_wire::fastpath::layout::RING_SIZE;
use sockbypass_wire::fastpath::wake_gate;

use super::conn::End;
use super::ring_access::RingAccess;
use super::service::Service;
use super::window::Window;

/// What one direction did.
#[derive(Debug, Default)]
struct Moved {
    bytes: u64,
    /// The stream ended into the receiver's RX ring.
    ended: bool,
    /// The receiver sleeps on its RX ring: wake it.
    wake_receiver: bool,
    /// The sender sleeps for space in its TX ring: wake it.
    wake_sender: bool,
}

/// Which VM broke a ring.
struct Broken(usize);

/// Copies `n` bytes from `src` at stream position `from` to `dst` at `to`: the two rings wrap
/// at different places, so in at most three pieces.
fn copy_bytes(src: &RingAccess<'_>, from: u64, dst: &RingAccess<'_>, to: u64, n: u64) {
    let mask = RING_SIZE - 1;
    let mut done = 0;
    while done < n {
        let (s, d) = (
            (from.wrapping_add(done)) & mask,
            (to.wrapping_add(done)) & mask,
        );
        let chunk = (n - done).min(RING_SIZE - s).min(RING_SIZE - d);
        if src.copy_into(s, dst, d, chunk).is_none() {
            return; // cannot happen: every range is inside a data area
        }
        done += chunk;
    }
}

/// Moves `n` bytes (checked: at most what `s`'s TX ring holds and `r`'s RX ring has room
/// for) and publishes both indices. Never inlined: the perf gate counts the instructions of
/// the passes that move bytes here (passes that find nothing are not counted; how many there
/// are depends on timing).
#[inline(never)]
fn transfer(src: &RingAccess<'_>, dst: &RingAccess<'_>, s: &mut End, r: &mut End, n: u64) {
    copy_bytes(src, s.tx.tail(), dst, r.rx.head(), n);
    r.rx.advance(n);
    dst.set_head(r.rx.head());
    s.tx.advance(n);
    src.set_tail(s.tx.tail());
}

/// One direction: `s`'s TX ring into `r`'s RX ring.
fn copy_direction(windows: &[Window], s: &mut End, r: &mut End) -> Result<Moved, Broken> {
    let mut out = Moved::default();
    if s.tx_ended {
        return Ok(out);
    }
    let (Some(src), Some(dst)) = (
        windows[s.window].ring(s.slot, 0),
        windows[r.window].ring(r.slot, 1),
    ) else {
        return Ok(out);
    };
    // `closed` before `head` (both acquire): the producer stores `closed` after its last
    // `head`, so a `closed` seen here comes with the final `head`. Loaded the other way round,
    // a `head` from before the last write and a `closed` from after it would end the stream
    // with the last bytes still in the ring.
    let closing = s.close_requested || src.closed();
    let avail = s.tx.available(src.head()).map_err(|_| Broken(s.vm))?;
    let n = if r.let_go() {
        0
    } else {
        avail.min(r.rx.space(dst.tail()).map_err(|_| Broken(r.vm))?)
    };
    if n > 0 {
        transfer(&src, &dst, s, r, n);
        out.bytes = n;
    }
    if n == avail && !r.let_go() && closing {
        dst.set_closed();
        s.tx_ended = true;
        out.ended = true;
    }
    if n > 0 || out.ended {
        // Paired with the guest's fence between its sleeping flag and its index (§13.3).
        fence(Ordering::SeqCst);
        // At most one `WAKE` per sleep, and only for something new: bytes past the receiver's
        // `tail` or the end of the stream; space past the sender's `head` (§13.5).
        let ended = out.ended;
        out.wake_receiver = r.rx_woken.should_wake(
            || wake_gate::for_consumer(dst.tail(), r.rx.head(), ended),
            || dst.consumer_sleeping(),
        );
        out.wake_sender = n > 0
            && s.tx_woken.should_wake(
                || wake_gate::for_producer(src.head(), s.tx.tail(), RING_SIZE),
                || src.producer_sleeping(),
            );
    }
    Ok(out)
}

impl Service {
    /// One pass over every host-copied connection; whether anything moved.
    pub fn copy_pass(&mut self) -> bool {
        let mut moved = false;
        let mut broken = Vec::new();
        let mut wakes = Vec::new();
        let mut closed = Vec::new();
        for &id in &self.copied {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            let [a, b] = &mut c.ends;
            for forward in [true, false] {
                let (s, r) = if forward {
                    (&mut *a, &mut *b)
                } else {
                    (&mut *b, &mut *a)
                };
                let m = match copy_direction(&self.windows, s, r) {
                    Ok(m) => m,
                    Err(Broken(vm)) => {
                        broken.push((id, vm));
                        break;
                    }
                };
                if m.bytes > 0 {
                    moved = true;
                    let (sc, rc) = (&self.vms[s.vm].counters, &self.vms[r.vm].counters);
                    sc.fastpath_tx_bytes.fetch_add(m.bytes, Ordering::Relaxed);
                    rc.fastpath_rx_bytes.fetch_add(m.bytes, Ordering::Relaxed);
                }
                if m.ended {
                    moved = true;
                    // A half-close (only `closed` set) is told by the ring alone; `CLOSED` says
                    // the sender is done with the connection (it sent `CLOSE`), so writes to it
                    // are pointless.
                    if s.close_requested && !r.closed_sent {
                        r.closed_sent = true;
                        closed.extend(r.ctrl.map(|t| (t, id)));
                    }
                }
                if m.wake_receiver {
                    wakes.extend(r.ctrl.map(|t| (t, r.vm, id)));
                }
                if m.wake_sender {
                    wakes.extend(s.ctrl.map(|t| (t, s.vm, id)));
                }
            }
        }
        for (token, vm, id) in wakes {
            self.wake(token, vm, id);
        }
        for (token, id) in closed {
            let mut m = ControlMsg::new(Op::Closed);
            m.conn = id;
            self.send(token, &m);
        }
        for (id, vm) in broken {
            moved = true;
            self.broken_ring(id, vm);
        }
        moved
    }
}
