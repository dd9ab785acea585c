//! The VM-to-VM fast path allocates nothing per packet (SPEC.md §4.2): a global allocator counts
//! every allocation made on the daemon's threads while two VMs stream to each other, and the
//! count must stay far below the number of packets.
//!
//! This test binary has only this test, because the allocator is process-wide. Threads of the
//! test itself (the guest drivers, which allocate per packet on purpose) are exempt.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::peers::{assert_same_bytes, connect_peers};
use common::transfer::{run, Job};
use common::{random_bytes, Harness, VmSpec};

/// Counts allocations of threads that are not exempt.
struct CountingAllocator;

static DAEMON_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static EXEMPT: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    // `try_with`: during thread teardown the flag may be gone; count then.
    if !EXEMPT.try_with(Cell::get).unwrap_or(false) {
        DAEMON_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only an
// atomic and a const-initialised thread-local, neither of which allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn exempt_this_thread() {
    EXEMPT.with(|e| e.set(true));
}

const T: Duration = Duration::from_secs(60);

#[test]
fn streaming_between_vms_allocates_nothing_per_packet() {
    exempt_this_thread();
    let h = Harness::start(&[VmSpec::new("a", 3), VmSpec::new("b", 4)]);
    let (mut a, mut b) = (h.vm("a"), h.vm("b"));
    let (ia, ib) = connect_peers(&mut a, &mut b, 5000, T);

    // One round to warm up (queues, tables and buffers reach their working size), then the
    // measured round.
    let mut sent = 0;
    let mut received = 0;
    let mut allocations = 0;
    for (round, size) in [(0u64, 1 << 20), (1, 4 << 20)] {
        let data = random_bytes(size, round);
        // Writes of up to 8 KiB: thousands of packets, some split over two RX buffers.
        let mut ja = [Job::with_max_write(ia, data.clone(), 0, round, 8192)];
        let mut jb = [Job::new(ib, Vec::new(), size, round + 10)];
        let before_alloc = DAEMON_ALLOCATIONS.load(Ordering::Relaxed);
        let before = (h.counters("a").fwd_packets, h.counters("b").rx_packets);
        std::thread::scope(|s| {
            s.spawn(|| {
                exempt_this_thread();
                run(a.driver_mut(), &mut ja, T, "a");
            });
            s.spawn(|| {
                exempt_this_thread();
                run(b.driver_mut(), &mut jb, T, "b");
            });
        });
        assert_same_bytes(&jb[0].got, &data, "a → b");
        let after = (h.counters("a").fwd_packets, h.counters("b").rx_packets);
        sent = after.0 - before.0;
        received = after.1 - before.1;
        allocations = DAEMON_ALLOCATIONS.load(Ordering::Relaxed) - before_alloc;
    }
    println!(
        "measured round: {sent} packets forwarded, {received} RX packets written, \
         {allocations} allocations on daemon threads"
    );
    assert!(sent > 500, "enough packets to measure: {sent}");
    // Some slack for work that is not per packet (a queue growing once, a log line); one
    // allocation per packet on any path would be far over it.
    assert!(
        allocations * 20 < sent,
        "{allocations} allocations on daemon threads for {sent} forwarded packets"
    );
}
