//! Plain `cargo test` runs of the switch harness (no fuzzing, no sanitizer): a run with no steps,
//! and every input of the committed seed corpus, so that a change to the switch or to the
//! harness that breaks them shows in CI's ordinary test step too.

use std::path::Path;

use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use sockbypassd_fuzz::harness;
use sockbypassd_fuzz::scenario::Scenario;

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
