//! Plain `cargo test` runs of the switch harness (no fuzzing, no sanitizer): a run with no steps,
//! and every input of the committed seed corpus, so that a change to the switch or to the
//! harness that breaks them shows in CI's ordinary test step too.

use std::path::Path;

use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use sockbypassd_fuzz::scenario::Scenario;
use sockbypassd_fuzz::{fastpath, harness};

fn scenario(bytes: &[u8]) -> Scenario {
    Scenario::arbitrary_take_rest(Unstructured::new(bytes)).expect("any bytes make a scenario")
}

#[test]
fn a_run_with_no_steps_passes() {
    harness::run(&scenario(&[0u8; 32]));
}

#[test]
fn every_seed_input_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/switch");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("the seed corpus is committed") {
        let path = entry.expect("directory entry").path();
        let bytes = std::fs::read(&path).expect("seed file");
        eprintln!("seed {}", path.display());
        harness::run(&scenario(&bytes));
        n += 1;
    }
    assert!(n > 0, "no seed inputs in {}", dir.display());
}

#[test]
fn a_fastpath_run_with_no_steps_frees_every_slot() {
    fastpath::run(&fastpath::Input { steps: Vec::new() });
}

#[test]
fn fastpath_runs_of_arbitrary_bytes_pass() {
    use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
    for seed in 0u64..64 {
        let bytes: Vec<u8> = (0..4096u64)
            .map(|i| {
                (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xA076_1D64_78BD_642F))
                    .to_le_bytes()[3]
            })
            .collect();
        let input = fastpath::Input::arbitrary_take_rest(Unstructured::new(&bytes))
            .expect("any bytes make an input");
        fastpath::run(&input);
    }
}
