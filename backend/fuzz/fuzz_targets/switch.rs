//! The switch between two simulated guests, driven by arbitrary packet and ring-operation
//! sequences. See `src/harness.rs` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockbypassd_fuzz::harness;
use sockbypassd_fuzz::scenario::Scenario;

fuzz_target!(|scenario: Scenario| {
    harness::run(&scenario);
});
