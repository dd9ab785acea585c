#!/usr/bin/env bash
# Fault cycles with real guests and the real daemon binary (issue 10):
#
#   ci/faults.sh [CYCLES]      (default 100; ci/test.sh runs 10)
#
# Two guests, A and B, in one group of a `sockbypassd` running as its own process. Each cycle:
# A streams to B's echo server (`sbtool stream`, every byte compared); B's QEMU gets SIGKILL
# mid-stream; A must see its connection reset within 1 s of the kill (host clock, from just
# before the kill to A's result line on its serial console); the daemon must have sent A an RST
# and freed every connection entry of A and B; B restarts on the same vhost-user socket and a
# fresh connection from A must echo 1 MiB byte for byte. After the last cycle the daemon must
# hold no connection state, and its resident memory must be within 10% of that after the first
# cycle (VmRSS without the guest RAM it maps, RssShmem; VmRSS is reported too).
# Details: integration/guests/src/realdaemon/faults.rs.
#
# Prints a line per cycle and a summary; writes results/faults-<UTC>.json (the directory is
# $SOCKBYPASS_RESULTS_DIR when set). On failure the run's logs are copied to
# <results>/logs/faults-<UTC>/. Exit status 1 when a check failed.
#
# QEMU and the daemon are owned by sockbypass-faults, which kills them by PID on every exit path
# (Ctrl-C included); its work directory is deleted. When the guest image cannot be built: with
# CI=true that fails, elsewhere the run is skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/guest-image.sh
. ci/guest-image.sh

cycles=${1:-100}
case "$cycles" in
    '' | *[!0-9]*) echo "usage: $0 [CYCLES]" >&2; exit 2 ;;
esac
need_guest_image "fault cycles"
cargo build --release -q -p sockbypassd -p sockbypass-guests \
    --bin sockbypassd --bin sockbypass-faults
# In the background, so that a SIGTERM or SIGINT sent to this script reaches it: it then
# stops its guests and the daemon by PID and deletes its work directory before exiting.
target/release/sockbypass-faults --cycles "$cycles" --daemon target/release/sockbypassd \
    --out "${SOCKBYPASS_RESULTS_DIR:-results}" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit 130' INT TERM
wait "$pid"
