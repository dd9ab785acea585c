//! Guest shell lines around `sbtool` (integration/guest-tools), for the command lines guests run.

/// A guest shell line that waits until `addr` accepts connections (the server guest boots in
/// parallel), giving up with status 9 after about two minutes.
pub fn wait_for_server(addr: &str) -> String {
    format!(
        "i=0; until sbtool connect {addr} >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 600 ] && exit 9; sleep 0.2; done\n"
    )
}
