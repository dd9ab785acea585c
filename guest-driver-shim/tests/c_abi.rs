//! The C ABI from C: builds the staticlib (cargo, same target directory), compiles
//! `tests/c/abi.c` against `include/sockbypass.h` and it, and runs it. Skipped (with a
//! message) where there is no C compiler.

use std::path::{Path, PathBuf};
use std::process::Command;

use sockbypass_guest::FastPath;

/// The target directory this test binary was built in, and the profile's directory name.
fn target_dir() -> Option<(PathBuf, String)> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let profile = profile_dir.file_name()?.to_str()?.to_owned();
    Some((profile_dir.parent()?.to_path_buf(), profile))
}

#[test]
fn the_c_abi_links_checks_null_and_sets_errno() {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("no cc: C ABI test skipped");
        return;
    }
    let expected = match FastPath::open() {
        Ok(_) => {
            eprintln!("a real fast path is here: the no-window check does not apply, skipped");
            return;
        }
        Err(e) => e.errno(),
    };
    let Some((target, profile)) = target_dir() else {
        panic!(
            "cannot find the target directory from {:?}",
            std::env::current_exe()
        );
    };
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut build = Command::new(env!("CARGO"));
    build
        .args([
            "build",
            "-q",
            "-p",
            "sockbypass-guest",
            "--lib",
            "--target-dir",
        ])
        .arg(&target);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            eprintln!("profile directory {other}: C ABI test skipped");
            return;
        }
    }
    let status = build.current_dir(crate_dir).status().expect("cargo build");
    assert!(status.success(), "cargo build of the staticlib failed");
    let lib = target.join(&profile).join("libsockbypass_guest.a");
    assert!(lib.exists(), "{lib:?}");

    let out_dir = tempfile::tempdir().expect("tempdir");
    let exe = out_dir.path().join("abi");
    let status = Command::new("cc")
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("tests/c/abi.c"))
        .arg(&lib)
        .args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ])
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("cc");
    assert!(status.success(), "cc failed");
    let out = Command::new(&exe)
        .arg(expected.to_string())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "abi.c: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}
