#!/usr/bin/env bash
# Smoke test of the guest image: builds it (integration/guest/build-image.sh, cached) and
# boots it twice under QEMU, TCG by default (SOCKBYPASS_ACCEL=kvm to try KVM):
#
#   1. no devices: the command prints `uname -r`, /proc/modules and `ip addr`, and checks that
#      the virtio and vsock modules are loaded and /dev/vsock exists;
#   2. a virtio-net NIC on a QEMU hub port that leads nowhere (no host network at all) and
#      `sb.ip=10.99.0.3/24`: the command checks that eth0 is up with that address;
#   3. boot 1 again with the uncompressed kernel ($CACHE/vmlinux, booted through its PVH
#      entry point), when the builder could extract it, with the script passed through
#      fw_cfg (opt/sockbypass/cmd) instead of sb.cmd.
#
# Each boot must print SB-READY and SB-EXIT 0 within 60 s. It prints the time from QEMU's
# start to SB-READY. QEMU is killed by its PID on any exit (also on Ctrl-C). No vsock device
# is attached and sockbypassd is not needed. Arguments are passed to build-image.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TIMEOUT=${SB_SMOKE_TIMEOUT:-60}
ACCEL=${SOCKBYPASS_ACCEL:-tcg}
case "$ACCEL" in
    tcg) CPU=max ;;
    kvm) CPU=host ;;
    *) echo "SOCKBYPASS_ACCEL=$ACCEL: expected kvm or tcg" >&2; exit 2 ;;
esac

progress() { echo "==> $*"; }

QEMU_PID=""
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sb-boot-smoke.XXXXXX")
KEEP_WORK=0
cleanup() {
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        # Give it a moment, then make sure.
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$QEMU_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    QEMU_PID=""
    if [ "$KEEP_WORK" = 1 ]; then
        echo "==> logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- image ---------------------------------------------------------------------------------
progress "building the guest image"
build_out=$(bash "$HERE/build-image.sh" "$@")
printf '%s\n' "$build_out" | sed '$d'
CACHE=$(printf '%s\n' "$build_out" | tail -n1)
KERNEL=$CACHE/vmlinuz
INITRD=$CACHE/initramfs.cpio.gz
KVER=$(cat "$CACHE/kernel-version")
if [ ! -f "$KERNEL" ] || [ ! -f "$INITRD" ]; then
    echo "no image in $CACHE" >&2
    exit 1
fi

# --- one boot ------------------------------------------------------------------------------
# boot NAME KERNEL SCRIPT EXTRA_APPEND [EXTRA_QEMU_ARGS...]
# Boots KERNEL with sb.cmd=base64(SCRIPT) (none if SCRIPT is empty), waits for SB-READY and
# SB-EXIT, prints the console.
boot() {
    local name=$1 kernel=$2 script=$3 extra_append=$4
    shift 4
    local log=$WORK/$name.serial.log err=$WORK/$name.qemu.err
    local append="console=ttyS0 panic=-1 quiet${extra_append:+ $extra_append}"
    if [ -n "$script" ]; then
        append="$append sb.cmd=$(printf '%s' "$script" | base64 -w0)"
    fi
    local cmd=(qemu-system-x86_64
        -machine "q35,accel=$ACCEL,memory-backend=mem" -cpu "$CPU" -smp 1 -m 512M
        -object "memory-backend-memfd,id=mem,size=512M,share=on"
        -kernel "$kernel" -initrd "$INITRD" -append "$append"
        -nodefaults -no-user-config -display none -no-reboot -nic none
        -serial "file:$log" "$@")
    : >"$log"
    progress "boot '$name': $(printf '%q ' "${cmd[@]}")"
    local t0=$EPOCHREALTIME
    "${cmd[@]}" </dev/null >"$err" 2>&1 &
    QEMU_PID=$!

    local ready="" exited="" deadline now
    deadline=$(awk -v t="$t0" -v d="$TIMEOUT" 'BEGIN { printf "%.3f", t + d }')
    while :; do
        now=$EPOCHREALTIME
        if [ -z "$ready" ] && grep -q 'SB-READY' "$log"; then
            ready=$(awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.2f", b - a }')
        fi
        if grep -q 'SB-EXIT ' "$log"; then
            exited=1
            break
        fi
        kill -0 "$QEMU_PID" 2>/dev/null || break
        if awk -v n="$now" -v d="$deadline" 'BEGIN { exit !(n > d) }'; then
            break
        fi
        sleep 0.05
    done
    local total
    total=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
    # After SB-EXIT the guest powers off; wait for QEMU to exit on its own (up to 10 s).
    if [ -n "$exited" ]; then
        for _ in $(seq 100); do
            kill -0 "$QEMU_PID" 2>/dev/null || break
            sleep 0.1
        done
    fi
    local qemu_gone=1
    kill -0 "$QEMU_PID" 2>/dev/null && qemu_gone=0
    cleanup_qemu_only

    echo "----- console of '$name' -----"
    tr -d '\r' <"$log"
    echo
    echo "-----"
    local status
    status=$(grep -o 'SB-EXIT [0-9-]*' "$log" | tail -n1 | cut -d' ' -f2 || true)
    if [ -z "$ready" ]; then
        KEEP_WORK=1
        echo "FAIL '$name': no SB-READY within ${TIMEOUT}s (qemu stderr: $(cat "$err"))" >&2
        return 1
    fi
    if [ "$status" != 0 ]; then
        KEEP_WORK=1
        echo "FAIL '$name': SB-EXIT '${status:-none}' (expected 0) after ${total}s" >&2
        return 1
    fi
    [ "$qemu_gone" = 1 ] || echo "warning: QEMU did not power off by itself after SB-EXIT" >&2
    progress "boot '$name': SB-READY after ${ready}s, SB-EXIT 0 after ${total}s ($ACCEL)"
    READY_TIMES+=("$name=${ready}s")
}

# Stops the current QEMU (by PID) without touching the work directory.
cleanup_qemu_only() {
    if [ -n "$QEMU_PID" ]; then
        if kill -0 "$QEMU_PID" 2>/dev/null; then
            kill "$QEMU_PID" 2>/dev/null || true
            sleep 0.2
            kill -9 "$QEMU_PID" 2>/dev/null || true
        fi
        wait "$QEMU_PID" 2>/dev/null || true
        QEMU_PID=""
    fi
}

READY_TIMES=()

# --- boot 1: modules and /dev/vsock --------------------------------------------------------
# shellcheck disable=SC2016 # expanded in the guest
MODULES_SCRIPT='set -e
echo "uname -r: $(uname -r)"
echo "--- /proc/modules"
cat /proc/modules
echo "--- ip addr"
ip addr
for m in virtio_pci virtio_net vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do
    grep -q "^$m " /proc/modules || { echo "CHECK FAILED: module $m not loaded"; exit 1; }
done
test -c /dev/vsock || { echo "CHECK FAILED: no /dev/vsock"; exit 1; }
ls -l /dev/vsock
test "$(uname -r)" = "'"$KVER"'" || { echo "CHECK FAILED: kernel is not '"$KVER"'"; exit 1; }
echo "CHECKS OK"'
boot modules "$KERNEL" "$MODULES_SCRIPT" ""

# --- boot 2: virtio-net NIC configured from sb.ip ------------------------------------------
# The NIC's netdev is a port on a QEMU hub that has no other port: the NIC exists, and
# nothing it sends can leave QEMU.
# shellcheck disable=SC2016 # expanded in the guest
NIC_SCRIPT='set -e
ip addr show dev eth0
ip -4 addr show dev eth0 | grep -q "inet 10.99.0.3/24" || { echo "CHECK FAILED: eth0 has no 10.99.0.3/24"; exit 1; }
ip link show dev eth0 | grep -q "[<,]UP[,>]" || { echo "CHECK FAILED: eth0 is not up"; exit 1; }
echo "CHECKS OK"'
boot nic "$KERNEL" "$NIC_SCRIPT" "sb.ip=10.99.0.3/24" \
    -device virtio-net-pci,netdev=n0 -netdev hubport,id=n0,hubid=0

# --- boot 3: the same as boot 1, with the uncompressed kernel (PVH entry) ------------------
# This one passes the script through QEMU's fw_cfg instead of sb.cmd (no size limit).
if [ -f "$CACHE/vmlinux" ]; then
    printf '%s\n' "$MODULES_SCRIPT" >"$WORK/modules.sh"
    boot modules-pvh-fwcfg "$CACHE/vmlinux" "" "" \
        -fw_cfg "name=opt/sockbypass/cmd,file=$WORK/modules.sh"
fi

progress "smoke test passed: kernel $KVER, $(du -h "$INITRD" | cut -f1) initramfs, SB-READY after ${READY_TIMES[*]}"
