//! The VM-to-VM fast path allocates nothing per packet (SPEC.md §4.2): a global allocator counts
//! every allocation made on the daemon's threads while two VMs stream to each other, and after a
//! warm-up round the count over the measured round must be exactly zero.
//!
//! This test binary has only this test, because the allocator is process-wide. Threads of the
//! test itself (the guest drivers, which allocate per packet on purpose) are exempt. A thread
//! can mark itself exempt only once its closure runs, and the standard library allocates on
//! every new thread before that (its stack-overflow handler registers the thread in a map), so
//! the driver threads of the measured round are started, and mark themselves, before the count
//! is read.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::Duration;

use harness::peers::{assert_same_bytes, connect_peers};
use harness::transfer::{run, Job};
use harness::{random_bytes, Harness, VmSpec};

/// Counts allocations of threads that are not exempt.
struct CountingAllocator;

static DAEMON_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// While set, the first counted allocation records where it came from.
static TRACE_FIRST: AtomicBool = AtomicBool::new(false);
/// The backtrace of the first allocation counted while [`TRACE_FIRST`] was set.
static FIRST_TRACE: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    static EXEMPT: Cell<bool> = const { Cell::new(false) };
    /// This thread is recording a backtrace: its own allocations are the recorder's.
    static TRACING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    // `try_with`: during thread teardown the flags may be gone; count then.
    if EXEMPT.try_with(Cell::get).unwrap_or(false) || TRACING.try_with(Cell::get).unwrap_or(false) {
        return;
    }
    DAEMON_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    if TRACE_FIRST.swap(false, Ordering::Relaxed) && TRACING.try_with(|t| t.set(true)).is_ok() {
        let trace = format!(
            "thread {:?}\n{}",
            std::thread::current().name(),
            std::backtrace::Backtrace::force_capture()
        );
        if let Ok(mut first) = FIRST_TRACE.lock() {
            *first = Some(trace);
        }
        TRACING.with(|t| t.set(false));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// atomics and const-initialised thread-locals, neither of which allocates; recording the first
// backtrace allocates, but with this thread's `TRACING` set, so those allocations come back here
// and return before counting or recording again.
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
        // Writes of up to 8 KiB: over a thousand packets, some split over two RX buffers.
        let mut ja = [Job::with_max_write(ia, data.clone(), 0, round, 8192)];
        let mut jb = [Job::new(ib, Vec::new(), size, round + 10)];
        let before = (h.counters("a").fwd_packets, h.counters("b").rx_packets);
        // Both driver threads are running and exempt (`ready`) before the count is read, and
        // start (`go`) only after.
        let (ready, go) = (Barrier::new(3), Barrier::new(3));
        let before_alloc = std::thread::scope(|s| {
            s.spawn(|| {
                exempt_this_thread();
                ready.wait();
                go.wait();
                run(a.driver_mut(), &mut ja, T, "a");
            });
            s.spawn(|| {
                exempt_this_thread();
                ready.wait();
                go.wait();
                run(b.driver_mut(), &mut jb, T, "b");
            });
            ready.wait();
            let before_alloc = DAEMON_ALLOCATIONS.load(Ordering::Relaxed);
            TRACE_FIRST.store(round == 1, Ordering::Relaxed);
            go.wait();
            before_alloc
        });
        TRACE_FIRST.store(false, Ordering::Relaxed);
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
    // None at all: the warm-up round brought queues and tables to their working size, and
    // nothing the daemon does to forward this stream allocates after that.
    let first = FIRST_TRACE.lock().map(|f| f.clone()).unwrap_or_default();
    assert_eq!(
        allocations,
        0,
        "allocations on daemon threads for {sent} forwarded packets; the first one: {}",
        first.as_deref().unwrap_or("(not recorded)")
    );
}
