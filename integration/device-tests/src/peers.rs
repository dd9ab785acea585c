//! Driving several guest drivers from one thread: connecting two VMs through the switch,
//! pumping until a condition holds, and comparing received bytes.
//!
//! A guest driver only reacts when it is pumped, so a VM-to-VM handshake needs both drivers
//! pumped in turn; [`drive`] does that with a short slice per driver and an overall timeout.

use std::time::{Duration, Instant};

use sockbypass_frontend::{StreamId, StreamState, TestVm};

use crate::sha256;

/// How long one driver may wait for its device before the next driver's turn.
const SLICE: Duration = Duration::from_millis(1);

/// Pumps every VM's driver in turn until `cond` holds; panics naming `what` after `timeout`.
pub fn drive(
    vms: &mut [&mut TestVm],
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut(&mut [&mut TestVm]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond(vms) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        for vm in vms.iter_mut() {
            vm.driver_mut().pump(SLICE).expect("pump a guest driver");
        }
    }
}

/// `client` connects to `port` of `server` (made to listen if it does not yet), both pumped
/// from this thread. Returns (client's stream, server's stream). Panics if refused, or if
/// another connection to `port` is waiting to be accepted.
pub fn connect_peers(
    client: &mut TestVm,
    server: &mut TestVm,
    port: u32,
    timeout: Duration,
) -> (StreamId, StreamId) {
    // Already listening is fine.
    let _ = server.driver_mut().listen(port);
    let id = client
        .driver_mut()
        .connect(server.guest_cid(), port)
        .expect("REQUEST queued");
    let local_port = client.driver().stream_info(id).expect("info").local_port;
    let client_cid = client.guest_cid();
    let mut accepted = None;
    drive(
        &mut [client, server],
        timeout,
        &format!("a connection to port {port}"),
        |vms| {
            if accepted.is_none() {
                accepted = vms[1].driver_mut().accept(port).expect("listening");
                if let Some(s) = accepted {
                    let info = vms[1].driver().stream_info(s).expect("info");
                    assert_eq!(
                        (info.peer_cid, info.peer_port),
                        (client_cid, local_port),
                        "the server accepted someone else's connection"
                    );
                }
            }
            let state = vms[0].driver().state(id).expect("state");
            assert_ne!(
                state,
                StreamState::Reset,
                "connection to port {port} refused"
            );
            accepted.is_some() && state.is_established()
        },
    );
    (id, accepted.expect("accepted"))
}

/// Panics unless `got` is `want`, comparing SHA-256 digests and naming the first difference
/// (never printing megabytes).
/// Sends `data` from `from` on stream `from_id`, and checks that `to` reads exactly those bytes
/// on stream `to_id`.
pub fn send_and_expect(
    from: &mut TestVm,
    from_id: StreamId,
    to: &mut TestVm,
    to_id: StreamId,
    data: &[u8],
    timeout: Duration,
) {
    from.driver_mut()
        .send_all(from_id, data, timeout)
        .expect("send");
    let got = to
        .driver_mut()
        .recv_exact(to_id, data.len(), timeout)
        .expect("receive");
    assert_eq!(got, data);
}

pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if sha256(got) == sha256(want) {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: got {} bytes, expected {}; first difference at byte {first}",
        got.len(),
        want.len()
    );
}
