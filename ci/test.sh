#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit and integration tests.
# Usage: ci/test.sh        (from anywhere; installs what it needs first)
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's time is printed when it ends ("[time] STEP: N s"), and all of them together
# before the closing line, or when a failing step stops the run.
step_names=()
step_secs=()
step_name=""
step_start=$SECONDS
end_step() {
    [ -n "$step_name" ] || return 0
    local took=$((SECONDS - step_start))
    echo "[time] $step_name: $took s"
    step_names+=("$step_name")
    step_secs+=("$took")
    step_name=""
}
step() {
    end_step
    step_name="$*"
    step_start=$SECONDS
    printf '\n==> %s\n' "$*"
}
print_step_times() {
    end_step
    printf '\nstep times:\n'
    local i
    for i in "${!step_names[@]}"; do
        printf '  %5d s  %s\n' "${step_secs[$i]}" "${step_names[$i]}"
    done
    printf '  %5d s  in all\n' "$SECONDS"
}
trap 'status=$?; [ "$status" -eq 0 ] || print_step_times' EXIT

step "installing dependencies"
ci/install-deps.sh

# The fuzz crates (virtio-spec/fuzz, backend/fuzz) are outside the workspace, as cargo-fuzz
# wants them; they are held to the same formatting and lints.
FUZZ_CRATES=(virtio-spec/fuzz backend/fuzz)

step "cargo fmt --check"
cargo fmt --all -- --check
for c in "${FUZZ_CRATES[@]}"; do
    cargo fmt --manifest-path "$c/Cargo.toml" -- --check
done

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
for c in "${FUZZ_CRATES[@]}"; do
    cargo clippy --manifest-path "$c/Cargo.toml" --target-dir target --all-targets -- -D warnings
done

step "cargo test --workspace"
# The hostile-guest tests send 1,000 malformed chains and take 1,000 random ring-state steps in
# a plain `cargo test`; CI runs the full 10,000 of each (issues 3 and 10).
export SOCKBYPASS_HOSTILE_CHAINS="${SOCKBYPASS_HOSTILE_CHAINS:-10000}"
export SOCKBYPASS_HOSTILE_STEPS="${SOCKBYPASS_HOSTILE_STEPS:-10000}"
cargo test --workspace 2>&1 | tee target/test-output.log

# A fault no guest can cause (a panicking poll thread) is injected with a fail point, which
# only a `--features failpoints` build has.
step "fail-point tests (--features failpoints)"
cargo test -p sockbypassd --features failpoints --test thread_panic 2>&1 | tee -a target/test-output.log

# The device tests ran with the default poll mode (adaptive); run them again in the two others.
# Only the test binaries whose daemons take their mode from SOCKBYPASS_TEST_POLL_MODE: not
# poll_engine (each of its tests sets its own mode) and not e2e_guests (ci/e2e.sh runs it in
# each mode) nor attach_generators (the real daemon with QEMU, which ci/e2e.sh runs).
mode_tests=()
for t in integration/device-tests/tests/*.rs; do
    t=$(basename "$t" .rs)
    case "$t" in
        poll_engine | e2e_guests | attach_generators) ;;
        *) mode_tests+=(--test "$t") ;;
    esac
done
: > target/test-modes.log
for mode in poll event; do
    step "device tests in --poll-mode $mode"
    SOCKBYPASS_TEST_POLL_MODE=$mode cargo test -p sockbypass-device-tests "${mode_tests[@]}" 2>&1 \
        | tee -a target/test-modes.log
done

# deploy/systemd: systemd-analyze verify on the unit (any warning fails), the sysusers entry,
# and the sample configuration started with the real daemon.
step "systemd unit checks (ci/systemd-verify.sh)"
ci/systemd-verify.sh

# Fuzzing (cargo-fuzz, libFuzzer, on the stable toolchain): the switch harness's own tests
# (its seed inputs replayed without fuzzing), then every target for 60 s; a crash, a hang or
# running out of memory fails the run, and ci/fuzz.sh prints the input.
step "fuzz targets (ci/fuzz.sh, ${SOCKBYPASS_FUZZ_SECONDS:-60} s each)"
cargo test --manifest-path backend/fuzz/Cargo.toml --target-dir target 2>&1 \
    | tee -a target/test-output.log
ci/fuzz.sh "${SOCKBYPASS_FUZZ_SECONDS:-60}"

# The perf-regression gate: instructions per forwarded packet (callgrind) against
# ci/perf-baseline.json; more than 5% worse fails the run.
step "perf gate (ci/perf-gate.sh)"
ci/perf-gate.sh

# End-to-end tests boot real guests under QEMU; `cargo test` skipped them (#[ignore]).
# ci/e2e.sh runs them when the guest image can be built; when it cannot, they count as
# skipped with the reason, except with CI=true, where that fails the run.
step "end-to-end tests with real guests (QEMU)"
ci/e2e.sh

# Faults and soak with real guests and the real daemon binary as its own process (issue 10),
# short versions: 10 kill-and-restart cycles, a 60 s soak of 1,000 connections. The full ones
# are `ci/faults.sh` (100 cycles) and `ci/soak.sh` (600 s); their results are in results/. The
# short runs' results go to target/ci-results/. Like the e2e tests, they fail with CI=true when
# the guest image cannot be built.
export SOCKBYPASS_RESULTS_DIR=target/ci-results
step "fault cycles with real guests (ci/faults.sh 10)"
ci/faults.sh 10
step "soak with real guests (ci/soak.sh 60)"
ci/soak.sh 60

print_step_times

# Sum the per-binary results into one closing line. The e2e run re-runs tests the first run
# counted as ignored, so those count once, as passed or failed.
# The per-mode runs count their passes and failures, not their ignored e2e tests again.
# An ignored test that is a helper process of another test (its reason says so) is no test.
awk '/^test result:/ {
         p += $4; f += $6
         if (FILENAME ~ /e2e/) r += $4 + $6
         else if (FILENAME !~ /modes/) i += $8
     }
     / \.\.\. ignored, helper process/ && FILENAME !~ /modes/ { h++ }
     END { printf "\n%d passed, %d failed, %d skipped\n", p, f, i - r - h }' \
    target/test-output.log target/test-modes.log target/e2e-output.log
