//! The C ABI (`include/sockbypass.h`): opaque handles, `ssize_t` returns, `errno` on failure
//! (`EAGAIN`, `ECONNRESET`, `ECONNREFUSED`, `EPROTO`, `EPIPE`, `EBADF`, `EINVAL`, or the
//! kernel's). Every pointer is checked for NULL; no panic crosses the boundary (each entry
//! point runs under `catch_unwind`, a panic gives `EIO`).

use std::ffi::{c_int, c_void};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};

use socket2::Socket;

use crate::connection::Connection;
use crate::error::StreamError;
use crate::fastpath::FastPath;

/// `sb_handle`: a [`FastPath`] over vsock.
#[derive(Debug)]
pub struct SbHandle {
    fp: FastPath<Socket>,
}

/// `sb_stream`: a [`Connection`].
#[derive(Debug)]
pub struct SbStream {
    conn: Connection,
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno, always valid to write.
    unsafe { *libc::__errno_location() = e };
}

/// Runs `f`; a panic gives `fail` with `EIO`.
fn guard<R>(fail: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            set_errno(libc::EIO);
            fail
        }
    }
}

/// The `errno` of an I/O error from a [`Connection`].
fn io_errno(e: &io::Error) -> c_int {
    if let Some(s) = e.get_ref().and_then(|i| i.downcast_ref::<StreamError>()) {
        return s.errno();
    }
    e.raw_os_error().unwrap_or(match e.kind() {
        io::ErrorKind::WouldBlock => libc::EAGAIN,
        _ => libc::EIO,
    })
}

fn fail_int(errno: c_int) -> c_int {
    set_errno(errno);
    -1
}

fn fail_ssize(errno: c_int) -> isize {
    set_errno(errno);
    -1
}

/// Opens the fast path: maps the windows, connects and greets the daemon. NULL with `errno`
/// on failure (`ENODEV`: no window; `EACCES`: no permission for `resource2`; ...).
#[no_mangle]
pub extern "C" fn sb_open() -> *mut SbHandle {
    guard(std::ptr::null_mut(), || match FastPath::open() {
        Ok(fp) => Box::into_raw(Box::new(SbHandle { fp })),
        Err(e) => {
            set_errno(e.errno());
            std::ptr::null_mut()
        }
    })
}

/// Closes the handle. Streams made from it keep working until closed (the control channel
/// stays open while any of them lives).
///
/// # Safety
/// `h` is NULL or a handle from `sb_open` not closed yet.
#[no_mangle]
pub unsafe extern "C" fn sb_close_handle(h: *mut SbHandle) {
    if h.is_null() {
        return;
    }
    // SAFETY: the caller passes a handle from `sb_open` (Box::into_raw) once.
    let b = unsafe { Box::from_raw(h) };
    guard((), move || drop(b));
}

/// Connects to `cid`:`port`: fast path, or plain vsock where the daemon says so. NULL with
/// `errno` (`ECONNREFUSED`, `EPROTO`, ...).
///
/// # Safety
/// `h` is NULL or a live handle from `sb_open`.
#[no_mangle]
pub unsafe extern "C" fn sb_connect(h: *const SbHandle, cid: u32, port: u32) -> *mut SbStream {
    // SAFETY: NULL or a live handle (caller's contract).
    let Some(h) = (unsafe { h.as_ref() }) else {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    };
    guard(std::ptr::null_mut(), || match h.fp.connect(cid, port) {
        Ok(conn) => Box::into_raw(Box::new(SbStream { conn })),
        Err(e) => {
            set_errno(e.errno());
            std::ptr::null_mut()
        }
    })
}

/// Accepts fast-path connections on `port`. 0, or -1 with `errno`.
///
/// # Safety
/// `h` is NULL or a live handle from `sb_open`.
#[no_mangle]
pub unsafe extern "C" fn sb_listen(h: *const SbHandle, port: u32) -> c_int {
    // SAFETY: NULL or a live handle (caller's contract).
    let Some(h) = (unsafe { h.as_ref() }) else {
        return fail_int(libc::EINVAL);
    };
    guard(-1, || match h.fp.listen(port) {
        Ok(()) => 0,
        Err(e) => fail_int(e.errno()),
    })
}

/// Stops accepting on `port`. 0, or -1 with `errno`.
///
/// # Safety
/// `h` is NULL or a live handle from `sb_open`.
#[no_mangle]
pub unsafe extern "C" fn sb_unlisten(h: *const SbHandle, port: u32) -> c_int {
    // SAFETY: NULL or a live handle (caller's contract).
    let Some(h) = (unsafe { h.as_ref() }) else {
        return fail_int(libc::EINVAL);
    };
    guard(-1, || match h.fp.unlisten(port) {
        Ok(()) => 0,
        Err(e) => fail_int(crate::error::control_errno(&e)),
    })
}

/// The next incoming fast-path connection, accepted (blocking). NULL with `errno`.
///
/// # Safety
/// `h` is NULL or a live handle from `sb_open`.
#[no_mangle]
pub unsafe extern "C" fn sb_accept(h: *const SbHandle) -> *mut SbStream {
    // SAFETY: NULL or a live handle (caller's contract).
    let Some(h) = (unsafe { h.as_ref() }) else {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    };
    guard(std::ptr::null_mut(), || match h.fp.accept() {
        Ok(s) => Box::into_raw(Box::new(SbStream {
            conn: Connection::Fast(Box::new(s)),
        })),
        Err(e) => {
            set_errno(e.errno());
            std::ptr::null_mut()
        }
    })
}

/// The control socket: readable when a daemon message is pending. -1 with `EINVAL` for NULL.
///
/// # Safety
/// `h` is NULL or a live handle from `sb_open`.
#[no_mangle]
pub unsafe extern "C" fn sb_control_fd(h: *const SbHandle) -> c_int {
    // SAFETY: NULL or a live handle (caller's contract).
    match unsafe { h.as_ref() } {
        Some(h) => std::os::fd::AsRawFd::as_raw_fd(&h.fp),
        None => fail_int(libc::EINVAL),
    }
}

/// Reads up to `len` bytes: the count, 0 at end of stream, -1 with `errno`.
///
/// # Safety
/// `s` is NULL or a live stream; `buf` is NULL only if `len` is 0, else valid for `len`
/// bytes of writing.
#[no_mangle]
pub unsafe extern "C" fn sb_read(s: *mut SbStream, buf: *mut c_void, len: usize) -> isize {
    // SAFETY: NULL or a live stream used by one thread at a time (caller's contract).
    let Some(s) = (unsafe { s.as_mut() }) else {
        return fail_ssize(libc::EINVAL);
    };
    if buf.is_null() && len > 0 {
        return fail_ssize(libc::EFAULT);
    }
    let len = len.min(isize::MAX as usize);
    let slice: &mut [u8] = if len == 0 {
        &mut []
    } else {
        // SAFETY: `buf` is non-null and valid for `len` bytes (caller's contract).
        unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) }
    };
    guard(-1, || match s.conn.read(slice) {
        Ok(n) => isize::try_from(n).unwrap_or(isize::MAX),
        Err(e) => fail_ssize(io_errno(&e)),
    })
}

/// Writes up to `len` bytes: the count, -1 with `errno`.
///
/// # Safety
/// `s` is NULL or a live stream; `buf` is NULL only if `len` is 0, else valid for `len`
/// bytes of reading.
#[no_mangle]
pub unsafe extern "C" fn sb_write(s: *mut SbStream, buf: *const c_void, len: usize) -> isize {
    // SAFETY: NULL or a live stream used by one thread at a time (caller's contract).
    let Some(s) = (unsafe { s.as_mut() }) else {
        return fail_ssize(libc::EINVAL);
    };
    if buf.is_null() && len > 0 {
        return fail_ssize(libc::EFAULT);
    }
    let len = len.min(isize::MAX as usize);
    let slice: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: `buf` is non-null and valid for `len` bytes (caller's contract).
        unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }
    };
    guard(-1, || match s.conn.write(slice) {
        Ok(n) => isize::try_from(n).unwrap_or(isize::MAX),
        Err(e) => fail_ssize(io_errno(&e)),
    })
}

/// Non-blocking (`on` ≠ 0) or blocking mode. 0, or -1 with `errno`.
///
/// # Safety
/// `s` is NULL or a live stream.
#[no_mangle]
pub unsafe extern "C" fn sb_set_nonblocking(s: *mut SbStream, on: c_int) -> c_int {
    // SAFETY: NULL or a live stream (caller's contract).
    let Some(s) = (unsafe { s.as_mut() }) else {
        return fail_int(libc::EINVAL);
    };
    guard(-1, || match s.conn.set_nonblocking(on != 0) {
        Ok(()) => 0,
        Err(e) => fail_int(io_errno(&e)),
    })
}

/// Shuts down `SHUT_RD`, `SHUT_WR` or `SHUT_RDWR`. 0, or -1 with `errno`.
///
/// # Safety
/// `s` is NULL or a live stream.
#[no_mangle]
pub unsafe extern "C" fn sb_shutdown(s: *mut SbStream, how: c_int) -> c_int {
    // SAFETY: NULL or a live stream (caller's contract).
    let Some(s) = (unsafe { s.as_mut() }) else {
        return fail_int(libc::EINVAL);
    };
    let how = match how {
        libc::SHUT_RD => Shutdown::Read,
        libc::SHUT_WR => Shutdown::Write,
        libc::SHUT_RDWR => Shutdown::Both,
        _ => return fail_int(libc::EINVAL),
    };
    guard(-1, || match s.conn.shutdown(how) {
        Ok(()) => 0,
        Err(e) => fail_int(io_errno(&e)),
    })
}

/// Whether the stream goes through the fast path (1) or plain vsock (0); -1 for NULL.
///
/// # Safety
/// `s` is NULL or a live stream.
#[no_mangle]
pub unsafe extern "C" fn sb_is_fast(s: *const SbStream) -> c_int {
    // SAFETY: NULL or a live stream (caller's contract).
    match unsafe { s.as_ref() } {
        Some(s) => c_int::from(matches!(s.conn, Connection::Fast(_))),
        None => fail_int(libc::EINVAL),
    }
}

/// Closes the stream (sends `CLOSE` for a fast one) and frees it. 0, or -1 with `errno`
/// (the stream is freed either way).
///
/// # Safety
/// `s` is NULL or a live stream, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn sb_close(s: *mut SbStream) -> c_int {
    if s.is_null() {
        return fail_int(libc::EINVAL);
    }
    // SAFETY: a stream from sb_connect/sb_accept (Box::into_raw), closed once.
    let b = unsafe { Box::from_raw(s) };
    guard(-1, move || {
        let mut b = b;
        match &mut b.conn {
            Connection::Fast(f) => match f.close() {
                Ok(()) => 0,
                Err(e) => fail_int(e.errno()),
            },
            Connection::Vsock(_) => 0,
        }
    })
}
