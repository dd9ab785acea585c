//! The KubeVirt hook sidecar of sockbypass: it gives a VirtualMachineInstance a
//! `vhost-user-vsock-pci` device served by the node's `sockbypassd`, and registers the VM with
//! that daemon through its control socket.
//!
//! | module | job |
//! |---|---|
//! | [`annotations`] | what a VMI asks for (its `sockbypass.io/*` annotations) |
//! | [`domain`] | the domain-XML transform, callable without gRPC |
//! | [`register`] | `vm_add` at the daemon, idempotently |
//! | [`grpc`] | KubeVirt's hook-sidecar gRPC services and the server |
//! | [`config`] | the command line |
//! | [`proto`] | the generated protobuf types |
//! | [`xml`] | a small XML tree over quick-xml |

pub mod annotations;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod proto;
pub mod register;
pub mod xml;
