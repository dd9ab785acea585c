#!/usr/bin/env bash
# Builds the sockbypass test guest, idempotently, into a cache directory outside the repo:
#
#   $CACHE/vmlinuz              Debian's kernel (the one linux-image-amd64 depends on)
#   $CACHE/vmlinux              the same kernel uncompressed (ELF with a PVH entry point):
#                               `-kernel vmlinux` boots about twice as fast under TCG
#   $CACHE/initramfs.cpio.gz    busybox-static, the virtio/vsock modules, /init, guest tools
#   $CACHE/kernel-version       `uname -r` of that kernel
#   $CACHE/modules.load         the modules /init loads, in order (paths inside the guest)
#
# CACHE is --cache DIR, else $SOCKBYPASS_CACHE, else ~/.cache/sockbypass.
#
# Progress goes to stdout as `==> ...` lines; the LAST line of stdout is the cache directory.
# Output of the tools it runs (apt, cargo) goes to stderr.
#
# A second run reuses the downloaded kernel package, the unpacked modules and, when nothing
# that goes into it changed, the initramfs: the staged tree is hashed and compared with the
# hash stored next to the initramfs. Concurrent runs are serialised with flock, and every
# output is replaced atomically (written aside, then renamed).
#
# Guest tools: every `--tools PATH` (repeatable), else $SOCKBYPASS_GUEST_TOOLS (paths
# separated by ':'), else the binary printed on the last line of
# integration/guest-tools/build.sh when that script exists; `--no-tools` builds without any.
# They go to /bin/ in the guest. Static binaries are copied alone; a dynamic one gets its
# libraries (found with ldd) copied along.
#
# The guest's /init is integration/guest/init (see there for sb.cmd= / sb.ip=).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

# Modules the guest needs (their dependencies are added from modules.dep). Names as modprobe
# spells them; `-` and `_` are interchangeable.
WANTED_MODULES=(
    virtio_pci
    virtio_net
    vsock
    vmw_vsock_virtio_transport_common
    vmw_vsock_virtio_transport
    # /sys/firmware/qemu_fw_cfg: lets /init read a command longer than the kernel command
    # line allows (2048 bytes on x86) from `-fw_cfg name=opt/sockbypass/cmd,file=...`.
    qemu_fw_cfg
)
# Host packages this script (and booting the image) needs.
HOST_PACKAGES=(busybox-static cpio gzip kmod xz-utils qemu-system-x86)
# Busybox applets that /init and the tests rely on: the build fails if one is missing.
REQUIRED_APPLETS=(sh mount insmod ip ifconfig poweroff cat echo sleep base64 dmesg grep sed
    mkdir ls seq setsid cttyhack hostname sync)

usage() {
    cat <<EOF
usage: $0 [--cache DIR] [--tools PATH]... [--no-tools] [--force]

Builds the guest kernel and initramfs into DIR (default \${SOCKBYPASS_CACHE:-\$HOME/.cache/sockbypass})
and prints DIR as the last line of stdout.
  --tools PATH   put the binary PATH into the guest's /bin (repeatable)
  --no-tools     no guest tools (do not run integration/guest-tools/build.sh)
  --force        rebuild the initramfs even if its inputs did not change
EOF
}

CACHE=${SOCKBYPASS_CACHE:-${HOME:-/root}/.cache/sockbypass}
TOOLS=()
NO_TOOLS=0
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --cache) CACHE=${2:?--cache needs a directory}; shift 2 ;;
        --cache=*) CACHE=${1#--cache=}; shift ;;
        --tools) TOOLS+=("${2:?--tools needs a path}"); shift 2 ;;
        --tools=*) TOOLS+=("${1#--tools=}"); shift ;;
        --no-tools) NO_TOOLS=1; shift ;;
        --force) FORCE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

progress() { echo "==> $*"; }
die() {
    echo "==> error: $*" >&2
    exit 1
}

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

# One build at a time per cache directory (tests may ask for the image in parallel).
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
    progress "waiting for another build of $CACHE"
    flock 9
fi

# Scratch space inside the cache (same file system, so renames are atomic); removed on exit.
SCRATCH=$(mktemp -d "$CACHE/.tmp.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT

# Runs a command as root (directly, or through sudo when available).
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

# apt-get update, at most once per run.
APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" = 0 ]; then
        progress "apt-get update"
        as_root apt-get update -q >&2
        APT_UPDATED=1
    fi
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

# Installs the packages given that are not installed yet.
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        pkg_installed "$p" || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    progress "installing ${missing[*]}"
    if ! as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
        apt_update_once
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    fi
}

# Whether an ELF file needs a dynamic loader.
is_dynamic() {
    local out
    out=$(LC_ALL=C ldd "$1" 2>&1 || true)
    case "$out" in
        *"not a dynamic executable"* | *"statically linked"*) return 1 ;;
        *) return 0 ;;
    esac
}

# A module's name from its path: basename without .ko[.xz|.zst|.gz], `-` as `_`.
mod_name() {
    local n=${1##*/}
    n=${n%%.ko*}
    printf '%s\n' "${n//-/_}"
}

# Extracts the uncompressed ELF kernel (vmlinux) from a bzImage into $2. It has a PVH entry
# point (CONFIG_PVH=y), so QEMU boots it with `-kernel vmlinux` directly: no SeaBIOS real-mode
# setup and no in-guest decompression, which halves the boot time under TCG. The payload is
# found by its compression magic; `--single-stream` ignores whatever follows it.
extract_vmlinux() {
    local img=$1 out=$2 magic off
    for magic in xz zstd gzip; do
        case "$magic" in
            xz) off=$(LC_ALL=C grep -obUaP '\xfd\x37\x7a\x58\x5a\x00' "$img" | head -n1 | cut -d: -f1) ;;
            zstd) off=$(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$img" | head -n1 | cut -d: -f1) ;;
            gzip) off=$(LC_ALL=C grep -obUaP '\x1f\x8b\x08' "$img" | head -n1 | cut -d: -f1) ;;
        esac
        [ -n "$off" ] || continue
        case "$magic" in
            xz) tail -c +"$((off + 1))" "$img" | xz -dcq --single-stream >"$out" 2>/dev/null || true ;;
            zstd) tail -c +"$((off + 1))" "$img" | zstd -dcq >"$out" 2>/dev/null || true ;;
            gzip) tail -c +"$((off + 1))" "$img" | gzip -dcq >"$out" 2>/dev/null || true ;;
        esac
        if [ "$(head -c4 "$out" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
            return 0
        fi
    done
    rm -f "$out"
    return 1
}

# ------------------------------------------------------------------------------------------
progress "cache: $CACHE"
ensure_packages "${HOST_PACKAGES[@]}"

# --- the kernel package --------------------------------------------------------------------
# The package that linux-image-amd64 depends on, e.g. linux-image-6.1.0-56-amd64, and the
# version it pins. `apt-cache show` gives both in one call (the same Depends line that
# `apt-cache depends` prints, with the version); each apt-cache call costs ~1 s here.
KPKG=""
KPKG_VERSION=""
resolve_kernel() {
    local dep
    dep=$(LC_ALL=C apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
        sed -n 's/^Depends: *//p' | tr ',' '\n' |
        grep -Eo 'linux-image-[0-9][^ ]*( *\(= *[^)]*\))?' | head -n1) || true
    KPKG=${dep%% *}
    KPKG_VERSION=""
    case "$dep" in
        *"(="*) KPKG_VERSION=$(printf '%s\n' "$dep" | sed 's/.*(= *\([^)]*\)).*/\1/') ;;
    esac
    if [ -n "$KPKG" ] && [ -z "$KPKG_VERSION" ]; then
        KPKG_VERSION=$(LC_ALL=C apt-cache policy "$KPKG" 2>/dev/null |
            awk '$1 == "Candidate:" { print $2; exit }')
    fi
    [ -n "$KPKG" ]
}
if ! resolve_kernel; then
    apt_update_once
    resolve_kernel || die "cannot tell which kernel linux-image-amd64 depends on (apt-cache)"
fi
KVER=${KPKG#linux-image-}

DEB_DIR=$CACHE/debs
mkdir -p "$DEB_DIR"
# apt-get download names files with ':' in the version escaped as %3a.
DEB="$DEB_DIR/${KPKG}_${KPKG_VERSION//:/%3a}_amd64.deb"
if [ -n "$KPKG_VERSION" ] && [ "$KPKG_VERSION" != "(none)" ] && [ -s "$DEB" ] &&
    dpkg-deb --info "$DEB" >/dev/null 2>&1; then
    progress "kernel $KVER: package $KPKG $KPKG_VERSION cached"
else
    progress "downloading $KPKG ${KPKG_VERSION:-} (apt-get download)"
    # As root, apt would otherwise try to drop to the _apt user, which cannot write here.
    sandbox=()
    [ "$(id -u)" != 0 ] || sandbox=(-o APT::Sandbox::User=root)
    download() { (cd "$SCRATCH" && apt-get download -q "${sandbox[@]}" "$KPKG${KPKG_VERSION:+=$KPKG_VERSION}" >&2); }
    if ! download; then
        # The mirror may have moved on (a newer ABI replaced this package): refresh the lists.
        apt_update_once
        resolve_kernel || die "cannot resolve linux-image-amd64 after apt-get update"
        KVER=${KPKG#linux-image-}
        download || die "apt-get download $KPKG failed"
    fi
    got=$(find "$SCRATCH" -maxdepth 1 -name "${KPKG}_*.deb" | head -n1)
    [ -n "$got" ] || die "apt-get download $KPKG produced no .deb"
    DEB="$DEB_DIR/${got##*/}"
    mv -f "$got" "$DEB"
    KPKG_VERSION=$(dpkg-deb -f "$DEB" Version)
fi

# --- kernel and modules, unpacked and pruned -----------------------------------------------
# $CACHE/kernel/$KVER keeps vmlinuz, config, modules.dep/builtin and only the modules the
# guest needs (the full tree is ~400 MB). Its stamp names the package and the module list,
# so changing either unpacks again from the cached .deb.
KDIR=$CACHE/kernel/$KVER
# Bump KLAYOUT when the way this directory is produced changes.
KLAYOUT=2
KSTAMP="layout=$KLAYOUT deb=${DEB##*/} modules=${WANTED_MODULES[*]}"
if [ -f "$KDIR/.stamp" ] && [ "$(cat "$KDIR/.stamp")" = "$KSTAMP" ]; then
    progress "kernel $KVER: modules cached"
else
    progress "unpacking ${DEB##*/} (dpkg-deb -x)"
    root=$SCRATCH/kernel-root
    dpkg-deb -x "$DEB" "$root"
    src_mods=$root/lib/modules/$KVER
    [ -d "$src_mods" ] || die "no lib/modules/$KVER in ${DEB##*/}"
    vmlinuz_src=$root/boot/vmlinuz-$KVER
    [ -f "$vmlinuz_src" ] || die "no boot/vmlinuz-$KVER in ${DEB##*/}"
    # Debian's package does not ship modules.dep (its postinst runs depmod): generate it.
    if [ ! -s "$src_mods/modules.dep" ]; then
        progress "generating modules.dep (depmod -b)"
        depmod -b "$root" "$KVER"
    fi

    # modules.dep: "<path>: <dep path> <dep path>..."; index it by module name.
    declare -A DEP_PATH=() DEP_LIST=() BUILTIN=() SEEN=()
    while IFS= read -r line; do
        path=${line%%:*}
        name=$(mod_name "$path")
        DEP_PATH[$name]=$path
        DEP_LIST[$name]=${line#*:}
    done <"$src_mods/modules.dep"
    if [ -f "$src_mods/modules.builtin" ]; then
        while IFS= read -r path; do
            BUILTIN[$(mod_name "$path")]=1
        done <"$src_mods/modules.builtin"
    fi

    # Depth-first: dependencies before the module that needs them.
    ORDER=()
    SKIPPED=()
    visit() {
        local name=$1 dep
        [ -z "${SEEN[$name]:-}" ] || return 0
        SEEN[$name]=1
        if [ -n "${BUILTIN[$name]:-}" ]; then
            SKIPPED+=("$name")
            return 0
        fi
        [ -n "${DEP_PATH[$name]:-}" ] || die "module $name is neither in modules.dep nor built in"
        for dep in ${DEP_LIST[$name]}; do
            visit "$(mod_name "$dep")"
        done
        ORDER+=("${DEP_PATH[$name]}")
    }
    for m in "${WANTED_MODULES[@]}"; do
        visit "${m//-/_}"
    done
    [ ${#SKIPPED[@]} -eq 0 ] || progress "built into the kernel (skipped): ${SKIPPED[*]}"

    # Copy the needed modules, decompressed (busybox insmod takes plain .ko files).
    new=$SCRATCH/kernel-pruned
    mkdir -p "$new/modules"
    : >"$new/modules.load"
    for rel in "${ORDER[@]}"; do
        plain=${rel%.xz}
        plain=${plain%.zst}
        plain=${plain%.gz}
        mkdir -p "$new/modules/$(dirname "$plain")"
        case "$rel" in
            *.ko.xz) ensure_packages xz-utils; xz -dc "$src_mods/$rel" >"$new/modules/$plain" ;;
            *.ko.zst) ensure_packages zstd; zstd -qdc "$src_mods/$rel" >"$new/modules/$plain" ;;
            *.ko.gz) gzip -dc "$src_mods/$rel" >"$new/modules/$plain" ;;
            *.ko) cp "$src_mods/$rel" "$new/modules/$plain" ;;
            *) die "unexpected module file $rel" ;;
        esac
        [ "$rel" = "$plain" ] || progress "decompressed $rel"
        echo "$plain" >>"$new/modules.load"
    done
    cp "$vmlinuz_src" "$new/vmlinuz"
    if extract_vmlinux "$vmlinuz_src" "$new/vmlinux"; then
        progress "extracted the uncompressed kernel (vmlinux, PVH entry) for faster boots"
    else
        progress "could not extract vmlinux from vmlinuz (only vmlinuz will be available)"
    fi
    cp "$root/boot/config-$KVER" "$new/config" 2>/dev/null || true
    cp "$src_mods/modules.dep" "$src_mods/modules.builtin" "$new/"
    echo "$KSTAMP" >"$new/.stamp"
    mkdir -p "$CACHE/kernel"
    rm -rf "$KDIR"
    mv "$new" "$KDIR"
    rm -rf "$root"
    progress "modules (load order): $(sed 's|.*/||; s|\.ko$||' "$KDIR/modules.load" | paste -sd' ')"
fi

# Replaces $2 with $1 when they differ (atomically).
install_if_changed() {
    if ! cmp -s "$1" "$2"; then
        cp "$1" "$2.new"
        mv -f "$2.new" "$2"
    fi
}
install_if_changed "$KDIR/vmlinuz" "$CACHE/vmlinuz"
if [ -f "$KDIR/vmlinux" ]; then
    install_if_changed "$KDIR/vmlinux" "$CACHE/vmlinux"
else
    rm -f "$CACHE/vmlinux"
fi
echo "$KVER" >"$SCRATCH/kernel-version"
install_if_changed "$SCRATCH/kernel-version" "$CACHE/kernel-version"

# --- guest tools ---------------------------------------------------------------------------
if [ "$NO_TOOLS" = 1 ]; then
    TOOLS=()
    progress "guest tools: none (--no-tools)"
elif [ ${#TOOLS[@]} -eq 0 ] && [ -n "${SOCKBYPASS_GUEST_TOOLS:-}" ]; then
    IFS=: read -r -a TOOLS <<<"$SOCKBYPASS_GUEST_TOOLS"
fi
if [ "$NO_TOOLS" = 0 ] && [ ${#TOOLS[@]} -eq 0 ]; then
    tools_build=$REPO/integration/guest-tools/build.sh
    if [ -f "$tools_build" ]; then
        progress "building guest tools ($tools_build)"
        out=$(bash "$tools_build" </dev/null) || die "$tools_build failed"
        # Its last stdout line is the binary; earlier lines are its progress.
        printf '%s\n' "$out" | sed '$d' >&2
        bin=$(printf '%s\n' "$out" | tail -n1)
        [ -n "$bin" ] || die "$tools_build printed no binary path"
        TOOLS=("$bin")
    else
        progress "guest tools: none ($tools_build does not exist yet); building without them"
    fi
fi
for t in "${TOOLS[@]}"; do
    if [ ! -f "$t" ] || [ ! -x "$t" ]; then
        die "guest tool $t is not an executable file"
    fi
done

# --- stage the initramfs tree --------------------------------------------------------------
progress "staging the initramfs"
STAGE=$SCRATCH/stage
mkdir -p "$STAGE"/{bin,dev,etc,proc,sys,tmp,run,root,mnt,"lib/modules/$KVER"}
ln -s bin "$STAGE/sbin"
mkdir -p "$STAGE/usr"
ln -s ../bin "$STAGE/usr/bin"
ln -s ../bin "$STAGE/usr/sbin"
chmod 1777 "$STAGE/tmp"
chmod 700 "$STAGE/root"

# busybox, with every applet as a symlink in /bin.
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing (busybox-static)"
! is_dynamic "$BUSYBOX" || die "$BUSYBOX is dynamically linked: install busybox-static"
cp "$BUSYBOX" "$STAGE/bin/busybox"
mapfile -t APPLETS < <("$BUSYBOX" --list)
# Looked up in a table, not with `printf | grep -q`: grep -q exits at the first match, printf
# may then die of SIGPIPE, and pipefail turned that into a missing applet now and then.
declare -A HAVE_APPLET=()
for a in "${APPLETS[@]}"; do
    HAVE_APPLET[$a]=1
done
for a in "${REQUIRED_APPLETS[@]}"; do
    [ -n "${HAVE_APPLET[$a]:-}" ] || die "busybox has no '$a' applet"
done
for a in "${APPLETS[@]}"; do
    case "$a" in busybox | */* | '') continue ;; esac
    ln -s busybox "$STAGE/bin/$a"
done

# /init and a few files that some tools expect.
install -m 0755 "$HERE/init" "$STAGE/init"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$STAGE/etc/passwd"
printf 'root:x:0:\n' >"$STAGE/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$STAGE/etc/hosts"
# The initial console (the kernel's built-in initramfs has one too; devtmpfs replaces it).
if [ "$(id -u)" = 0 ]; then
    mknod -m 600 "$STAGE/dev/console" c 5 1
fi

# Modules, and the list /init loads in order.
cp -a "$KDIR/modules/." "$STAGE/lib/modules/$KVER/"
sed "s|^|/lib/modules/$KVER/|" "$KDIR/modules.load" >"$STAGE/etc/sb-modules"
sed "s|^|/lib/modules/$KVER/|" "$KDIR/modules.load" >"$SCRATCH/modules.load"
install_if_changed "$SCRATCH/modules.load" "$CACHE/modules.load"

# Guest tools (a dynamic one brings its loader and libraries, at the same paths).
for t in "${TOOLS[@]}"; do
    install -m 0755 "$t" "$STAGE/bin/${t##*/}"
    if is_dynamic "$t"; then
        progress "guest tool ${t##*/} is dynamically linked: copying its libraries"
        while IFS= read -r lib; do
            mkdir -p "$STAGE$(dirname "$lib")"
            cp -L "$lib" "$STAGE$lib"
        done < <(ldd "$t" | grep -o '/[^ ]*' | sort -u)
    fi
    progress "guest tool: /bin/${t##*/} ($(du -h "$t" | cut -f1))"
    # Debian's busybox sh runs its own applet for a name it knows, whatever is in /bin.
    if [ -n "${HAVE_APPLET[${t##*/}]:-}" ]; then
        progress "warning: ${t##*/} is also a busybox applet: call it as /bin/${t##*/} in the guest"
    fi
done

# --- build the initramfs when its contents changed -----------------------------------------
# The hash covers every path, type, mode, symlink target and file content of the staged tree.
tree_hash() {
    (
        cd "$1"
        LC_ALL=C find . -printf '%y %m %p -> %l\n' | LC_ALL=C sort
        LC_ALL=C find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    ) | sha256sum | cut -d' ' -f1
}
INITRD=$CACHE/initramfs.cpio.gz
STAMP=$CACHE/initramfs.stamp
hash="gzip $(tree_hash "$STAGE")"
if [ "$FORCE" = 0 ] && [ -s "$INITRD" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$hash" ]; then
    progress "initramfs up to date ($(du -h "$INITRD" | cut -f1))"
else
    progress "building the initramfs (cpio + gzip)"
    (
        cd "$STAGE"
        LC_ALL=C find . -print0 | LC_ALL=C sort -z |
            cpio --null --create --format=newc --owner=0:0 --reproducible --quiet
    ) | gzip -6 -n >"$SCRATCH/initramfs.cpio.gz"
    mv -f "$SCRATCH/initramfs.cpio.gz" "$INITRD"
    echo "$hash" >"$STAMP.new"
    mv -f "$STAMP.new" "$STAMP"
    progress "initramfs built ($(du -h "$INITRD" | cut -f1))"
fi

# Drop what an older kernel left behind (after a kernel update the cache would only grow).
for d in "$CACHE"/kernel/*; do
    [ "$d" = "$KDIR" ] || [ ! -d "$d" ] || { progress "removing old ${d#"$CACHE"/}"; rm -rf "$d"; }
done
for f in "$DEB_DIR"/*.deb; do
    [ "$f" = "$DEB" ] || [ ! -f "$f" ] || { progress "removing old ${f#"$CACHE"/}"; rm -f "$f"; }
done

progress "kernel $KVER ($KPKG $KPKG_VERSION), vmlinuz $(du -h "$CACHE/vmlinuz" | cut -f1)"
echo "$CACHE"
