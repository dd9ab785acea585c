#!/usr/bin/env bash
# The soak with real guests and the real daemon binary (issue 10):
#
#   ci/soak.sh [SECONDS]      (default 600; ci/test.sh runs 60)
#
# 1,000 connections open at once across 4 guests for SECONDS, through a `sockbypassd` running
# as its own process: every guest serves and runs `sbtool soak` with 250 connections spread
# over the three others, each replaced by a fresh one after its session (echo messages of
# 1 B to 64 KiB, or bulk streams of up to 4 MiB to a sink); every byte is checked by its
# receiver (the echo compared byte for byte, the sink's count and checksum). The daemon's table
# must hold the 1,000 connections the whole time and be empty after the clients close; its peak
# RSS, connections opened and bytes verified are reported. Each VM gets max_conns=1024 and
# max_conns_per_peer=512: a guest takes part in 500 connections at once (1,000 for a moment
# while connections are replaced). Details: integration/guests/src/realdaemon/soak.rs.
#
# Writes results/soak-<UTC>.json (the directory is $SOCKBYPASS_RESULTS_DIR when set); on failure
# the run's logs go to <results>/logs/soak-<UTC>/. Exit status 1 when a check failed.
# Cleanup and the CI=true rule as in ci/faults.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/guest-image.sh
. ci/guest-image.sh

seconds=${1:-600}
case "$seconds" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
need_guest_image "soak"
cargo build --release -q -p sockbypassd -p sockbypass-guests \
    --bin sockbypassd --bin sockbypass-soak
# In the background, so that a SIGTERM or SIGINT sent to this script reaches it: it then
# stops its guests and the daemon by PID and deletes its work directory before exiting.
target/release/sockbypass-soak --seconds "$seconds" --daemon target/release/sockbypassd \
    --out "${SOCKBYPASS_RESULTS_DIR:-results}" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit 130' INT TERM
wait "$pid"
