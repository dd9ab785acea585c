#!/usr/bin/env bash
# Checks deploy/systemd:
#   1. `systemd-analyze verify` on sockbypassd.service prints nothing: any warning about the
#      unit fails the check. verify also checks that ExecStart= and ExecReload= name existing
#      executables, and /usr/local/bin holds none here, so it runs on a temporary copy of the
#      unit whose two paths point at the binaries just built. (`verify --root=DIR` with the
#      binaries installed under DIR does not work instead: it then looks for every unit the
#      service depends on, sysinit.target first, under DIR too.) The unmodified unit's only
#      complaints must be those two missing binaries, and a copy with a broken setting must
#      make verify complain, so that the check is seen to fail when it should.
#   2. sockbypass.sysusers.conf creates the user and group in a temporary root
#      (systemd-sysusers --root).
#   3. The sample sockbypassd.toml starts the real daemon (its paths moved to a temporary
#      directory): every VM's socket appears; the daemon is then stopped by its PID.
#
# Without systemd-analyze: a failure with CI=true, else skipped with the reason.
# Usage: ci/systemd-verify.sh   (from anywhere; ci/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { printf 'FAILED: %s\n' "$*"; exit 1; }

for tool in systemd-analyze systemd-sysusers; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        if [ "${CI:-}" = true ]; then
            fail "$tool is missing (package systemd, ci/install-deps.sh), and with CI=true a check that cannot run is a failure"
        fi
        echo "SKIPPED: systemd unit checks: $tool is missing (install the systemd package)"
        exit 0
    fi
done

cargo build -q -p sockbypassd -p sockbypass-ctl --bins
bin="$(pwd)/${CARGO_TARGET_DIR:-target}/debug"
tmp=$(mktemp -d)
daemon_pid=""
cleanup() {
    if [ -n "$daemon_pid" ]; then kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

unit=deploy/systemd/sockbypassd.service
mkdir "$tmp/unit" "$tmp/broken"
sed -e "s|^ExecStart=/usr/local/bin/sockbypassd |ExecStart=$bin/sockbypassd |" \
    -e "s|^ExecReload=/usr/local/bin/sockbypass |ExecReload=$bin/sockbypass |" \
    "$unit" > "$tmp/unit/sockbypassd.service"
grep -q "^ExecStart=$bin/sockbypassd " "$tmp/unit/sockbypassd.service" || fail "ExecStart= not found in $unit"
grep -q "^ExecReload=$bin/sockbypass " "$tmp/unit/sockbypassd.service" || fail "ExecReload= not found in $unit"

echo "==> systemd-analyze verify $unit (binaries from $bin)"
if ! out=$(systemd-analyze verify "$tmp/unit/sockbypassd.service" 2>&1) || [ -n "$out" ]; then
    printf '%s\n' "$out"
    fail "systemd-analyze verify complained about $unit"
fi

echo "==> the unmodified unit: only the two binaries missing from /usr/local/bin"
out=$(systemd-analyze verify "$unit" 2>&1 || true)
other=$(grep -v -e '^$' \
    -e 'Command /usr/local/bin/sockbypassd is not executable' \
    -e 'Command /usr/local/bin/sockbypass is not executable' <<<"$out" || true)
if [ -n "$other" ]; then
    printf '%s\n' "$out"
    fail "systemd-analyze verify found more than the missing binaries in $unit"
fi

echo "==> a broken copy is refused"
sed -e 's/^Type=notify$/Type=notfy/' -e 's/^ProtectSystem=strict$/ProtectSystem=sometimes/' \
    "$tmp/unit/sockbypassd.service" > "$tmp/broken/sockbypassd.service"
out=$(systemd-analyze verify "$tmp/broken/sockbypassd.service" 2>&1 || true)
grep -qi 'service type' <<<"$out" || { printf '%s\n' "$out"; fail "verify accepted Type=notfy"; }
grep -qi 'protect system' <<<"$out" || { printf '%s\n' "$out"; fail "verify accepted ProtectSystem=sometimes"; }

echo "==> sockbypass.sysusers.conf creates the user and group"
mkdir -p "$tmp/root/etc"
systemd-sysusers --root="$tmp/root" "$(pwd)/deploy/systemd/sockbypass.sysusers.conf" >/dev/null 2>&1 \
    || fail "systemd-sysusers refused deploy/systemd/sockbypass.sysusers.conf"
grep -q '^sockbypass:x:[0-9]*:[0-9]*:.*:/usr/sbin/nologin$' "$tmp/root/etc/passwd" || fail "no sockbypass user"
grep -q '^sockbypass:x:[0-9]*:' "$tmp/root/etc/group" || fail "no sockbypass group"

echo "==> the sample sockbypassd.toml starts the daemon"
mkdir "$tmp/run"
sed "s|/run/sockbypass/|$tmp/run/|g" deploy/systemd/sockbypassd.toml > "$tmp/sockbypassd.toml"
sockets=$(grep -o "$tmp/run/[^\"]*\.sock" "$tmp/sockbypassd.toml")
[ -n "$sockets" ] || fail "no VM socket in the sample config"
"$bin/sockbypassd" --config "$tmp/sockbypassd.toml" > "$tmp/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 200); do
    all=yes
    for s in $sockets; do [ -S "$s" ] || all=no; done
    [ "$all" = yes ] && break
    kill -0 "$daemon_pid" 2>/dev/null || { cat "$tmp/daemon.log"; fail "sockbypassd refused the sample config"; }
    sleep 0.05
done
[ "$all" = yes ] || { cat "$tmp/daemon.log"; fail "the sample config's sockets did not appear within 10 s"; }
kill "$daemon_pid"
wait "$daemon_pid" || fail "sockbypassd did not stop cleanly on SIGTERM"
daemon_pid=""

echo "systemd unit checks: ok"
