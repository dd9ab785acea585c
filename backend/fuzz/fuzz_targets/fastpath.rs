//! The fast-path service driven by arbitrary control messages and window writes. See
//! `src/fastpath.rs` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockbypassd_fuzz::fastpath::{run, Input};

fuzz_target!(|input: Input| {
    run(&input);
});
