//! The one-line `# HELP` text of every exported family, by the counter or gauge name it comes
//! from. A name missing here gets [`UNDOCUMENTED`], which the tests refuse.

/// The help of a name this file does not know yet.
pub const UNDOCUMENTED: &str = "undocumented (see the daemon's counters)";

/// `sockbypass_vm_attached`.
pub const ATTACHED: &str = "1 while a VMM has the VM's rings bound, else 0";

/// `sockbypass_vm_drops_total`.
pub const DROPS: &str =
    "Packets or connections of the VM dropped, by reason (the daemon's drop_* counter names)";

/// `sockbypass_poll_batches_total`.
pub const BATCHES: &str =
    "Useful loops of the poll thread, by how many chains they moved (size: 1, 2-3 ... 128-up)";

/// Help of the per-VM counter `name` (one of `VmCountersSnapshot::pairs`, drops aside).
pub fn vm_counter(name: &str) -> &'static str {
    match name {
        "tx_packets" => "TX chains taken from the guest",
        "tx_bytes" => "Payload bytes taken from the guest (valid RW packets)",
        "rx_packets" => "Packets written into the guest's RX queue",
        "rx_bytes" => "Payload bytes written into the guest's RX queue",
        "rst_sent" => "RSTs the device sent to the guest",
        "fwd_packets" => "Packets of the guest fully delivered to a peer VM",
        "fwd_bytes" => "Payload bytes of the guest fully delivered to a peer VM",
        "rx_split" => "Extra RX packets because a peer's packet was larger than the RX buffer",
        "rx_wait_ns" => "Nanoseconds data for the guest waited with no RX buffer free",
        "host_conns_opened" => "Connections opened with host programs (either side started them)",
        "expired_half_open" => {
            "VM-to-VM connections the guest opened that got no RESPONSE in time (both reset)"
        }
        "rx_stall_resets" => "Connections reset because the guest posted no RX buffer in time",
        "tx_walks_cut" => "TX walks that stopped at their budget with chains left",
        "queue_broken" => "Times the guest broke a virtqueue (the VM was detached until reset)",
        "rx_bad_chain" => "Unusable RX chains the guest posted (returned with used length 0)",
        "events_sent" => "Event-queue buffers used",
        "rx_buffer_stalls" => "Times the device had something to deliver and no free RX buffer",
        "kicks_received" => "Queue notifications (kicks) the guest sent",
        "interrupts_sent" => "Used-ring notifications (interrupts) the device sent the guest",
        _ => UNDOCUMENTED,
    }
}

/// Help of the per-VM gauge `name` (one of `VmGauges::pairs`).
pub fn vm_gauge(name: &str) -> &'static str {
    match name {
        "peer_conns" => "VM-to-VM connections the VM takes part in",
        "held_chains" => "The VM's TX chains held for peers with no RX buffer free",
        "queued_replies" => "Replies (RSTs) waiting for the VM's RX buffers",
        "inbound_queued" => "Packets from peers waiting for the VM's RX buffers",
        "host_conns" => "Connections with host programs",
        "host_buffer_granted" => "Buffer bytes granted to the host connections",
        "host_buffered_bytes" => "Guest bytes held for host programs that have not read them",
        _ => UNDOCUMENTED,
    }
}

/// Help of the fast-path counter `name` (one of `FastPathCountersSnapshot::pairs`).
pub fn fastpath_counter(name: &str) -> &'static str {
    match name {
        "fastpath_conns" => "Fast-path connections the VM took part in that were set up",
        "fastpath_refused" => "Fast-path CONNECTs of the VM refused",
        "fastpath_tx_bytes" => "Bytes the daemon copied out of the VM's fast-path TX rings",
        "fastpath_rx_bytes" => "Bytes the daemon copied into the VM's fast-path RX rings",
        "fastpath_wakes" => "Fast-path WAKEs sent to the VM",
        "fastpath_kicks" => "Fast-path KICKs the VM sent",
        "fastpath_bad_ring" => "Fast-path connections reset because the VM broke a ring",
        "fastpath_aborts" => "ABORTs of direct-pair connections the VM took part in",
        "fastpath_control_errors" => "Fast-path control connections closed for a protocol error",
        "fastpath_control_conns" => "Fast-path control connections the VM opened",
        _ => UNDOCUMENTED,
    }
}

/// Help of the poll-thread counter `name` (one of `PollCountersSnapshot::pairs`, batch
/// buckets aside).
pub fn poll_counter(name: &str) -> &'static str {
    match name {
        "loops" => "Loops of the poll thread over the VMs it owns",
        "useful_loops" => "Loops that moved at least one chain",
        "packets" => "Chains moved (TX chains taken plus RX packets written by kicked fills)",
        "sleeps" => "Times the poll thread slept (adaptive mode)",
        "wakeups" => "Times a sleeping poll thread was woken by a kick",
        _ => UNDOCUMENTED,
    }
}
