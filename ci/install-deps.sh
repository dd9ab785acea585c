#!/usr/bin/env bash
# Installs what the tests and the demo need, idempotently. Safe to run again and again.
#
# That is the Rust toolchain's fmt and clippy (checked, not fetched: rustup's servers are not
# reachable from every machine), cargo-fuzz, and the Debian packages for real guests: QEMU, the
# pieces of the guest image (busybox, cpio), iproute2 for the virtio-net baseline's namespace,
# valgrind for the instruction-count perf gate (ci/perf-gate.sh), g++ for libFuzzer
# (ci/fuzz.sh), python3-prometheus-client, whose strict OpenMetrics parser checks what
# `sockbypassd --metrics-listen` serves (backend/tests/metrics_http.rs), libvirt-clients and
# libxml2-utils for `virt-xml-validate` on the generated libvirt XML (sockbypass libvirt-xml,
# the KubeVirt hook), and systemd for `systemd-analyze verify` on the unit (ci/systemd-verify.sh).
# The guest
# kernel itself is fetched by integration/guest/build-image.sh.
set -euo pipefail

say() { printf '[install] %s\n' "$*"; }

need_cmd() {
    command -v "$1" >/dev/null 2>&1
}

if ! need_cmd cargo; then
    say "cargo not found: install Rust (https://rustup.rs) first"
    exit 1
fi
for comp in fmt clippy; do
    if ! cargo "$comp" --version >/dev/null 2>&1; then
        say "cargo $comp missing; trying rustup component add"
        rustup component add "$( [ "$comp" = fmt ] && echo rustfmt || echo clippy )"
    fi
done

# cargo-fuzz for ci/fuzz.sh. It runs on the stable toolchain (RUSTC_BOOTSTRAP=1, see
# ci/fuzz.sh), so nothing but the tool itself is fetched; libFuzzer is built by the
# libfuzzer-sys crate with the C++ compiler below.
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# Debian packages the scripts use. Installed only when missing.
# shellcheck disable=SC2206 # word splitting of the override is intended
APT_PACKAGES=(${SOCKBYPASS_APT_PACKAGES:-qemu-system-x86 busybox-static cpio iproute2 valgrind g++ libvirt-clients libxml2-utils systemd python3-prometheus-client ${SOCKBYPASS_EXTRA_APT_PACKAGES:-}})
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        say "missing packages: ${missing[*]} (run as root, or install them)"
        exit 1
    fi
    say "apt-get install ${missing[*]}"
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ]; then
        apt-get update -q
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
say "ok"
