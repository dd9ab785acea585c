//! The properties every target asserts on the wire crate's segment operations, against the
//! byte model of [`crate::model`]:
//! - a range outside the list is refused and touches nothing;
//! - an operation succeeds exactly when every byte it names is mapped guest memory;
//! - a success reads or writes exactly the named bytes, in order;
//! - a failure writes nothing outside the named bytes;
//! - reads never change guest memory.

use sockbypass_wire::{copy_between, Segment, SegmentError, Segments};

use crate::layout::Mem;
use crate::model::{addr_set, all_mapped, byte_addrs, Snapshot};

fn segs_of(s: &Segments) -> Vec<Segment> {
    s.iter().copied().collect()
}

/// The named bytes of `s` at `[offset, offset + len)`, or `None` when the range is outside it.
fn named(s: &Segments, offset: u32, len: u32) -> Option<Vec<Option<u64>>> {
    byte_addrs(&segs_of(s), s.len(), offset, len)
}

/// Asserts that a failed write changed only bytes in `allowed`.
fn only_named_changed(before: &Snapshot, after: &Snapshot, allowed: &[Option<u64>], what: &str) {
    let allowed = addr_set(allowed);
    for a in before.changed(after) {
        assert!(
            allowed.contains(&a),
            "{what} wrote {a:#x}, outside the buffers it names"
        );
    }
}

/// [`Segments::read_bytes`] of `len` bytes at `offset`.
pub fn read_bytes(mem: &Mem, s: &Segments, offset: u32, len: u32) {
    let before = Snapshot::of(mem);
    let mut buf = vec![0u8; len as usize];
    let r = s.read_bytes(mem, offset, &mut buf);
    assert_eq!(Snapshot::of(mem), before, "read_bytes changed guest memory");
    let Some(addrs) = named(s, offset, len) else {
        assert!(
            matches!(r, Err(SegmentError::OutOfBounds { .. })),
            "read_bytes outside the list: {r:?}"
        );
        return;
    };
    if !all_mapped(&addrs, &before) {
        assert!(r.is_err(), "read_bytes of unmapped bytes succeeded");
        return;
    }
    assert!(r.is_ok(), "read_bytes of mapped bytes failed: {r:?}");
    for (i, a) in addrs.iter().enumerate() {
        let want = a.and_then(|a| before.get(a));
        assert_eq!(Some(buf[i]), want, "read_bytes byte {i} (guest {a:?})");
    }
}

/// [`Segments::write_bytes`] of `data` at `offset`.
pub fn write_bytes(mem: &Mem, s: &Segments, offset: u32, data: &[u8]) {
    let before = Snapshot::of(mem);
    let len = u32::try_from(data.len()).expect("fuzz inputs are small");
    let r = s.write_bytes(mem, offset, data);
    let after = Snapshot::of(mem);
    let Some(addrs) = named(s, offset, len) else {
        assert!(
            matches!(r, Err(SegmentError::OutOfBounds { .. })),
            "write_bytes outside the list: {r:?}"
        );
        assert_eq!(after, before, "a refused write_bytes changed guest memory");
        return;
    };
    check_write_result(&before, &after, &addrs, data, r.map(|_| ()), "write_bytes");
}

/// Checks the outcome of writing `data` to the bytes `addrs`, from `before` to `after`.
fn check_write_result(
    before: &Snapshot,
    after: &Snapshot,
    addrs: &[Option<u64>],
    data: &[u8],
    r: Result<(), SegmentError>,
    what: &str,
) {
    if !all_mapped(addrs, before) {
        assert!(r.is_err(), "{what} to unmapped bytes succeeded");
        only_named_changed(before, after, addrs, what);
        return;
    }
    assert!(r.is_ok(), "{what} to mapped bytes failed: {r:?}");
    let mut want = before.clone();
    for (a, v) in addrs.iter().zip(data) {
        want.set(a.expect("checked mapped"), *v);
    }
    assert!(
        want == *after,
        "{what} left guest memory different from the model at {:x?}",
        want.changed(after).iter().take(8).collect::<Vec<_>>()
    );
}

/// [`copy_between`] of `len` bytes from `src` at `src_off` (in `src_mem`) to `dst` at
/// `dst_off` (in `dst_mem`, a different memory).
pub fn copy(
    src_mem: &Mem,
    src: &Segments,
    src_off: u32,
    dst_mem: &Mem,
    dst: &Segments,
    dst_off: u32,
    len: u32,
) {
    let src_before = Snapshot::of(src_mem);
    let dst_before = Snapshot::of(dst_mem);
    let r = copy_between(src_mem, src, src_off, dst_mem, dst, dst_off, len);
    assert_eq!(
        Snapshot::of(src_mem),
        src_before,
        "copy_between changed its source"
    );
    let dst_after = Snapshot::of(dst_mem);
    let (Some(saddrs), Some(daddrs)) = (named(src, src_off, len), named(dst, dst_off, len)) else {
        assert!(
            matches!(r, Err(SegmentError::OutOfBounds { .. })),
            "copy_between outside a list: {r:?}"
        );
        assert_eq!(
            dst_after, dst_before,
            "a refused copy_between changed guest memory"
        );
        return;
    };
    if !all_mapped(&saddrs, &src_before) {
        assert!(r.is_err(), "copy_between from unmapped bytes succeeded");
        only_named_changed(&dst_before, &dst_after, &daddrs, "copy_between");
        return;
    }
    let data: Vec<u8> = saddrs
        .iter()
        .map(|a| {
            src_before
                .get(a.expect("checked mapped"))
                .expect("checked mapped")
        })
        .collect();
    check_write_result(&dst_before, &dst_after, &daddrs, &data, r, "copy_between");
}

/// [`Segments::window`] and [`Segments::narrow`]: the same bytes as the list's range. A list
/// with a buffer past the top of the address space (which no parsed chain has) may be refused.
pub fn window(s: &Segments, offset: u32, len: u32) {
    let want = named(s, offset, len);
    let w = s.window(offset, len);
    let mut n = s.clone();
    let nr = n.narrow(offset, len);
    let Some(want) = want else {
        assert!(w.is_err() && nr.is_err(), "window/narrow outside the list");
        return;
    };
    let wraps = s
        .iter()
        .any(|g| g.addr.0.checked_add(u64::from(g.len)).is_none());
    match (w, nr) {
        (Ok(w), Ok(())) => {
            assert_eq!(w.len(), len, "window length");
            assert_eq!(n.len(), len, "narrow length");
            assert_eq!(named(&w, 0, len), Some(want.clone()), "window bytes");
            assert_eq!(named(&n, 0, len), Some(want), "narrow bytes");
            assert!(w.iter().all(|g| g.len > 0), "window keeps an empty buffer");
            assert_eq!(segs_of(&w), segs_of(&n), "narrow differs from window");
        }
        (w, nr) => assert!(
            wraps,
            "window/narrow refused a range inside the list: {:?} / {nr:?}",
            w.err()
        ),
    }
}

/// [`Segments::write_to`] of at most `len` bytes into a host buffer of `room` bytes.
pub fn write_to(mem: &Mem, s: &Segments, offset: u32, len: u32, room: usize) {
    let before = Snapshot::of(mem);
    let mut out = vec![0u8; room];
    let r = s.write_to(mem, offset, len, &mut out.as_mut_slice());
    assert_eq!(Snapshot::of(mem), before, "write_to changed guest memory");
    let Some(addrs) = named(s, offset, len) else {
        assert!(r.is_err(), "write_to outside the list succeeded");
        return;
    };
    let Ok(n) = r else {
        assert!(
            !all_mapped(&addrs, &before),
            "write_to of mapped bytes failed: {r:?}"
        );
        return;
    };
    let n = n as usize;
    assert!(
        n <= room && n <= len as usize,
        "write_to moved {n} of {len} into {room}"
    );
    if all_mapped(&addrs, &before) {
        assert_eq!(n, room.min(len as usize), "write_to stopped early");
    }
    for i in 0..n {
        let want = addrs[i].and_then(|a| before.get(a));
        assert_eq!(Some(out[i]), want, "write_to byte {i}");
    }
}

/// [`Segments::read_from`] of at most `len` bytes from a host buffer holding `data`.
pub fn read_from(mem: &Mem, s: &Segments, offset: u32, len: u32, data: &[u8]) {
    let before = Snapshot::of(mem);
    let r = s.read_from(mem, offset, len, &mut &data[..]);
    let after = Snapshot::of(mem);
    let Some(addrs) = named(s, offset, len) else {
        assert!(r.is_err(), "read_from outside the list succeeded");
        assert_eq!(after, before, "a refused read_from changed guest memory");
        return;
    };
    let Ok(n) = r else {
        assert!(
            !all_mapped(&addrs, &before),
            "read_from into mapped bytes failed: {r:?}"
        );
        only_named_changed(&before, &after, &addrs, "read_from");
        return;
    };
    let n = n as usize;
    assert!(n <= data.len() && n <= len as usize, "read_from moved {n}");
    if all_mapped(&addrs, &before) {
        assert_eq!(n, data.len().min(len as usize), "read_from stopped early");
    }
    let mut want = before.clone();
    for (a, v) in addrs.iter().zip(data).take(n) {
        match a {
            Some(a) if before.mapped(*a) => want.set(*a, *v),
            _ => panic!("read_from reported byte at {a:?}, which is not mapped"),
        }
    }
    assert!(
        want == after,
        "read_from left guest memory different from the model"
    );
}
