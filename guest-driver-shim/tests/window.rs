//! Window mapping, header checks and discovery in a fake sysfs tree.

// Test patterns and sizes: truncation is intended or impossible.
#![allow(clippy::cast_possible_truncation)]

mod support;

use std::fs;
use std::os::unix::fs::FileExt;

use sockbypass_guest::window::{Window, WindowError};
use sockbypass_wire::fastpath::layout::{header, LayoutError, WindowKind};

use support::*;

#[test]
fn a_good_window_opens_with_its_header() {
    let f = window_file(WindowKind::Pair, 3, 4, MIB, 9);
    let w = Window::open_path(f.path()).expect("opens");
    assert_eq!(w.kind(), WindowKind::Pair);
    assert_eq!((w.cid(), w.peer_cid()), (3, 4));
    assert_eq!(w.geometry().size(), MIB);
    assert_eq!(w.geometry().slots(), 7);
    assert_eq!(w.epoch(), 9);
    assert_eq!(w.current_epoch(), 9);
    set_epoch(&raw(f.path()), 10);
    assert_eq!(w.current_epoch(), 10, "the epoch is read again");
    assert_eq!(w.epoch(), 9);
    assert!(!w.host_sleeping());
    put_u32(&raw(f.path()), header::HOST_SLEEPING as u64, 1);
    assert!(w.host_sleeping());
}

#[test]
fn bad_headers_are_named_errors() {
    let f = window_file(WindowKind::Own, 3, 0, MIB, 1);
    f.as_file().write_all_at(b"NOTAWIN!", 0).expect("magic");
    assert!(matches!(
        Window::open_path(f.path()),
        Err(WindowError::Header {
            source: LayoutError::BadMagic(_),
            ..
        })
    ));

    let f = window_file(WindowKind::Own, 3, 0, MIB, 1);
    put_u32(&raw(f.path()), header::VERSION as u64, 2);
    assert!(matches!(
        Window::open_path(f.path()),
        Err(WindowError::Header {
            source: LayoutError::BadVersion(2),
            ..
        })
    ));

    let f = window_file(WindowKind::Own, 3, 0, MIB, 1);
    put_u32(&raw(f.path()), header::KIND as u64, 7);
    assert!(matches!(
        Window::open_path(f.path()),
        Err(WindowError::Header {
            source: LayoutError::BadKind(7),
            ..
        })
    ));

    // The header says 2 MiB, the file has 1 MiB.
    let f = window_file(WindowKind::Own, 3, 0, 2 * MIB, 1);
    f.as_file().set_len(MIB).expect("truncate");
    match Window::open_path(f.path()) {
        Err(WindowError::SizeMismatch {
            header_size,
            mapped,
            ..
        }) => assert_eq!((header_size, mapped), (2 * MIB, MIB)),
        other => panic!("{other:?}"),
    }

    // The header says 1 MiB, the file has 2 MiB.
    let f = window_file(WindowKind::Own, 3, 0, MIB, 1);
    f.as_file().set_len(2 * MIB).expect("grow");
    assert!(matches!(
        Window::open_path(f.path()),
        Err(WindowError::SizeMismatch { .. })
    ));

    // Too small for a header; missing.
    let f = tempfile::NamedTempFile::new().expect("tempfile");
    f.as_file().set_len(100).expect("len");
    assert!(matches!(
        Window::open_path(f.path()),
        Err(WindowError::BadLength { len: 100, .. })
    ));
    assert!(matches!(
        Window::open_path("/nonexistent/window"),
        Err(WindowError::Open { .. })
    ));
}

/// One fake PCI device directory.
fn device(root: &std::path::Path, name: &str, vendor: &str, dev: &str, window: Option<&[u8]>) {
    let d = root.join(name);
    fs::create_dir(&d).expect("mkdir");
    fs::write(d.join("vendor"), format!("{vendor}\n")).expect("vendor");
    fs::write(d.join("device"), format!("{dev}\n")).expect("device");
    fs::write(d.join("enable"), "0\n").expect("enable");
    if let Some(bytes) = window {
        fs::write(d.join("resource2"), bytes).expect("resource2");
    }
}

fn window_bytes(kind: WindowKind, cid: u64, peer: u64) -> Vec<u8> {
    let f = window_file(kind, cid, peer, MIB, 1);
    fs::read(f.path()).expect("read")
}

#[test]
fn discovery_finds_exactly_the_windows_and_enables_them() {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    device(r, "0000:00:01.0", "0x8086", "0x1237", None);
    device(
        r,
        "0000:00:02.0",
        "0x1af4",
        "0x1110",
        Some(&window_bytes(WindowKind::Own, 5, 0)),
    );
    // virtio-net from the same vendor: skipped.
    device(
        r,
        "0000:00:03.0",
        "0x1af4",
        "0x1000",
        Some(&window_bytes(WindowKind::Own, 6, 0)),
    );
    device(
        r,
        "0000:00:04.0",
        "0x1af4",
        "0x1110",
        Some(&window_bytes(WindowKind::Pair, 4, 5)),
    );
    // An ivshmem device that is not a sockbypass window: skipped.
    device(
        r,
        "0000:00:05.0",
        "0x1af4",
        "0x1110",
        Some(&vec![0u8; MIB as usize]),
    );
    // Enabled already: found, and `enable` is not written again.
    device(
        r,
        "0000:00:06.0",
        "0x1af4",
        "0x1110",
        Some(&window_bytes(WindowKind::Pair, 5, 7)),
    );
    fs::write(r.join("0000:00:06.0/enable"), "1\n").expect("enable");

    let ws = Window::discover_in(r).expect("discover");
    let found: Vec<_> = ws
        .iter()
        .map(|w| (w.kind(), w.cid(), w.peer_cid()))
        .collect();
    assert_eq!(
        found,
        vec![
            (WindowKind::Own, 5, 0),
            (WindowKind::Pair, 4, 5),
            (WindowKind::Pair, 5, 7)
        ]
    );
    assert_eq!(
        fs::read_to_string(r.join("0000:00:06.0/enable")).expect("enable"),
        "1\n",
        "not written again"
    );
    for dev in ["0000:00:02.0", "0000:00:04.0", "0000:00:05.0"] {
        assert_eq!(
            fs::read_to_string(r.join(dev).join("enable")).expect("enable"),
            "1"
        );
    }
    for dev in ["0000:00:01.0", "0000:00:03.0"] {
        assert_eq!(
            fs::read_to_string(r.join(dev).join("enable")).expect("enable"),
            "0\n"
        );
    }
    let probed = Window::probe_in(r).expect("probe");
    assert_eq!(probed.len(), 4);
    assert!(matches!(
        probed[2],
        Err(WindowError::Header {
            source: LayoutError::BadMagic(0),
            ..
        })
    ));
}

#[test]
fn discovery_reports_why_no_window_opened() {
    let root = tempfile::tempdir().expect("tempdir");
    assert!(Window::discover_in(root.path()).expect("empty").is_empty());
    device(root.path(), "0000:00:02.0", "0x1af4", "0x1110", None);
    assert!(matches!(
        Window::discover_in(root.path()),
        Err(WindowError::Open { .. })
    ));
    assert!(matches!(
        Window::discover_in(root.path().join("missing")),
        Err(WindowError::Sysfs { .. })
    ));
}
