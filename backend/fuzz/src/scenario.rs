//! What one fuzz input describes: the two guests' settings and a sequence of steps. Each enum
//! leans towards values that matter (the guests' own CIDs, a few shared ports, lengths around
//! the limits) and still allows any raw value.

use libfuzzer_sys::arbitrary::{self, Arbitrary};

/// One of the two guests.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Guest A (CID 3): the stream's sender.
    A,
    /// Guest B (CID 4): the stream's receiver.
    B,
}

impl Side {
    /// Index in the switch (and in the harness's arrays).
    pub fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    /// The other guest.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Settings fixed for the whole run.
#[derive(Arbitrary, Debug, Clone)]
pub struct Setup {
    /// VIRTIO_RING_F_EVENT_IDX on every queue.
    pub event_idx: bool,
    /// TX queue size `16 << (n % 3)` (16, 32, 64; four descriptors go to raw ring operations).
    pub tx_size: u8,
    /// RX queue size `8 << (n % 3)`.
    pub rx_size: u8,
    /// RX buffer payload size `16 + n % 4081`.
    pub rx_buffer: u16,
    /// RX buffers as a header descriptor and a payload descriptor (older Linux).
    pub rx_split: bool,
    /// B's receive buffer for the stream, `64 + n` bytes.
    pub buf_alloc: u16,
    /// How A lays out the stream's packets.
    pub tx_layout: StreamLayout,
    /// Largest RW payload A sends, `16 + n % 65521`.
    pub max_payload: u16,
    /// Stream bytes, `n % 4096`.
    pub stream_len: u16,
    /// `max_conns` of each VM, `1 + n % 16`.
    pub max_conns: u8,
}

/// How the well-behaved stream's packets are cut into TX descriptors (always well-formed).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum StreamLayout {
    /// One descriptor.
    Single,
    /// Header alone, then `1 + n % 4` payload descriptors.
    Split(u8),
    /// Like `Split`, through an indirect table.
    Indirect(u8),
}

impl From<StreamLayout> for Layout {
    fn from(l: StreamLayout) -> Layout {
        match l {
            StreamLayout::Single => Layout::Single,
            StreamLayout::Split(n) => Layout::Split(n),
            StreamLayout::Indirect(n) => Layout::Indirect(n),
        }
    }
}

/// How a packet is cut into TX descriptors.
#[derive(Arbitrary, Debug, Clone)]
pub enum Layout {
    /// One descriptor.
    Single,
    /// Header alone, then `1 + n % 4` payload descriptors.
    Split(u8),
    /// Like `Split`, through an indirect table.
    Indirect(u8),
    /// Descriptors of these sizes (any, zero too), direct or indirect.
    Custom(Vec<u16>, bool),
}

/// A CID in a header.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Cid {
    /// The sender's own CID.
    Own,
    /// The other guest's CID.
    Peer,
    /// The host (2).
    Host,
    /// A CID no VM has (5 and up).
    Unknown(u8),
    /// Anything.
    Raw(u64),
}

/// A port in a header.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Port {
    /// One of a few ports both guests use (1 to 8), so that packets meet connections.
    Shared(u8),
    /// The port B listens on (80).
    Listen,
    /// Anything.
    Raw(u32),
}

/// A packet a guest sends outside any stream of its driver.
#[derive(Arbitrary, Debug, Clone)]
pub struct Packet {
    /// `src_cid`.
    pub src: Cid,
    /// `dst_cid`.
    pub dst: Cid,
    /// `src_port`.
    pub src_port: Port,
    /// `dst_port`.
    pub dst_port: Port,
    /// Op, `n % 9` (0 and 8 are invalid).
    pub op: u8,
    /// Type: stream unless `Some(raw)`.
    pub type_: Option<u16>,
    /// `len`: the payload's length unless `Some(raw)`.
    pub len: Option<u32>,
    /// `flags` (SHUTDOWN's RCV/SEND and anything else).
    pub flags: u32,
    /// `buf_alloc`.
    pub buf_alloc: u32,
    /// `fwd_cnt`.
    pub fwd_cnt: u32,
    /// Payload bytes actually in the chain (up to 64 KiB).
    pub payload: u16,
    /// Descriptor layout.
    pub layout: Layout,
}

/// A guest address a hostile descriptor names. Never one of the driver's own buffers: a guest
/// that points its chains at its own stream's buffers sends that stream's data twice on purpose.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Addr {
    /// Into the guest's scratch area (bytes the input writes).
    Scratch(u16),
    /// Into the guest's own TX rings (descriptor table, available and used rings).
    TxRing(u16),
    /// Indirect table `k` of the guest's table area.
    Table(u8),
    /// Past the end of guest RAM.
    Outside(u32),
    /// Near the top of the address space (`u64::MAX - n`).
    Top(u8),
}

/// A buffer length.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Len {
    /// Up to 255.
    Small(u8),
    /// Up to 64 KiB.
    Medium(u16),
    /// Any.
    Raw(u32),
}

impl Len {
    /// The length.
    pub fn get(self) -> u32 {
        match self {
            Len::Small(n) => u32::from(n),
            Len::Medium(n) => u32::from(n),
            Len::Raw(n) => n,
        }
    }
}

/// A buffer of a hostile chain.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Buf {
    /// Where.
    pub addr: Addr,
    /// How long.
    pub len: Len,
    /// Write-only (wrong in a TX chain).
    pub write: bool,
}

/// Where a raw descriptor's `next` points: a reserved descriptor, or past the table.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Next {
    /// Reserved descriptor `n` (loops when it leads back).
    Reserved(u8),
    /// `size + n`: no descriptor.
    Past(u16),
}

/// Raw operations on a guest's rings.
#[derive(Arbitrary, Debug, Clone)]
pub enum RingOp {
    /// Writes reserved TX descriptor `slot` (any flags, `next` among the reserved ones).
    Desc {
        /// Reserved descriptor index (modulo their number).
        slot: u8,
        /// Buffer address.
        addr: Addr,
        /// Buffer length.
        len: Len,
        /// Flags, raw.
        flags: u16,
        /// Next.
        next: Next,
    },
    /// Writes entry `entry` of indirect table `table` (any flags, any next).
    TableEntry {
        /// Table (modulo the number of tables).
        table: u8,
        /// Entry (modulo the table length).
        entry: u8,
        /// Buffer address (`Table` is taken as scratch: no table points at a table).
        addr: Addr,
        /// Buffer length.
        len: Len,
        /// Flags, raw.
        flags: u16,
        /// Next index, raw.
        next: u16,
    },
    /// Publishes reserved descriptor `slot` as a head, in flight already or not.
    PublishReserved(u8),
    /// Publishes a head past the descriptor table.
    PublishPast(u16),
    /// Writes bytes into the scratch area.
    Scratch(u16, Vec<u8>),
    /// Writes the TX available ring's `flags`.
    AvailFlags(u16),
    /// Writes the TX `used_event`.
    UsedEvent(u16),
    /// Moves the TX available index more than a queue size past what was published (by
    /// `size + 1 + n % 1024`): the device must see a broken queue.
    JumpAvail(u16),
    /// Moves the TX available index back by `1 + n`: chains already published may never be
    /// taken, and an index behind the device's is a broken queue.
    RewindAvail(u8),
    /// Publishes a head past the RX descriptor table (the guest loses track of RX buffers).
    RxPublishPast(u16),
}

/// A call into the switch.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum SwitchOp {
    /// `process_tx`.
    ProcessTx(Side),
    /// `process_tx_polled`.
    ProcessTxPolled(Side),
    /// `fill_rx`.
    FillRx(Side),
    /// `service`.
    Service(Side),
    /// `fill_rx_then_resume_tx`.
    ServiceRx(Side),
    /// `fill_events`.
    FillEvents(Side),
    /// `sweep`, `n` seconds in the future.
    Sweep(u8),
}

/// One step of a run.
#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    /// A sends up to `n` more stream bytes (as credit and ring allow).
    StreamSend(u16),
    /// B reads up to `n` stream bytes.
    StreamRecv(u16),
    /// A guest sends a packet of its own making.
    Packet(Side, Packet),
    /// A guest sends raw bytes as one chain (a truncated header...).
    Bytes(Side, Vec<u8>, Layout),
    /// A guest publishes a chain of hostile buffers.
    Chain(Side, Vec<Buf>, bool),
    /// A guest writes its rings directly.
    Ring(Side, RingOp),
    /// The switch does some work.
    Switch(SwitchOp),
    /// A guest's driver looks at its used rings, refills RX, sends what waits.
    Poll(Side),
    /// A guest's frontend stops its rings and starts them again (detach, then bind).
    Reattach(Side),
}

/// A whole run.
#[derive(Arbitrary, Debug, Clone)]
pub struct Scenario {
    /// Settings.
    pub setup: Setup,
    /// Steps, at most [`crate::harness::MAX_STEPS`] of them.
    pub steps: Vec<Step>,
}
