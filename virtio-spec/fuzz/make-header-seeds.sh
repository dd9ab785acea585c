#!/usr/bin/env bash
# Writes the seed corpus of the `header` target (corpus/header/): one input per kind of packet
# SPEC.md §3 and §9 distinguish. Input layout (see fuzz_targets/header.rs): config offset (le32),
# config size (le32), guest_cid (le64), event record (4 bytes), cut (le16), then the packet.
set -euo pipefail
out="$(dirname "$0")/corpus/header"
mkdir -p "$out"

# Little-endian bytes of a number, as printf escapes.
le() {
    local width=$1 value=$2 i s=''
    for ((i = 0; i < width; i++)); do
        s+=$(printf '\\x%02x' $(((value >> (8 * i)) & 255)))
    done
    printf '%s' "$s"
}

# seed NAME OFFSET SIZE CUT SRC_CID DST_CID SRC_PORT DST_PORT LEN TYPE OP FLAGS PAYLOAD_BYTES
seed() {
    local name=$1
    {
        printf "$(le 4 "$2")$(le 4 "$3")$(le 8 3)$(le 4 0)$(le 2 "$4")"
        printf "$(le 8 "$5")$(le 8 "$6")$(le 4 "$7")$(le 4 "$8")$(le 4 "$9")"
        printf "$(le 2 "${10}")$(le 2 "${11}")$(le 4 "${12}")$(le 4 65536)$(le 4 0)"
        head -c "${13}" /dev/zero | tr '\0' 'x'
    } >"$out/$name"
}

#    name               off size cut src dst sport dport len    type op flags payload
seed request            0   8    0   3   4   1024  80    0      1    1  0     0
seed response           2   4    0   4   3   80    1024  0      1    2  0     0
seed rst                8   1    0   3   4   1024  80    0      1    3  0     0
seed shutdown-both      0   0    0   3   4   1024  80    0      1    4  3     0
seed rw-split           7   9    50  3   4   1024  80    100    1    5  0     100
seed rw-max             0   8    44  3   4   1024  80    65536  1    5  0     65536
seed rw-over-chain      0   8    0   3   4   1024  80    101    1    5  0     100
seed rw-over-max        0   8    0   3   4   1024  80    65537  1    5  0     65537
seed credit-request     0   8    0   3   2   1024  22    0      1    7  0     0
seed control-with-len   0   8    0   3   4   1024  80    4      1    6  0     4
seed seqpacket          0   8    0   3   4   1024  80    0      2    1  0     0
seed unknown-op         0   8    0   3   4   1024  80    0      1    8  0     0
# A chain shorter than the header.
printf "$(le 4 4)$(le 4 4)$(le 8 3)$(le 4 0)$(le 2 0)short" >"$out/short"
