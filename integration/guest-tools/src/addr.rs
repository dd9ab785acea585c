//! Peer addresses: `vsock:CID:PORT` (AF_VSOCK stream) or `tcp:IPV4:PORT`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::error::Error;

/// Where a client connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    /// AF_VSOCK stream socket.
    Vsock {
        /// Context id (2 is the host).
        cid: u32,
        /// Port.
        port: u32,
    },
    /// TCP over IPv4.
    Tcp(SocketAddrV4),
}

impl Addr {
    /// Parses `vsock:CID:PORT` or `tcp:IPV4:PORT`.
    pub fn parse(input: &str) -> Result<Addr, Error> {
        let bad = |reason| Error::Addr {
            input: input.to_owned(),
            reason,
        };
        let (scheme, rest) = input
            .split_once(':')
            .ok_or_else(|| bad("expected vsock:CID:PORT or tcp:IPV4:PORT"))?;
        if scheme != "vsock" && scheme != "tcp" {
            return Err(bad("scheme must be vsock or tcp"));
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing :PORT"))?;
        match scheme {
            "vsock" => {
                let cid = host.parse::<u32>().map_err(|_| bad("CID is not a u32"))?;
                let port = port.parse::<u32>().map_err(|_| bad("port is not a u32"))?;
                Ok(Addr::Vsock { cid, port })
            }
            "tcp" => {
                let ip = host
                    .parse::<Ipv4Addr>()
                    .map_err(|_| bad("not an IPv4 address"))?;
                let port = port.parse::<u16>().map_err(|_| bad("port is not a u16"))?;
                Ok(Addr::Tcp(SocketAddrV4::new(ip, port)))
            }
            _ => Err(bad("scheme must be vsock or tcp")),
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Addr::Tcp(sa) => write!(f, "tcp:{sa}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_and_tcp_parse() {
        assert_eq!(
            Addr::parse("vsock:3:5000").ok(),
            Some(Addr::Vsock { cid: 3, port: 5000 })
        );
        assert_eq!(
            Addr::parse("vsock:4294967295:4294967295").ok(),
            Some(Addr::Vsock {
                cid: u32::MAX,
                port: u32::MAX
            })
        );
        assert_eq!(
            Addr::parse("tcp:10.99.0.3:5001").ok(),
            Some(Addr::Tcp(SocketAddrV4::new(
                Ipv4Addr::new(10, 99, 0, 3),
                5001
            )))
        );
    }

    #[test]
    fn display_round_trips() {
        for s in ["vsock:2:6000", "tcp:127.0.0.1:1"] {
            assert_eq!(
                Addr::parse(s).map(|a| a.to_string()).ok().as_deref(),
                Some(s)
            );
        }
    }

    #[test]
    fn malformed_addresses_are_errors() {
        for s in [
            "",
            "vsock",
            "vsock:3",
            "vsock::5000",
            "vsock:3:",
            "vsock:-1:5",
            "vsock:3:4294967296",
            "vsock:x:5",
            "tcp:10.0.0.1",
            "tcp:10.0.0.1:65536",
            "tcp:10.0.0:80",
            "tcp:localhost:80",
            "tcp:[::1]:80",
            "udp:1.2.3.4:5",
            "3:5000",
        ] {
            assert!(
                matches!(Addr::parse(s), Err(Error::Addr { .. })),
                "{s:?} should not parse"
            );
        }
    }
}
