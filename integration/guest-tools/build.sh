#!/bin/sh
# Builds `sbtool` as a static binary (glibc, +crt-static) for the test guests, idempotently,
# into the workspace's target directory:
#
#   RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --release -p sockbypass-guest-tools --target x86_64-unknown-linux-gnu
#
# The explicit --target keeps RUSTFLAGS away from build scripts and proc macros, and keeps
# this build (target/x86_64-unknown-linux-gnu/release/) apart from the ordinary host build.
#
# The workspace's release profile keeps debug info (about 12 MB); the guests get a stripped
# copy (about 2 MB), target/x86_64-unknown-linux-gnu/release/guest/sbtool, remade only when
# the build changed. Without `strip` the unstripped binary is used.
#
# Cargo's output goes to stderr. The LAST line of stdout is the path of the binary to put
# into the guest.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
triple=x86_64-unknown-linux-gnu
cd "$root"

RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p sockbypass-guest-tools --target "$triple" >&2

target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || target_dir=${CARGO_TARGET_DIR:-$root/target}
bin=$target_dir/$triple/release/sbtool
[ -x "$bin" ] || { echo "build.sh: $bin was not built" >&2; exit 1; }

# A dynamically linked binary has a program interpreter (PT_INTERP); a static one has none.
if command -v readelf >/dev/null 2>&1 && readelf -lW "$bin" | grep -q 'INTERP'; then
    echo "build.sh: $bin is dynamically linked; it must be static for the guests" >&2
    exit 1
fi

out=$bin
if command -v strip >/dev/null 2>&1; then
    out=$target_dir/$triple/release/guest/sbtool
    if [ ! -x "$out" ] || [ "$bin" -nt "$out" ]; then
        mkdir -p "$(dirname "$out")"
        strip -o "$out.tmp.$$" "$bin"
        mv -f "$out.tmp.$$" "$out"
    fi
fi
echo "$out"
