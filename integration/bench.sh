#!/usr/bin/env bash
# The main job: the bypass and the fast path vs virtio-net benchmark in one run.
#
# Installs what it needs (apt packages, the guest kernel, a static build of the guest tools),
# builds sockbypass with --release, boots two guests under QEMU that have every path (the
# bypass through sockbypassd's vsock device, the fast path's windows as ivshmem devices, and a
# virtio-net NIC), measures RTT (64 B) and bulk throughput over the bypass, virtio-net and the
# fast path in both placements (host-copied and direct), interleaved over several repetitions
# in rotating order, and prints the comparison with the CPU the daemon and the guests used and
# whether the bypass milestone and the fast path's goals are met. Results go to
# results/bench-<UTC>.json, results/latest.json (per path: bypass, virtio_net, fastpath,
# fastpath_direct; ratios against virtio-net) and results/latest.png; serial logs to
# results/logs/.
#
# Options are passed to sockbypass-bench (try --help): --reps N, --rtt-count N,
# --bulk-seconds S, --poll-mode M (the main comparison), --other-modes LIST and --other-reps N
# (the same figures for every path in the other poll modes, with the CPU the daemon and the
# guests used), --out DIR (default results). Then sockbypass-microbench measures the switch
# alone and writes DIR/microbench-<UTC>.json and DIR/microbench-latest.json.
# SOCKBYPASS_ACCEL=kvm|tcg forces the accelerator.
set -euo pipefail
cd "$(dirname "$0")/.."

# Where both benchmarks write: sockbypass-bench's --out, which this script also honours.
out=results
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
        --out) out=${args[i + 1]:-} ;;
        --out=*) out=${args[i]#--out=} ;;
    esac
done
[ -n "$out" ] || { echo "bench.sh: --out needs a directory" >&2; exit 2; }

echo "==> installing dependencies"
SOCKBYPASS_EXTRA_APT_PACKAGES="gnuplot-nox ${SOCKBYPASS_EXTRA_APT_PACKAGES:-}" ci/install-deps.sh
echo "==> building (release)"
cargo build --release --workspace --bins
echo "==> building the guest image"
bash integration/guest/build-image.sh
echo "==> running the benchmark: guests, bypass and fast path vs virtio-net, in each poll mode"
target/release/sockbypass-bench "$@"
# The switch alone against this machine's limits (host only, about a minute).
echo
echo "==> running the switch microbenchmark (host only)"
mkdir -p "$out"
stamped="$out/microbench-$(date -u +%Y%m%dT%H%M%SZ).json"
target/release/sockbypass-microbench --json "$stamped"
cp "$stamped" "$out/microbench-latest.json"
echo "==> wrote $stamped and $out/microbench-latest.json"
