#!/usr/bin/env bash
# The perf-regression gate.
#
#   ci/perf-gate.sh                      instruction counts per forwarded packet vs ci/perf-baseline.json
#   ci/perf-gate.sh --update "reason"    measure and write a new baseline (commit it, with the reason)
#   ci/perf-gate.sh --ab REV [ROUNDS]    wall-clock A/B: the microbenchmark at REV (A) vs this tree (B)
#
# The gate runs `sockbypass-microbench gate` (one VM pair, 400 batches of 32 packets of 64 B)
# under `valgrind --tool=callgrind` three times and counts the instructions per forwarded
# packet of the two paths a packet can take through the switch, and per message of the fast
# path's host copy:
# - event: event mode; everything inside the device's handle_event (the kick handler: TX walk,
#   routing, the copy, RX fill, used rings, interrupts);
# - poll: poll mode, the path of the default (adaptive) mode while packets flow; everything
#   inside the TX walk of a ring that has work (Switch::walk_tx_ring) and the RX fill a poll
#   thread starts (Switch::fill_rx_then_resume_tx). Passes that find every ring idle are not
#   counted: how many there are depends on timing.
# - fastpath: the fast path's host copy (SPEC.md §13.4), `gate --mode fastpath`: 400 writes of
#   32 messages of 64 B into one connection's TX ring, each read whole before the next, the
#   fast-path thread in event mode; everything inside the copier's transfer (the copy and the
#   two index stores of a pass that moves bytes), per message. Passes that find nothing are
#   not counted, as on the poll path.
# The counts are deterministic for a given binary (repeat runs agree to 0.01%), unlike time on
# a shared machine. The gate fails when any is more than 5% above its baseline. A different
# rustc changes the counts; the gate prints both versions when they differ.
# It is built with `--profile perfgate` (release with one codegen unit): with the usual 16 units,
# adding unrelated functions moves code between units and the count by several percent.
#
# The A/B mode is for people on real hardware: it alternates A and B at least 10 times and
# reports the change of small-packet ns/packet and latency with a p-value from a paired test
# (a sign-flip permutation test of the per-round differences B - A, since each round runs A and
# B back to back), flagging p < 0.01 together with a change over 5%. Exit status 3 when a
# flagged change is a slowdown. It writes the samples of every round and the verdicts to
# results/ab-<UTC>.txt (or $SOCKBYPASS_RESULTS_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

BASELINE=ci/perf-baseline.json
LIMIT_PCT=5
GATE_ARGS=(gate --batches 400 --batch 32)
# The paths: name, the gate's --mode, the functions counted (callgrind --toggle-collect).
PATHS=(event poll fastpath)
declare -A MODE=([event]=event [poll]=poll [fastpath]=fastpath)
declare -A TOGGLES=(
    [event]='*VsockDevice*handle_event*'
    [poll]='*Switch*walk_tx_ring* *Switch*fill_rx_then_resume_tx*'
    [fastpath]='*fastpath*copier*transfer*'
)
# The baseline key of each path's count.
declare -A KEY=([event]=ir_per_packet [poll]=ir_per_packet_poll [fastpath]=ir_per_message_fastpath)
BIN=target/release/sockbypass-microbench
GATE_BIN=target/perfgate/sockbypass-microbench

say() { printf '[perf-gate] %s\n' "$*"; }
die() { printf '[perf-gate] error: %s\n' "$*" >&2; exit 2; }

build() {
    say "building sockbypass-microbench (--release)"
    cargo build --release -q -p sockbypass-benchmarks --bin sockbypass-microbench
}

# The gate's own build: release with one codegen unit (see [profile.perfgate] in Cargo.toml).
build_gate() {
    say "building sockbypass-microbench (--profile perfgate)"
    cargo build --profile perfgate -q -p sockbypass-benchmarks --bin sockbypass-microbench
}

# Prints "<instructions per packet> <packets>" for the gate run of path $1.
measure() {
    local path=$1
    command -v valgrind >/dev/null 2>&1 || SOCKBYPASS_APT_PACKAGES=valgrind ci/install-deps.sh >&2
    local out log toggle toggles=() names
    out=$(mktemp) log=$(mktemp)
    # shellcheck disable=SC2064 # expand now: the paths are fixed
    trap "rm -f '$out' '$log'" RETURN
    # Split on spaces without glob expansion: the patterns contain `*`.
    read -r -a names <<<"${TOGGLES[$path]}"
    for toggle in "${names[@]}"; do toggles+=("--toggle-collect=$toggle"); done
    if ! valgrind --tool=callgrind --callgrind-out-file="$out" "${toggles[@]}" \
        "$GATE_BIN" "${GATE_ARGS[@]}" --mode "${MODE[$path]}" >"$log" 2>&1; then
        cat "$log" >&2
        die "the gate run failed under valgrind"
    fi
    local ir packets
    ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$out" | head -1)
    [ -n "$ir" ] || ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out" | head -1)
    packets=$(sed -n 's/^GATE packets=\([0-9]*\).*/\1/p' "$log")
    [ -n "$ir" ] && [ -n "$packets" ] && [ "$packets" -gt 0 ] ||
        die "could not read the instruction count or the packet count (callgrind output: $out)"
    if [ "$ir" -eq 0 ]; then
        die "callgrind counted 0 instructions in ${TOGGLES[$path]}: was a function renamed or inlined?"
    fi
    awk -v ir="$ir" -v p="$packets" 'BEGIN { printf "%.1f %d\n", ir / p, p }'
}

json_field() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",]*\)\"\{0,1\}.*/\1/p" "$BASELINE" | head -1; }

gate() {
    [ -f "$BASELINE" ] || die "$BASELINE is missing: run ci/perf-gate.sh --update \"reason\""
    build_gate
    local rustc_now rustc_base failed=0 path result per_packet packets base
    rustc_base=$(json_field rustc)
    rustc_now=$(rustc --version)
    if [ "$rustc_now" != "$rustc_base" ]; then
        say "note: baseline measured with $rustc_base, this is $rustc_now; counts may differ"
    fi
    for path in "${PATHS[@]}"; do
        # A failed measurement (reported by measure) stops the gate; it never compares nothing.
        result=$(measure "$path") || exit 2
        read -r per_packet packets <<<"$result"
        base=$(json_field "${KEY[$path]}")
        [ -n "$base" ] || die "$BASELINE has no ${KEY[$path]}: run ci/perf-gate.sh --update \"reason\""
        say "$path path: instructions per forwarded packet: $per_packet (over $packets packets); baseline $base"
        if awk -v n="$per_packet" -v b="$base" -v l="$LIMIT_PCT" 'BEGIN { exit !(n > b * (1 + l / 100)) }'; then
            awk -v p="$path" -v n="$per_packet" -v b="$base" 'BEGIN { printf "[perf-gate] FAIL: %s path %+.1f%% instructions per packet (limit +5%%)\n", p, (n / b - 1) * 100 }'
            failed=1
            continue
        fi
        awk -v p="$path" -v n="$per_packet" -v b="$base" 'BEGIN { printf "[perf-gate] ok: %s path %+.1f%% against the baseline (limit +5%%)\n", p, (n / b - 1) * 100 }'
        if awk -v n="$per_packet" -v b="$base" -v l="$LIMIT_PCT" 'BEGIN { exit !(n < b * (1 - l / 100)) }'; then
            say "$path path more than 5% better than the baseline: consider ci/perf-gate.sh --update \"why\""
        fi
    done
    exit "$failed"
}

update() {
    local reason=$1 path result per_packet packets
    [ -n "$reason" ] || die "--update needs a reason: ci/perf-gate.sh --update \"why the count changed\""
    build_gate
    local -A count
    for path in "${PATHS[@]}"; do
        # A failed measurement (reported by measure) stops the gate; it never compares nothing.
        result=$(measure "$path") || exit 2
        read -r per_packet packets <<<"$result"
        count[$path]=$per_packet
    done
    cat >"$BASELINE" <<EOF
{
  "ir_per_packet": ${count[event]},
  "ir_per_packet_poll": ${count[poll]},
  "ir_per_message_fastpath": ${count[fastpath]},
  "packets": $packets,
  "gate": "sockbypass-microbench ${GATE_ARGS[*]} --mode event|poll|fastpath",
  "profile": "perfgate (release, codegen-units = 1)",
  "toggle_collect": "event: ${TOGGLES[event]}; poll: ${TOGGLES[poll]}; fastpath: ${TOGGLES[fastpath]}",
  "rustc": "$(rustc --version)",
  "valgrind": "$(valgrind --version)",
  "measured_at": "$(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD -- backend virtio-spec integration Cargo.toml Cargo.lock || echo -dirty)",
  "reason": "$(printf '%s' "$reason" | sed 's/["\\]/\\&/g')"
}
EOF
    say "wrote $BASELINE: ${count[event]} (event path), ${count[poll]} (poll path) instructions per packet, ${count[fastpath]} per fast-path message. Commit it with the reason."
}

ab() {
    local rev=$1 rounds=${2:-10}
    [ "$rounds" -ge 10 ] 2>/dev/null || die "A/B needs at least 10 rounds (got $rounds)"
    git rev-parse --verify -q "$rev^{commit}" >/dev/null || die "unknown revision: $rev"
    local work
    work=$(mktemp -d)
    # shellcheck disable=SC2064 # expand now: the paths are fixed
    trap "git worktree remove --force '$work/a' >/dev/null 2>&1 || true; rm -rf '$work'" EXIT
    say "A = $rev, B = the working tree; $rounds rounds, alternating order"
    git worktree add -q --detach "$work/a" "$rev"
    say "building A"
    # The microbenchmark's package: sockbypass-benchmarks since the split of integration/
    # (issue 11), sockbypass-integration before.
    local pkg_a=sockbypass-integration
    if [ -f "$work/a/integration/benchmarks/Cargo.toml" ]; then pkg_a=sockbypass-benchmarks; fi
    CARGO_TARGET_DIR="$work/a-target" cargo build --release -q \
        --manifest-path "$work/a/Cargo.toml" -p "$pkg_a" --bin sockbypass-microbench ||
        die "$rev does not build sockbypass-microbench (it exists from commit fb8ac41 on)"
    build
    local bin_a="$work/a-target/release/sockbypass-microbench" bin_b="$BIN"
    local args=(--modes poll --pairs 1 --seconds 0.5 --latency-packets 5000 --idle-seconds 0.1)
    # One run per figure on both sides (revisions before --repeat had exactly one).
    if "$bin_a" --help | grep -q -- --repeat; then args+=(--repeat 1); fi
    # Same thread placement on both sides: revisions before --no-pin never pinned.
    local extra_b=()
    if ! "$bin_a" --help | grep -q -- --no-pin; then extra_b=(--no-pin); fi
    run_one() { # $1 = label, $2 = binary, then extra arguments
        local label=$1 bin=$2
        shift 2
        "$bin" "${args[@]}" "$@" --json "$work/run.json" >/dev/null
        "$BIN" figure "$work/run.json" poll small_ns_per_packet >>"$work/$label-small"
        "$BIN" figure "$work/run.json" poll latency_ns_p50 >>"$work/$label-latency"
    }
    for i in $(seq 1 "$rounds"); do
        if [ $((i % 2)) -eq 1 ]; then
            run_one a "$bin_a"
            run_one b "$bin_b" "${extra_b[@]}"
        else
            run_one b "$bin_b" "${extra_b[@]}"
            run_one a "$bin_a"
        fi
        say "round $i/$rounds done"
    done
    # The samples and the verdicts are kept, like every other measured run.
    local out_dir=${SOCKBYPASS_RESULTS_DIR:-results} report dirty=""
    mkdir -p "$out_dir"
    report="$out_dir/ab-$(date -u +%Y%m%dT%H%M%SZ).txt"
    git diff --quiet HEAD -- backend virtio-spec integration Cargo.toml Cargo.lock || dirty=-dirty
    {
        echo "ci/perf-gate.sh --ab $rev $rounds"
        echo "A: $(git rev-parse --short=12 "$rev"), B: $(git rev-parse --short=12 HEAD)$dirty (the working tree)"
        echo "machine: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) CPUs; host only (no VM)"
        echo "microbenchmark: ${args[*]}"
        echo "round a_small_ns_per_packet b_small_ns_per_packet a_latency_ns_p50 b_latency_ns_p50"
        paste -d' ' <(seq 1 "$rounds") "$work/a-small" "$work/b-small" "$work/a-latency" "$work/b-latency"
    } >"$report"
    local status=0 rc
    for fig in small latency; do
        rc=0
        "$BIN" compare "$work/a-$fig" "$work/b-$fig" --label "poll mode, 64 B, $fig ns" \
            | tee -a "$report" || rc=$?
        if [ "$rc" -eq 3 ]; then
            # Flagged: a slowdown (B above A) fails, a speed-up does not.
            awk -v a="$(awk '{s+=$1} END {print s/NR}' "$work/a-$fig")" \
                -v b="$(awk '{s+=$1} END {print s/NR}' "$work/b-$fig")" 'BEGIN { exit !(b > a) }' && status=3
        elif [ "$rc" -ne 0 ]; then
            die "comparing $fig failed"
        fi
    done
    say "wrote $report"
    exit "$status"
}

case "${1:-}" in
    "") gate ;;
    --update) update "${2:-}" ;;
    --ab) [ -n "${2:-}" ] || die "usage: ci/perf-gate.sh --ab REV [ROUNDS]"; ab "$2" "${3:-10}" ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown argument: $1 (see ci/perf-gate.sh --help)" ;;
esac
