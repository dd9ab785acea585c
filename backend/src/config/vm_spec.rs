//! Parsing one `--vm` spec: `name=NAME,cid=CID,socket=PATH[,uds=PATH][,groups=G1+G2][,ports=P1+P2][,ips=IP1+IP2][,max_conns=N][,max_conns_per_peer=N][,host_buffer_bytes=N][,fastpath=on|off][,fastpath_size=N]`.
//!
//! Only the syntax is checked here; value rules (CID range, name characters, ...) are in
//! [`super::validate`] so that `--vm` and `--config` VMs are held to the same rules.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use super::{
    ConfigError, VmConfig, DEFAULT_FASTPATH_SIZE, DEFAULT_HOST_BUFFER_BYTES, DEFAULT_MAX_CONNS,
};

/// Every key a spec may have, in the order `--help` lists them.
const KEYS: [&str; 12] = [
    "name",
    "cid",
    "socket",
    "uds",
    "groups",
    "ports",
    "ips",
    "max_conns",
    "max_conns_per_peer",
    "host_buffer_bytes",
    "fastpath",
    "fastpath_size",
];

impl VmConfig {
    /// Parses one `--vm` spec. Keys may come in any order; each at most once.
    pub fn from_spec(spec: &str) -> Result<VmConfig, ConfigError> {
        // One slot per entry of KEYS.
        let mut values: [Option<&str>; KEYS.len()] = [None; KEYS.len()];
        for item in spec.split(',') {
            let Some((key, value)) = item.split_once('=') else {
                return Err(ConfigError::SpecMalformed {
                    spec: spec.to_owned(),
                    item: item.to_owned(),
                });
            };
            let Some(slot) = KEYS.iter().position(|k| *k == key) else {
                return Err(ConfigError::SpecUnknownKey {
                    spec: spec.to_owned(),
                    key: key.to_owned(),
                    known: KEYS.join(", "),
                });
            };
            if values[slot].is_some() {
                return Err(ConfigError::SpecDuplicateKey {
                    spec: spec.to_owned(),
                    key: key.to_owned(),
                });
            }
            if value.is_empty() {
                return Err(ConfigError::SpecEmptyValue {
                    spec: spec.to_owned(),
                    key: key.to_owned(),
                });
            }
            values[slot] = Some(value);
        }
        let [name, cid, socket, uds, groups, ports, ips, max_conns, per_peer, host_buffer, fastpath, fastpath_size] =
            values;
        let name = required(spec, "name", name)?;
        let cid = required(spec, "cid", cid)?;
        let socket = required(spec, "socket", socket)?;

        Ok(VmConfig {
            name: name.to_owned(),
            cid: number(spec, "cid", cid)?,
            socket: PathBuf::from(socket),
            uds: uds.map(PathBuf::from),
            groups: match groups {
                Some(groups) => list(spec, "groups", groups)?
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                None => Vec::new(),
            },
            ports: match ports {
                Some(ports) => Some(
                    list(spec, "ports", ports)?
                        .into_iter()
                        .map(|port| number(spec, "ports", port))
                        .collect::<Result<_, _>>()?,
                ),
                None => None,
            },
            ips: match ips {
                Some(ips) => list(spec, "ips", ips)?
                    .into_iter()
                    .map(|ip| address(spec, ip))
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            },
            max_conns: match max_conns {
                Some(max_conns) => number(spec, "max_conns", max_conns)?,
                None => DEFAULT_MAX_CONNS,
            },
            max_conns_per_peer: per_peer
                .map(|v| number(spec, "max_conns_per_peer", v))
                .transpose()?,
            host_buffer_bytes: match host_buffer {
                Some(v) => number(spec, "host_buffer_bytes", v)?,
                None => DEFAULT_HOST_BUFFER_BYTES,
            },
            fastpath_size: fastpath_size_of(spec, fastpath, fastpath_size)?,
        })
    }
}

/// The window size of `fastpath=on|off` and `fastpath_size=N`: `None` when the fast path is
/// off. A size without `fastpath=on` is an error, so that a typo does not leave it off.
fn fastpath_size_of(
    spec: &str,
    fastpath: Option<&str>,
    size: Option<&str>,
) -> Result<Option<u64>, ConfigError> {
    let on = match fastpath {
        Some("on") => true,
        None | Some("off") => false,
        Some(other) => {
            return Err(ConfigError::SpecBadSwitch {
                spec: spec.to_owned(),
                key: "fastpath",
                value: other.to_owned(),
            })
        }
    };
    match (on, size) {
        (true, Some(size)) => Ok(Some(number(spec, "fastpath_size", size)?)),
        (true, None) => Ok(Some(DEFAULT_FASTPATH_SIZE)),
        (false, Some(_)) => Err(ConfigError::SpecFastpathSizeWithoutFastpath {
            spec: spec.to_owned(),
        }),
        (false, None) => Ok(None),
    }
}

/// The value of a required key.
fn required<'a>(
    spec: &str,
    key: &'static str,
    value: Option<&'a str>,
) -> Result<&'a str, ConfigError> {
    value.ok_or_else(|| ConfigError::SpecMissingKey {
        spec: spec.to_owned(),
        key,
    })
}

/// Parses a decimal number; `value` is named in the error.
fn number<T: FromStr<Err = std::num::ParseIntError>>(
    spec: &str,
    key: &str,
    value: &str,
) -> Result<T, ConfigError> {
    value.parse().map_err(|source| ConfigError::SpecBadNumber {
        spec: spec.to_owned(),
        key: key.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Parses an IPv4 or IPv6 address of `ips`.
fn address(spec: &str, value: &str) -> Result<IpAddr, ConfigError> {
    value.parse().map_err(|source| ConfigError::SpecBadAddress {
        spec: spec.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Splits a `+`-separated list, rejecting empty elements.
fn list<'a>(spec: &str, key: &str, value: &'a str) -> Result<Vec<&'a str>, ConfigError> {
    let items: Vec<&str> = value.split('+').collect();
    if items.iter().any(|item| item.is_empty()) {
        return Err(ConfigError::SpecEmptyListItem {
            spec: spec.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(spec: &str) -> ConfigError {
        VmConfig::from_spec(spec).unwrap_err()
    }

    #[test]
    fn minimal_spec() {
        assert_eq!(
            VmConfig::from_spec("name=web,cid=3,socket=/run/sb/web.sock").unwrap(),
            VmConfig::new("web", 3, "/run/sb/web.sock")
        );
    }

    #[test]
    fn full_spec_in_any_order() {
        assert_eq!(
            VmConfig::from_spec(
                "max_conns=7,ports=22+80+0,groups=prod+db,uds=/run/sb/web.vsock,socket=/run/sb/a=b.sock,cid=4294967296,name=web"
            )
            .unwrap(),
            VmConfig {
                uds: Some(PathBuf::from("/run/sb/web.vsock")),
                groups: vec!["prod".to_owned(), "db".to_owned()],
                ports: Some(vec![22, 80, 0]),
                max_conns: 7,
                ..VmConfig::new("web", 4_294_967_296, "/run/sb/a=b.sock")
            }
        );
    }

    #[test]
    fn ips_are_v4_or_v6_addresses() {
        let vm = VmConfig::from_spec("name=web,cid=3,socket=/s,ips=10.0.0.3+fd00::3").unwrap();
        assert_eq!(
            vm.ips,
            [
                "10.0.0.3".parse::<IpAddr>().unwrap(),
                "fd00::3".parse::<IpAddr>().unwrap()
            ]
        );
        assert!(VmConfig::from_spec("name=web,cid=3,socket=/s")
            .unwrap()
            .ips
            .is_empty());
        for bad in ["10.0.0", "web.example", "10.0.0.3/24", "[fd00::3]"] {
            let e = err(&format!("name=web,cid=3,socket=/s,ips=10.0.0.9+{bad}"));
            assert!(
                matches!(&e, ConfigError::SpecBadAddress { value, .. } if value == bad),
                "{bad}: {e:?}"
            );
            assert!(e
                .to_string()
                .contains(&format!("bad address `{bad}` in `ips`")));
        }
        assert!(matches!(
            err("name=web,cid=3,socket=/s,ips=10.0.0.3+"),
            ConfigError::SpecEmptyListItem { .. }
        ));
    }

    #[test]
    fn fastpath_is_off_unless_on_and_a_size_needs_it_on() {
        let spec = |extra: &str| format!("name=web,cid=3,socket=/s{extra}");
        assert_eq!(VmConfig::from_spec(&spec("")).unwrap().fastpath_size, None);
        assert_eq!(
            VmConfig::from_spec(&spec(",fastpath=off"))
                .unwrap()
                .fastpath_size,
            None
        );
        assert_eq!(
            VmConfig::from_spec(&spec(",fastpath=on"))
                .unwrap()
                .fastpath_size,
            Some(DEFAULT_FASTPATH_SIZE)
        );
        assert_eq!(
            VmConfig::from_spec(&spec(",fastpath_size=1048576,fastpath=on"))
                .unwrap()
                .fastpath_size,
            Some(1 << 20)
        );
        let e = err(&spec(",fastpath=yes"));
        assert!(
            e.to_string()
                .contains("`fastpath` must be on or off, got `yes`"),
            "{e}"
        );
        let e = err(&spec(",fastpath_size=1048576"));
        assert!(
            e.to_string().contains("fastpath_size needs fastpath=on"),
            "{e}"
        );
        assert!(matches!(
            err(&spec(",fastpath=on,fastpath_size=16M")),
            ConfigError::SpecBadNumber { .. }
        ));
    }

    #[test]
    fn unknown_key() {
        let e = err("name=web,cidd=3,socket=/s");
        assert!(
            matches!(&e, ConfigError::SpecUnknownKey { key, .. } if key == "cidd"),
            "{e:?}"
        );
        assert!(e.to_string().contains("unknown key `cidd` (known keys: name, cid, socket, uds, groups, ports, ips, max_conns, max_conns_per_peer, host_buffer_bytes, fastpath, fastpath_size)"), "{e}");
    }

    #[test]
    fn missing_keys() {
        for (spec, missing) in [
            ("cid=3,socket=/s", "name"),
            ("name=web,socket=/s", "cid"),
            ("name=web,cid=3", "socket"),
        ] {
            let e = err(spec);
            assert!(
                matches!(&e, ConfigError::SpecMissingKey { key, .. } if *key == missing),
                "{e:?}"
            );
            assert!(
                e.to_string()
                    .contains(&format!("missing required key `{missing}`")),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_numbers() {
        for (spec, bad_key, bad_value) in [
            ("name=web,cid=three,socket=/s", "cid", "three"),
            ("name=web,cid=-3,socket=/s", "cid", "-3"),
            (
                "name=web,cid=18446744073709551616,socket=/s",
                "cid",
                "18446744073709551616",
            ),
            ("name=web,cid=3,socket=/s,ports=22+x", "ports", "x"),
            (
                "name=web,cid=3,socket=/s,ports=4294967296",
                "ports",
                "4294967296",
            ),
            ("name=web,cid=3,socket=/s,max_conns=1k", "max_conns", "1k"),
        ] {
            let e = err(spec);
            assert!(
                matches!(&e, ConfigError::SpecBadNumber { key, value, .. } if key == bad_key && value == bad_value),
                "{spec}: {e:?}"
            );
            assert!(
                e.to_string()
                    .contains(&format!("bad number `{bad_value}` for key `{bad_key}`")),
                "{e}"
            );
        }
    }

    #[test]
    fn empty_value() {
        let e = err("name=,cid=3,socket=/s");
        assert!(
            matches!(&e, ConfigError::SpecEmptyValue { key, .. } if key == "name"),
            "{e:?}"
        );
        let e = err("name=web,cid=3,socket=/s,groups=");
        assert!(
            matches!(&e, ConfigError::SpecEmptyValue { key, .. } if key == "groups"),
            "{e:?}"
        );
    }

    #[test]
    fn empty_list_element() {
        let e = err("name=web,cid=3,socket=/s,groups=a++b");
        assert!(
            matches!(&e, ConfigError::SpecEmptyListItem { key, value, .. } if key == "groups" && value == "a++b"),
            "{e:?}"
        );
        let e = err("name=web,cid=3,socket=/s,ports=22+");
        assert!(
            matches!(&e, ConfigError::SpecEmptyListItem { key, .. } if key == "ports"),
            "{e:?}"
        );
    }

    #[test]
    fn duplicate_key() {
        let e = err("name=web,cid=3,socket=/s,cid=4");
        assert!(
            matches!(&e, ConfigError::SpecDuplicateKey { key, .. } if key == "cid"),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("key `cid` given more than once"),
            "{e}"
        );
    }

    #[test]
    fn malformed_items() {
        for (spec, bad) in [
            ("name=web,cid=3,socket=/s,", ""),
            ("name=web,,cid=3,socket=/s", ""),
            ("", ""),
            ("name=web,cid=3,socket=/s,verbose", "verbose"),
        ] {
            let e = err(spec);
            assert!(
                matches!(&e, ConfigError::SpecMalformed { item, .. } if item == bad),
                "{spec}: {e:?}"
            );
        }
    }

    #[test]
    fn messages_are_one_line() {
        for spec in ["name=web\ncid=3,socket=/s", "name=web,cid=x,socket=/s"] {
            let e = err(spec);
            let chain = crate::error_chain(&e);
            assert!(!chain.contains('\n'), "{chain}");
        }
    }
}
