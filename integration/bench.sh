#!/usr/bin/env bash
# The main job. Until the VM benchmark lands (issue 4), it builds everything in release mode and
# runs the device demo: sockbypassd in-process, three VMs played by the test frontend, a
# guest->host echo, a host->guest CONNECT, a 16 MiB VM-to-VM stream and a connect refused by
# policy, with every step printed.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> installing dependencies"
ci/install-deps.sh
echo "==> building (release)"
cargo build --release --workspace --bins
echo "==> running the demo"
exec target/release/sockbypass-demo
