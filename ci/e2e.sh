#!/usr/bin/env bash
# End-to-end tests with real guests under QEMU (integration/device-tests/tests/e2e_guests.rs),
# once per poll mode, then attach_generators.rs (QEMU from `sockbypass qemu-args`) once. A
# plain `cargo test` skips them (#[ignore]); this builds the guest image and runs them with
# --ignored.
#
# When they cannot run (the guest image cannot be built, QEMU is missing): with CI=true that is
# a failure (exit 1, and the tests themselves fail); elsewhere they are reported as skipped,
# with the reason.
#
# Usage: ci/e2e.sh   (from anywhere; ci/test.sh calls it)
# Logs, which ci/test.sh sums: target/e2e-output.log (the default mode's run) and
# target/test-modes.log (the other modes' runs are appended, like the device tests' per-mode
# re-runs).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

mkdir -p target
: > target/e2e-output.log
if ! image_log=$(bash integration/guest/build-image.sh 2>&1); then
    printf '%s\n' "$image_log" | tail -5
    if [ "${CI:-}" = true ]; then
        echo "FAILED: end-to-end tests: the guest image could not be built (see above)," \
            "and with CI=true a test that cannot run is a failure"
        exit 1
    fi
    echo "SKIPPED: end-to-end tests: the guest image could not be built (see above)"
    exit 0
fi
for mode in adaptive poll event; do
    step "end-to-end tests, --poll-mode $mode"
    log=target/test-modes.log
    [ "$mode" = adaptive ] && log=target/e2e-output.log
    SOCKBYPASS_TEST_POLL_MODE=$mode \
        cargo test -p sockbypass-device-tests --test e2e_guests -- --ignored --test-threads=1 2>&1 \
        | tee -a "$log"
done
# The attach generators against the real programs: the real sockbypassd and `sockbypass
# qemu-args`, and QEMU started with exactly what it printed (attach_generators.rs). Once: the
# daemon runs with its default poll mode.
step "attach generators: QEMU from sockbypass qemu-args"
cargo test -p sockbypass-device-tests --test attach_generators -- --ignored --test-threads=1 2>&1 \
    | tee -a target/e2e-output.log
