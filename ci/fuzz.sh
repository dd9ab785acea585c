#!/usr/bin/env bash
# Runs every fuzz target (cargo-fuzz, libFuzzer) for SECONDS each and fails on any crash,
# timeout or out-of-memory, printing the input that caused it.
#
# Usage: ci/fuzz.sh [SECONDS] [TARGET...]    (SECONDS defaults to 60; TARGET: header, chains,
#                                             switch, fastpath; all of them by default)
#
# Only the stable toolchain is needed: cargo-fuzz passes `-Z` flags (the address sanitizer,
# coverage instrumentation), and RUSTC_BOOTSTRAP=1 makes stable rustc accept them. The address
# sanitizer's runtime ships with stable's rust-std. SOCKBYPASS_FUZZ_SANITIZER picks another
# sanitizer (`none` runs about four times as many inputs per second and catches only panics).
#
# The committed seed corpus of a target (<crate>/fuzz/corpus/<target>) is read, never written:
# what a run discovers goes to target/fuzz/corpus/<target>, crashes to
# target/fuzz/artifacts/<target>. A timeout is a single input running longer than
# SOCKBYPASS_FUZZ_TIMEOUT seconds (default 10): a hang, which counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
[ "$#" -gt 0 ] && shift
case "$seconds" in
    '' | *[!0-9]*) echo "usage: ci/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

# target name -> fuzz directory
declare -A FUZZ_DIR=(
    [header]=virtio-spec/fuzz
    [chains]=virtio-spec/fuzz
    [switch]=backend/fuzz
    [fastpath]=backend/fuzz
)
ORDER=(header chains switch fastpath)
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=("${ORDER[@]}")
fi
for t in "${targets[@]}"; do
    [ -n "${FUZZ_DIR[$t]:-}" ] || { echo "unknown fuzz target: $t (known: ${ORDER[*]})" >&2; exit 2; }
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    ci/install-deps.sh
fi

export RUSTC_BOOTSTRAP=1
sanitizer="${SOCKBYPASS_FUZZ_SANITIZER:-address}"
timeout_s="${SOCKBYPASS_FUZZ_TIMEOUT:-10}"
# One target directory for every fuzz crate, so that their common dependencies build once.
target_dir="$PWD/target/fuzz"
work="$PWD/target/fuzz"
failed=()

for t in "${targets[@]}"; do
    dir="${FUZZ_DIR[$t]}"
    seeds="$dir/corpus/$t"
    corpus="$work/corpus/$t"
    artifacts="$work/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    rm -f "$artifacts"/*

    start=$(date +%s)
    cargo fuzz build --fuzz-dir "$dir" --target-dir "$target_dir" -s "$sanitizer" "$t"
    built=$(date +%s)
    echo "[fuzz] $t: built in $((built - start)) s; fuzzing for $seconds s"

    log="$work/$t.log"
    status=0
    dirs=("$corpus")
    [ -d "$seeds" ] && dirs+=("$seeds")
    cargo fuzz run --fuzz-dir "$dir" --target-dir "$target_dir" -s "$sanitizer" "$t" \
        "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout="$timeout_s" -len_control=0 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1 || status=$?

    # The last status line says how far the run got; the final stats how many inputs ran.
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "[fuzz] $t: ${runs:-?} inputs in $(($(date +%s) - built)) s; last: ${last:-none}"

    crashes=$(find "$artifacts" -type f | sort)
    if [ "$status" -ne 0 ] || [ -n "$crashes" ]; then
        failed+=("$t")
        echo "[fuzz] $t: FAILED (exit $status). Log: $log"
        grep -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY' -A3 "$log" | head -40 || true
        for f in $crashes; do
            echo "[fuzz] $t: input $f ($(wc -c <"$f") bytes); reproduce with:"
            echo "    RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir $dir $t $f"
            od -A d -t x1 "$f" | head -8
            cargo fuzz fmt --fuzz-dir "$dir" --target-dir "$target_dir" -s "$sanitizer" "$t" "$f" \
                2>/dev/null | head -60 || true
        done
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "[fuzz] FAILED: ${failed[*]}"
    exit 1
fi
echo "[fuzz] ok: ${targets[*]}, $seconds s each"
