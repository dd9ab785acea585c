//! How new control connections reach the fast-path thread: the host endpoint (on whatever
//! thread serves the guest's packet) hands the daemon's end of the socket pair to
//! [`Intake::take`], which queues it and wakes the fast-path thread through an eventfd.

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::host::ControlSink;

/// Control connections waiting for the fast-path thread at most; past that a connect is
/// refused (the guest gets an RST). Bounds the queue when the thread is slow or stopped.
pub const MAX_WAITING: usize = 256;

/// A control connection handed over, not yet taken by the fast-path thread.
#[derive(Debug)]
pub struct NewControl {
    /// The VM (switch index).
    pub vm: usize,
    /// The guest's port.
    pub guest_port: u32,
    /// The daemon's end.
    pub stream: UnixStream,
}

/// The sending side, given to the host endpoints.
#[derive(Debug)]
pub struct Intake {
    tx: Mutex<(Sender<NewControl>, usize)>,
    wake: EventFd,
}

/// The receiving side, owned by the fast-path thread.
#[derive(Debug)]
pub struct IntakeQueue {
    rx: Receiver<NewControl>,
}

impl Intake {
    /// A new intake and its queue.
    pub fn new() -> io::Result<(Intake, IntakeQueue)> {
        let (tx, rx) = mpsc::channel();
        let intake = Intake {
            tx: Mutex::new((tx, 0)),
            wake: EventFd::new(EFD_NONBLOCK)?,
        };
        Ok((intake, IntakeQueue { rx }))
    }

    /// The eventfd the fast-path thread sleeps on.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Called by the fast-path thread once it drained the queue: `taken` connections left it.
    pub fn taken(&self, taken: usize) {
        if let Ok(mut g) = self.tx.lock() {
            g.1 = g.1.saturating_sub(taken);
        }
        let _ = self.wake.read();
    }
}

impl ControlSink for Intake {
    fn take(&self, vm: usize, guest_port: u32, stream: UnixStream) -> io::Result<()> {
        let mut g = self
            .tx
            .lock()
            .map_err(|_| io::Error::other("fast-path intake poisoned"))?;
        if g.1 >= MAX_WAITING {
            return Err(io::Error::other("fast-path thread has too many waiting"));
        }
        g.0.send(NewControl {
            vm,
            guest_port,
            stream,
        })
        .map_err(|_| io::Error::other("fast-path thread stopped"))?;
        g.1 += 1;
        drop(g);
        self.wake.write(1)
    }
}

impl IntakeQueue {
    /// Every connection queued so far.
    pub fn drain(&self) -> Vec<NewControl> {
        self.rx.try_iter().collect()
    }
}
