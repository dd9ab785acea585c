//! When a side that moved a ring's index wakes the other side (SPEC.md §13.5): only if the
//! other side's sleeping flag is set, only if there is something new for it (bytes past a
//! consumer's `tail`, the end of the stream, space past a producer's `head`), and at most once
//! while it stays asleep at the same index. Used by the guest library (`KICK` in a direct
//! pair) and by the daemon's copier (`WAKE`).
//!
//! Why each condition (every one of them lost a wake-up when missing):
//! - *At most once per index* keeps a guest that leaves its flag set from drawing a flood.
//! - *Something new*: a wake-up sent to a side that already took everything wakes it for
//!   nothing; it sleeps again **at the same index**, and the real wake-up for the next write
//!   would be refused as a second one. (A ping-pong hung this way: the reader took the ping
//!   while the writer was still looking, answered, and slept for the next ping.)
//! - *Index before flag*: a side sets its flag after its last index store and clears it before
//!   the next one, so a flag seen set after index `i` (acquire) belongs to a sleep at `i` or
//!   later. Read the other way round, the sleeper can wake, move on and sleep again between the
//!   two loads, and the gate remembers the new index for the old sleep.

/// At most one wake-up per sleep of the other side.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WakeGate {
    /// The other side's index when it was last woken (none: woken since, or seen awake).
    woken_at: Option<u64>,
}

impl WakeGate {
    /// Whether to wake the other side now. `waiting_at` loads its index (acquire) and gives it
    /// if something new waits for it there, `None` if not; `sleeping` loads its flag (after
    /// the caller's fence between publishing and looking, §13.3). They are called in that
    /// order, `sleeping` only when something waits.
    pub fn should_wake(
        &mut self,
        waiting_at: impl FnOnce() -> Option<u64>,
        sleeping: impl FnOnce() -> bool,
    ) -> bool {
        let Some(at) = waiting_at() else {
            // It took everything already: whatever it sleeps for is not here yet.
            return false;
        };
        if !sleeping() {
            self.woken_at = None;
            return false;
        }
        if self.woken_at == Some(at) {
            return false;
        }
        self.woken_at = Some(at);
        true
    }
}

/// What waits for a consumer at `tail` (for [`WakeGate::should_wake`]): its `tail` if the
/// producer's `head` is past it or the stream is `closed`, else `None`.
pub fn for_consumer(tail: u64, head: u64, closed: bool) -> Option<u64> {
    (tail != head || closed).then_some(tail)
}

/// What waits for a producer at `head`: its `head` if there is space, that is fewer than
/// `ring_size` bytes in flight after the consumer's `tail`, else `None`. (A `head` that lies,
/// behind `tail` or too far ahead, counts as no space: no wake-up; the ring's own checks
/// find it.)
pub fn for_producer(head: u64, tail: u64, ring_size: u64) -> Option<u64> {
    (head.wrapping_sub(tail) < ring_size).then_some(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// The waker's look at a consumer at `tail`, the waker's own `head`, its flag `sleeping`.
    fn look(g: &mut WakeGate, tail: u64, head: u64, sleeping: bool) -> bool {
        g.should_wake(|| for_consumer(tail, head, false), || sleeping)
    }

    #[test]
    fn something_waits_for_bytes_the_end_or_space() {
        assert_eq!(for_consumer(5, 5, false), None, "took everything");
        assert_eq!(for_consumer(5, 6, false), Some(5));
        assert_eq!(for_consumer(5, 5, true), Some(5), "the end of the stream");
        assert_eq!(for_producer(164, 100, 64), None, "full");
        assert_eq!(for_producer(163, 100, 64), Some(163));
        assert_eq!(for_producer(u64::MAX, u64::MAX - 1, 64), Some(u64::MAX));
        assert_eq!(for_producer(3, 7, 64), None, "a head behind the tail");
    }

    #[test]
    fn one_wake_per_sleep_until_progress_or_seen_awake() {
        let mut g = WakeGate::default();
        assert!(!look(&mut g, 0, 1, false), "awake");
        assert!(look(&mut g, 0, 1, true));
        assert!(!look(&mut g, 0, 2, true), "no progress: no second wake");
        assert!(look(&mut g, 2, 5, true), "the sleeper moved its index");
        assert!(!look(&mut g, 2, 5, false));
        assert!(look(&mut g, 2, 5, true), "seen awake since");
    }

    /// The ping-pong that hung: the writer publishes ping 958 (head 959); before it looks, the
    /// reader takes it (tail 959), answers, and sleeps for ping 959. A wake-up now would be
    /// for nothing, and must not count: the write of ping 959 has to wake the sleep at 959.
    #[test]
    fn a_sleeper_that_took_everything_is_not_woken_and_the_next_write_wakes_it() {
        let mut g = WakeGate::default();
        assert!(!look(&mut g, 959, 959, true), "nothing new for it");
        assert!(
            look(&mut g, 959, 960, true),
            "ping 959 wakes the sleep at 959"
        );
    }

    /// The sleeper is asleep at 7 when the waker loads its index; before the flag is loaded it
    /// wakes (not because of this waker), reads to 8 and sleeps again at 8. The next write
    /// must still wake the sleep at 8.
    #[test]
    fn a_sleeper_that_moves_between_the_two_loads_is_woken_again() {
        let tail = Cell::new(7u64);
        let mut g = WakeGate::default();
        let woke = g.should_wake(
            || Some(tail.get()),
            || {
                tail.set(8);
                true
            },
        );
        assert!(woke, "asleep when looked at");
        assert!(
            look(&mut g, 8, 9, true),
            "the sleep at 8 gets its own wake-up"
        );
    }

    /// What the gate loaded, in order, when the index is `at` and the flag `flag`.
    fn loads(g: &mut WakeGate, at: Option<u64>, flag: bool) -> Vec<&'static str> {
        let order = RefCell::new(Vec::new());
        g.should_wake(
            || {
                order.borrow_mut().push("index");
                at
            },
            || {
                order.borrow_mut().push("flag");
                flag
            },
        );
        order.into_inner()
    }

    #[test]
    fn the_index_is_read_before_the_flag_and_the_flag_only_when_something_waits() {
        let mut g = WakeGate::default();
        assert_eq!(loads(&mut g, Some(3), false), ["index", "flag"]);
        assert_eq!(loads(&mut g, None, true), ["index"]);
    }
}
