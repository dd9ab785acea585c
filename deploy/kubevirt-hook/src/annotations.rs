//! What a VirtualMachineInstance asks of sockbypass: its name and namespace, and the
//! `sockbypass.io/*` annotations, read from the VMI JSON that virt-launcher hands the hook.
//! A VMI that also asks for KubeVirt's own vsock device is refused.

use serde_json::Value;

/// The annotation naming the VM's groups: `a,b` or `a+b` (required).
pub const GROUPS: &str = "sockbypass.io/groups";
/// The annotation fixing the VM's guest CID (optional; the daemon allocates one otherwise).
pub const CID: &str = "sockbypass.io/cid";
/// The annotation listing the ports the VM may be reached on: `22,80` or `22+80` (optional).
pub const PORTS: &str = "sockbypass.io/ports";

/// The lowest CID a guest may have: 0 and 1 are reserved, 2 is the host.
pub const MIN_GUEST_CID: u64 = 3;

/// Why a VMI cannot be attached.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    /// The VMI is not JSON.
    #[error("the VMI is not valid JSON")]
    NotJson(#[source] serde_json::Error),
    /// A required field is missing or not a string.
    #[error("the VMI has no {0}")]
    Missing(&'static str),
    /// The groups annotation is missing.
    #[error(
        "VMI {vmi} has no `{GROUPS}` annotation: name at least one group (`{GROUPS}: \"db,web\"`)"
    )]
    NoGroups {
        /// `namespace/name`.
        vmi: String,
    },
    /// A list annotation has an empty item (`a,,b`, a trailing comma, only blanks).
    #[error("VMI {vmi}: annotation `{annotation}` = `{value}` has an empty item")]
    EmptyItem {
        /// `namespace/name`.
        vmi: String,
        /// The annotation.
        annotation: &'static str,
        /// Its value.
        value: String,
    },
    /// A group name the daemon's VM spec cannot carry.
    #[error(
        "VMI {vmi}: group `{group}` in `{GROUPS}` may only use A-Z, a-z, 0-9, `_`, `.` and `-`"
    )]
    BadGroup {
        /// `namespace/name`.
        vmi: String,
        /// The group.
        group: String,
    },
    /// The CID annotation is not a number.
    #[error("VMI {vmi}: annotation `{CID}` = `{value}` is not a number")]
    BadCid {
        /// `namespace/name`.
        vmi: String,
        /// Its value.
        value: String,
        /// Cause.
        #[source]
        source: std::num::ParseIntError,
    },
    /// The CID annotation names a reserved CID.
    #[error("VMI {vmi}: annotation `{CID}` = {cid} is reserved (0-2); guests have CID 3 or more")]
    ReservedCid {
        /// `namespace/name`.
        vmi: String,
        /// The CID.
        cid: u64,
    },
    /// A port is not a number.
    #[error("VMI {vmi}: port `{value}` in `{PORTS}` is not a number")]
    BadPort {
        /// `namespace/name`.
        vmi: String,
        /// The item.
        value: String,
        /// Cause.
        #[source]
        source: std::num::ParseIntError,
    },
    /// The name or namespace has characters the daemon does not allow in a VM name.
    #[error("VMI {vmi}: `{value}` cannot be part of a sockbypass VM name (A-Z, a-z, 0-9, `_`, `.`, `-` only)")]
    BadName {
        /// `namespace/name`.
        vmi: String,
        /// The name or namespace.
        value: String,
    },
    /// The VMI asks for KubeVirt's own virtio-vsock device too.
    #[error(
        "VMI {vmi} sets spec.domain.devices.autoattachVSOCK: a guest may have only one virtio-vsock device, \
         and sockbypass provides it; remove autoattachVSOCK (or the `{GROUPS}` annotation and the sidecar)"
    )]
    AutoattachVsock {
        /// `namespace/name`.
        vmi: String,
    },
}

/// What one VMI asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmiRequest {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The groups, in annotation order.
    pub groups: Vec<String>,
    /// The CID asked for, if any.
    pub cid: Option<u64>,
    /// The ports asked for, if any.
    pub ports: Option<Vec<u32>>,
}

impl VmiRequest {
    /// The VM's name at the daemon: `NAMESPACE.NAME` (unique across the node's namespaces,
    /// since a namespace has no `.`).
    pub fn vm_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    /// The libvirt domain name KubeVirt gives this VMI: `NAMESPACE_NAME`.
    pub fn domain_name(&self) -> String {
        format!("{}_{}", self.namespace, self.name)
    }

    /// `namespace/name`, for messages.
    pub fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Reads a VMI's JSON.
pub fn parse(vmi_json: &[u8]) -> Result<VmiRequest, AnnotationError> {
    let vmi: Value = serde_json::from_slice(vmi_json).map_err(AnnotationError::NotJson)?;
    let metadata = vmi
        .get("metadata")
        .ok_or(AnnotationError::Missing("metadata"))?;
    let name = string(metadata, "name").ok_or(AnnotationError::Missing("metadata.name"))?;
    // An object read back from the API server always has its namespace; one written by hand
    // and never created may not, and is then in `default`, as kubectl would put it.
    let namespace = string(metadata, "namespace").unwrap_or("default");
    let display = format!("{namespace}/{name}");
    for part in [namespace, name] {
        if !valid_name(part) {
            return Err(AnnotationError::BadName {
                vmi: display,
                value: part.to_owned(),
            });
        }
    }
    let autoattach = vmi
        .pointer("/spec/domain/devices/autoattachVSOCK")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if autoattach {
        return Err(AnnotationError::AutoattachVsock { vmi: display });
    }
    let annotations = metadata.get("annotations");
    let annotation = |key: &str| annotations.and_then(|a| string(a, key));

    let groups_value = annotation(GROUPS).ok_or_else(|| AnnotationError::NoGroups {
        vmi: display.clone(),
    })?;
    let groups = list(&display, GROUPS, groups_value)?;
    if let Some(bad) = groups.iter().find(|g| !valid_name(g)) {
        return Err(AnnotationError::BadGroup {
            vmi: display,
            group: (*bad).to_owned(),
        });
    }

    let cid = match annotation(CID) {
        None => None,
        Some(value) => {
            let cid: u64 = value
                .trim()
                .parse()
                .map_err(|source| AnnotationError::BadCid {
                    vmi: display.clone(),
                    value: value.to_owned(),
                    source,
                })?;
            if cid < MIN_GUEST_CID {
                return Err(AnnotationError::ReservedCid { vmi: display, cid });
            }
            Some(cid)
        }
    };

    let ports = match annotation(PORTS) {
        None => None,
        Some(value) => Some(
            list(&display, PORTS, value)?
                .into_iter()
                .map(|port| {
                    port.parse().map_err(|source| AnnotationError::BadPort {
                        vmi: display.clone(),
                        value: port.to_owned(),
                        source,
                    })
                })
                .collect::<Result<Vec<u32>, _>>()?,
        ),
    };

    Ok(VmiRequest {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        groups: groups.into_iter().map(str::to_owned).collect(),
        cid,
        ports,
    })
}

/// The string field `key` of `object`.
fn string<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

/// Splits a list annotation on `,` and `+`, trimming blanks; an empty item is an error.
fn list<'a>(
    vmi: &str,
    annotation: &'static str,
    value: &'a str,
) -> Result<Vec<&'a str>, AnnotationError> {
    let items: Vec<&str> = value.split([',', '+']).map(str::trim).collect();
    if items.iter().any(|item| item.is_empty()) {
        return Err(AnnotationError::EmptyItem {
            vmi: vmi.to_owned(),
            annotation,
            value: value.to_owned(),
        });
    }
    Ok(items)
}

/// Whether `s` may be part of a daemon VM name or be a group: `[A-Za-z0-9_.-]+`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(annotations: &str, devices: &str) -> Vec<u8> {
        format!(
            r#"{{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance",
                "metadata":{{"name":"vmi-x","namespace":"default","annotations":{{{annotations}}}}},
                "spec":{{"domain":{{"devices":{{{devices}}}}}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn reads_groups_cid_and_ports() {
        let r = parse(&vmi(
            r#""sockbypass.io/groups":"db, web+cache","sockbypass.io/cid":"42","sockbypass.io/ports":"22+80,443""#,
            "",
        ))
        .expect("parses");
        assert_eq!(r.vm_name(), "default.vmi-x");
        assert_eq!(r.domain_name(), "default_vmi-x");
        assert_eq!(r.groups, ["db", "web", "cache"]);
        assert_eq!(r.cid, Some(42));
        assert_eq!(r.ports, Some(vec![22, 80, 443]));
    }

    #[test]
    fn cid_and_ports_are_optional() {
        let r = parse(&vmi(r#""sockbypass.io/groups":"db""#, r#""disks":[]"#)).expect("parses");
        assert_eq!((r.cid, r.ports), (None, None));
    }

    #[test]
    fn autoattach_vsock_is_refused() {
        let e = parse(&vmi(
            r#""sockbypass.io/groups":"db""#,
            r#""autoattachVSOCK":true"#,
        ))
        .expect_err("refused");
        assert!(matches!(e, AnnotationError::AutoattachVsock { .. }));
        let text = e.to_string();
        assert!(text.contains("default/vmi-x") && text.contains("only one virtio-vsock device"));
        // `false` is fine.
        parse(&vmi(
            r#""sockbypass.io/groups":"db""#,
            r#""autoattachVSOCK":false"#,
        ))
        .expect("autoattachVSOCK: false is allowed");
    }

    #[test]
    fn bad_annotations_are_named() {
        let cases: [(&str, &str); 8] = [
            ("", "has no `sockbypass.io/groups` annotation"),
            (r#""sockbypass.io/groups":"a,,b""#, "has an empty item"),
            (r#""sockbypass.io/groups":"  ""#, "has an empty item"),
            (r#""sockbypass.io/groups":"a b""#, "group `a b`"),
            (
                r#""sockbypass.io/groups":"a","sockbypass.io/cid":"x""#,
                "`sockbypass.io/cid` = `x` is not a number",
            ),
            (
                r#""sockbypass.io/groups":"a","sockbypass.io/cid":"2""#,
                "= 2 is reserved",
            ),
            (
                r#""sockbypass.io/groups":"a","sockbypass.io/ports":"22,http""#,
                "port `http`",
            ),
            (
                r#""sockbypass.io/groups":"a","sockbypass.io/ports":"22,""#,
                "has an empty item",
            ),
        ];
        for (annotations, expected) in cases {
            let e = parse(&vmi(annotations, "")).expect_err(annotations);
            let text = e.to_string();
            assert!(text.contains(expected), "{annotations}: {text}");
            assert!(text.contains("default/vmi-x"), "{annotations}: {text}");
        }
    }

    #[test]
    fn malformed_vmis_are_errors() {
        assert!(matches!(
            parse(b"{not json"),
            Err(AnnotationError::NotJson(_))
        ));
        assert!(matches!(
            parse(br#"{"metadata":{}}"#),
            Err(AnnotationError::Missing("metadata.name"))
        ));
        assert!(matches!(
            parse(br#"{"metadata":{"name":"a b","annotations":{"sockbypass.io/groups":"g"}}}"#),
            Err(AnnotationError::BadName { .. })
        ));
    }
}
