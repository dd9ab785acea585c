//! Shared by the integration tests: window files, raw field access (as the other side or a
//! hostile guest would write), and a fake daemon's end of a control channel.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use sockbypass_wire::fastpath::control::{ControlMsg, Op, MSG_LEN};
use sockbypass_wire::fastpath::layout::{header, ring_control, Geometry, WindowHeader, WindowKind};

pub const MIB: u64 = 1 << 20;

/// A window file of `size` bytes with a header written at 0.
pub fn window_file(
    kind: WindowKind,
    cid: u64,
    peer_cid: u64,
    size: u64,
    epoch: u32,
) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("tempfile");
    f.as_file().set_len(size).expect("set_len");
    let h = WindowHeader {
        kind,
        cid,
        peer_cid,
        geometry: Geometry::new(size).expect("geometry"),
        epoch,
    };
    f.as_file().write_all_at(&h.encode(), 0).expect("header");
    f
}

/// Opens `path` for raw writes (another process's view of the same pages).
pub fn raw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open raw")
}

/// Where ring `ring` of slot `slot` has its control, in a window of `size` bytes.
pub fn control_at(size: u64, slot: u32, ring: u8) -> u64 {
    Geometry::new(size)
        .expect("geometry")
        .ring_control(slot, ring)
        .expect("ring")
}

pub fn put_u64(f: &File, off: u64, v: u64) {
    f.write_all_at(&v.to_le_bytes(), off).expect("pwrite");
}

pub fn put_u32(f: &File, off: u64, v: u32) {
    f.write_all_at(&v.to_le_bytes(), off).expect("pwrite");
}

pub fn get_u32(f: &File, off: u64) -> u32 {
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, off).expect("pread");
    u32::from_le_bytes(b)
}

pub fn get_u64(f: &File, off: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off).expect("pread");
    u64::from_le_bytes(b)
}

pub fn set_epoch(f: &File, epoch: u32) {
    put_u32(f, header::EPOCH as u64, epoch);
}

pub fn set_head(f: &File, size: u64, slot: u32, ring: u8, v: u64) {
    put_u64(f, control_at(size, slot, ring) + ring_control::HEAD, v);
}

pub fn set_tail(f: &File, size: u64, slot: u32, ring: u8, v: u64) {
    put_u64(f, control_at(size, slot, ring) + ring_control::TAIL, v);
}

/// The fake daemon's end of a control channel.
pub struct Daemon {
    pub s: UnixStream,
}

impl Daemon {
    /// The next guest message. A `LISTEN` is answered at once with `LISTENING` (code 0), as
    /// the daemon does.
    pub fn recv(&mut self) -> ControlMsg {
        let mut b = [0u8; MSG_LEN];
        self.s.read_exact(&mut b).expect("daemon read");
        let m = ControlMsg::decode(&b).expect("guest message decodes");
        if m.op == Op::Listen {
            self.send_if_there(ControlMsg {
                req: m.req,
                port: m.port,
                ..ControlMsg::new(Op::Listening)
            });
        }
        m
    }

    pub fn expect(&mut self, op: Op) -> ControlMsg {
        let m = self.recv();
        assert_eq!(m.op, op, "{m:?}");
        m
    }

    pub fn send(&mut self, m: ControlMsg) {
        self.s.write_all(&m.encode()).expect("daemon write");
    }

    /// Sends, ignoring a guest that went away (its CLOSE may still be unread here).
    pub fn send_if_there(&mut self, m: ControlMsg) {
        let _ = self.s.write_all(&m.encode());
    }

    /// HELLO → WELCOME.
    pub fn greet(&mut self) {
        let h = self.expect(Op::Hello);
        self.send(ControlMsg {
            req: h.req,
            ..ControlMsg::new(Op::Welcome)
        });
    }
}
