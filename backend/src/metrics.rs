//! Per-VM counters. Tests read them; `sockbypass stats` and `/metrics` export them.
//!
//! Every drop has its own counter, so that nothing a guest sends disappears without a trace.

use std::sync::atomic::{AtomicU64, Ordering};

use sockbypass_wire::ChainError;

macro_rules! counters {
    ($(#[$m:meta])* $name:ident, $snap:ident { $($(#[$fm:meta])* $field:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default)]
        pub struct $name { $($(#[$fm])* pub $field: AtomicU64,)* }

        /// A plain copy of the counters at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct $snap { $($(#[$fm])* pub $field: u64,)* }

        impl $name {
            /// Reads every counter.
            pub fn snapshot(&self) -> $snap {
                $snap { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }

        impl $snap {
            /// Every counter as (name, value), in declaration order: what `sockbypass stats`
            /// and `/metrics` export.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field),)*]
            }
        }
    };
}

counters!(
    /// Counters of one VM's device. All are monotonic.
    VmCounters, VmCountersSnapshot {
        /// TX chains taken from the guest.
        tx_packets,
        /// Payload bytes taken from the guest (valid RW packets).
        tx_bytes,
        /// Packets written into the guest's RX queue.
        rx_packets,
        /// Payload bytes written into the guest's RX queue.
        rx_bytes,
        /// RSTs the device sent to this guest.
        rst_sent,
        /// Packets of this guest fully delivered to a peer VM.
        fwd_packets,
        /// Payload bytes of this guest fully delivered to a peer VM.
        fwd_bytes,
        /// Extra RX packets this guest got because a peer's packet was larger than its RX
        /// buffer (a packet split in three counts two).
        rx_split,
        /// Nanoseconds data for this guest waited with no RX buffer free.
        rx_wait_ns,
        /// Connections opened with the host (either side started them).
        host_conns_opened,
        /// Guest packets dropped: chain shorter than the header.
        drop_short_chain,
        /// Guest packets dropped: a descriptor with the wrong read/write flag.
        drop_flag_mismatch,
        /// Guest packets dropped: a descriptor outside guest memory.
        drop_outside_memory,
        /// Guest packets dropped: `len` over the maximum payload.
        drop_len_over_max,
        /// Guest packets dropped: `len` larger than the chain.
        drop_len_over_chain,
        /// Guest packets dropped: unknown or INVALID op.
        drop_unknown_op,
        /// Guest packets dropped: socket type other than stream.
        drop_unknown_type,
        /// Guest packets dropped: payload on an op other than RW.
        drop_payload_on_control,
        /// Guest packets dropped: empty chain, too many descriptors, or other bad chain.
        drop_bad_chain,
        /// Guest packets dropped: `src_cid` is not the guest's own CID.
        drop_spoofed_src,
        /// Guest packets dropped: RW beyond the credit the device granted.
        drop_credit_violation,
        /// Guest packets that named no known connection (answered with RST where allowed).
        drop_no_connection,
        /// REQUESTs to a peer VM that policy refused (no shared group, port not listed).
        drop_policy,
        /// REQUESTs to a peer VM refused because either VM is at `max_conns`.
        drop_conn_limit,
        /// VM-to-VM connections this guest opened that got no RESPONSE within the half-open
        /// timeout: freed, and both sides reset.
        expired_half_open,
        /// Host connections refused (guest- or host-started) because the VM's host buffer
        /// budget (`host_buffer_bytes`) had less than one connection's smallest grant left.
        drop_host_budget,
        /// Packets to a CID that is no attached VM (answered with RST).
        drop_peer_unreachable,
        /// Packets that contradict their VM-to-VM connection's state (a second REQUEST, a late
        /// RESPONSE, RW after SHUTDOWN); the connection is reset.
        drop_protocol,
        /// RSTs for this guest dropped because its reply queue was at its hard limit.
        drop_reply_overflow,
        /// TX chains refused because the guest published their head again while the device
        /// still held it (no used entry: the first copy gets the one entry).
        drop_head_in_flight,
        /// Connections reset because this guest posted no RX buffer while their packets waited
        /// for it longer than the RX-stall timeout.
        rx_stall_resets,
        /// TX walks that stopped at their budget (the queue size) with chains left, handing
        /// the rest to a later walk: a guest refilling its ring as fast as it drains.
        tx_walks_cut,
        /// Times the guest broke a virtqueue (an available index jumped past the queue size, a
        /// ring outside its memory): the VM was detached until its driver reset the device.
        queue_broken,
        /// RX chains the guest posted that were unusable (returned with used length 0).
        rx_bad_chain,
        /// Event-queue buffers used.
        events_sent,
        /// Times the device found no free RX buffer while it had something to deliver.
        rx_buffer_stalls,
        /// Kicks (queue notifications) the guest sent.
        kicks_received,
        /// Interrupts (used-ring notifications) the device sent the guest.
        interrupts_sent,
    }
);

counters!(
    /// Fast-path counters of one VM (SPEC.md §13.10). All are monotonic.
    FastPathCounters, FastPathCountersSnapshot {
        /// Fast-path connections this VM took part in that were set up (either side).
        fastpath_conns,
        /// Fast-path `CONNECT`s of this VM refused (any reason).
        fastpath_refused,
        /// Bytes the daemon copied out of this VM's TX rings.
        fastpath_tx_bytes,
        /// Bytes the daemon copied into this VM's RX rings.
        fastpath_rx_bytes,
        /// `WAKE`s sent to this VM.
        fastpath_wakes,
        /// `KICK`s this VM sent.
        fastpath_kicks,
        /// Connections reset because this VM broke a ring (an index out of range).
        fastpath_bad_ring,
        /// `ABORT`s of direct-pair connections this VM took part in.
        fastpath_aborts,
        /// Control connections closed for a protocol error.
        fastpath_control_errors,
        /// Control connections this VM opened.
        fastpath_control_conns,
    }
);

impl VmCounters {
    /// Counts one malformed chain under the reason `err` names.
    pub fn count_malformed(&self, err: &ChainError) {
        let c = match err {
            ChainError::TooShort { .. } => &self.drop_short_chain,
            ChainError::WriteOnlyInTx { .. } | ChainError::ReadOnlyInRx { .. } => {
                &self.drop_flag_mismatch
            }
            ChainError::OutsideMemory { .. } => &self.drop_outside_memory,
            ChainError::LenOverMax { .. } => &self.drop_len_over_max,
            ChainError::LenOverChain { .. } => &self.drop_len_over_chain,
            ChainError::UnknownOp { .. } => &self.drop_unknown_op,
            ChainError::UnknownType { .. } => &self.drop_unknown_type,
            ChainError::PayloadOnControl { .. } => &self.drop_payload_on_control,
            ChainError::Empty | ChainError::Segments(_) => &self.drop_bad_chain,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl VmCountersSnapshot {
    /// All malformed-input drops together.
    pub fn malformed_total(&self) -> u64 {
        self.drop_short_chain
            + self.drop_flag_mismatch
            + self.drop_outside_memory
            + self.drop_len_over_max
            + self.drop_len_over_chain
            + self.drop_unknown_op
            + self.drop_unknown_type
            + self.drop_payload_on_control
            + self.drop_bad_chain
    }
}
