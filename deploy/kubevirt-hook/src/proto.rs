//! The Rust types and gRPC services of KubeVirt's hook-sidecar API, generated at build time
//! from `proto/*.proto` (see build.rs).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `kubevirt.hooks.info`: discovery (`Info`).
pub mod info {
    tonic::include_proto!("kubevirt.hooks.info");
}

/// `kubevirt.hooks.v1alpha2`: `OnDefineDomain` and `PreCloudInitIso`.
pub mod v1alpha2 {
    tonic::include_proto!("kubevirt.hooks.v1alpha2");
}

/// `kubevirt.hooks.v1alpha3`: v1alpha2's callbacks and `Shutdown`.
pub mod v1alpha3 {
    tonic::include_proto!("kubevirt.hooks.v1alpha3");
}
