//! Fast-path pairs (SPEC.md §13.1): two VMs that share a pair window for direct connections.
//! `--pair A,B[,size=N]` on the command line, `[[pair]]` tables (`vms = ["A", "B"]`, `size`)
//! in the config file. Value rules (the VMs exist, have `fastpath=on`, differ, pair once) are
//! checked with the VMs in [`super::validate`].

use super::{ConfigError, DEFAULT_FASTPATH_SIZE};

/// Two VMs that share a pair window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairConfig {
    /// The two VMs' names, as given.
    pub vms: [String; 2],
    /// The pair window's size ([`DEFAULT_FASTPATH_SIZE`] unless given).
    pub size: u64,
}

impl PairConfig {
    /// Parses `A,B[,size=N]`.
    pub fn from_spec(spec: &str) -> Result<PairConfig, ConfigError> {
        let bad = || ConfigError::PairSpec {
            spec: spec.to_owned(),
        };
        let mut items = spec.split(',');
        let (Some(a), Some(b)) = (items.next(), items.next()) else {
            return Err(bad());
        };
        if a.is_empty() || b.is_empty() || a.contains('=') || b.contains('=') {
            return Err(bad());
        }
        let size = match (items.next(), items.next()) {
            (None, _) => DEFAULT_FASTPATH_SIZE,
            (Some(size), None) => {
                let value = size.strip_prefix("size=").ok_or_else(bad)?;
                value.parse().map_err(|_| bad())?
            }
            (Some(_), Some(_)) => return Err(bad()),
        };
        Ok(PairConfig {
            vms: [a.to_owned(), b.to_owned()],
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_specs() {
        assert_eq!(
            PairConfig::from_spec("a,b").unwrap(),
            PairConfig {
                vms: ["a".into(), "b".into()],
                size: DEFAULT_FASTPATH_SIZE
            }
        );
        assert_eq!(
            PairConfig::from_spec("a,b,size=2097152").unwrap().size,
            2 << 20
        );
        for bad in [
            "a",
            "a,",
            ",b",
            "a,b,2097152",
            "a,b,size=2M",
            "a,b,size=1,x",
            "name=a,b",
        ] {
            let e = PairConfig::from_spec(bad).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("--pair `{bad}`: expected VM,VM[,size=BYTES]")
            );
        }
    }
}
