//! The microbenchmark's error type.

use std::time::Duration;

use sockbypass_frontend::{FrontendError, MemoryError, QueueError};

/// Errors of [`crate::microbench`].
#[derive(Debug, thiserror::Error)]
pub enum MicrobenchError {
    /// Setting up or touching guest memory failed.
    #[error("guest memory error")]
    Memory(#[from] MemoryError),
    /// A vhost-user step failed.
    #[error("vhost-user frontend error")]
    Frontend(#[from] FrontendError),
    /// A queue operation failed.
    #[error("virtqueue error")]
    Queue(#[from] QueueError),
    /// Starting the in-process daemon failed.
    #[error("starting the daemon failed")]
    Daemon(#[from] sockbypassd::daemon::DaemonError),
    /// The daemon's configuration was refused.
    #[error("daemon configuration refused")]
    Config(#[from] sockbypassd::config::ConfigError),
    /// Creating the temporary socket directory failed.
    #[error("creating a temporary directory failed")]
    TempDir(#[source] std::io::Error),
    /// A reference measurement thread could not be started or panicked.
    #[error("a measurement thread failed: {0}")]
    Thread(String),
    /// The device used a chain head this driver never posted.
    #[error("the device returned descriptor head {0}, which was never posted")]
    BadHead(u32),
    /// The device wrote less than a header into an RX buffer.
    #[error("the device reported {0} bytes for an RX buffer, less than a header")]
    ShortPacket(u32),
    /// Sending with every TX descriptor in flight.
    #[error("no free TX descriptor")]
    TxFull,
    /// A payload larger than the buffers.
    #[error("payload of {0} bytes is larger than a TX buffer")]
    Oversized(u32),
    /// The peer answered something other than what the benchmark expects.
    #[error("unexpected packet from the switch: {0}")]
    Protocol(String),
    /// A packet arrived out of order, or with the wrong bytes.
    #[error("data check failed: {0}")]
    Corrupt(String),
    /// Nothing moved within the time limit.
    #[error("no progress for {0:?} while {1}")]
    Stalled(Duration, &'static str),
}
