//! KubeVirt's hook-sidecar gRPC services over a Unix socket: `Info` announces the
//! `OnDefineDomain` hook point and the v1alpha2/v1alpha3 callbacks; `OnDefineDomain` checks
//! the domain, registers the VM with the daemon and returns the attached domain XML;
//! `PreCloudInitIso` passes its input through; `Shutdown` (v1alpha3, which virt-launcher calls
//! when it is done with the VM) removes the VMs this hook registered from the daemon and stops
//! the server.

use std::error::Error;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::config::Settings;
use crate::proto::{info, v1alpha2, v1alpha3};
use crate::{domain, register};

/// The hook point the sidecar subscribes to.
pub const ON_DEFINE_DOMAIN: &str = "OnDefineDomain";
/// The hook point virt-launcher calls `Shutdown` for (v1alpha3 only): only a sidecar that
/// announces it is told when the VM is gone.
pub const SHUTDOWN: &str = "Shutdown";

/// Errors running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The hook socket could not be created.
    #[error("cannot listen on the hook socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The server failed.
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// The services, sharing the settings and the shutdown signal.
#[derive(Debug, Clone)]
pub struct Hook {
    settings: Arc<Settings>,
    shutdown: Arc<Notify>,
    /// The VMs registered by OnDefineDomain, removed on Shutdown.
    registered: Arc<Mutex<Vec<String>>>,
}

impl Hook {
    /// A hook with these settings.
    pub fn new(settings: Settings) -> Hook {
        Hook {
            settings: Arc::new(settings),
            shutdown: Arc::new(Notify::new()),
            registered: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// OnDefineDomain of either version: the attached domain XML, or a status naming what is
    /// wrong (virt-launcher then fails the VMI's start with it).
    async fn define(&self, domain_xml: Vec<u8>, vmi: Vec<u8>) -> Result<Vec<u8>, Status> {
        let settings = Arc::clone(&self.settings);
        // The control client is blocking; a registration takes milliseconds.
        let result = tokio::task::spawn_blocking(move || define(&settings, &domain_xml, &vmi))
            .await
            .map_err(|e| Status::internal(format!("OnDefineDomain failed: {e}")))?;
        match result {
            Ok((vm, xml)) => {
                let mut registered = self
                    .registered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if !registered.contains(&vm) {
                    registered.push(vm);
                }
                Ok(xml.into_bytes())
            }
            Err(status) => {
                tracing::error!(message = status.message(), "OnDefineDomain refused");
                Err(status)
            }
        }
    }

    /// Removes the VMs this hook registered from the daemon (their VMMs are gone when
    /// virt-launcher calls Shutdown). Failures are logged: the server stops anyway.
    async fn unregister_all(&self) {
        let vms = std::mem::take(
            &mut *self
                .registered
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let control = self.settings.control.clone();
        let removed = tokio::task::spawn_blocking(move || {
            for vm in vms {
                if let Err(e) = register::unregister(&control, &vm) {
                    tracing::warn!(
                        vm,
                        error = chain(&e),
                        "cannot remove the VM from sockbypassd"
                    );
                }
            }
        })
        .await;
        if let Err(e) = removed {
            tracing::warn!(error = %e, "removing the VMs failed");
        }
    }
}

/// OnDefineDomain's work: check, register, attach. Returns the VM's name and the XML.
fn define(settings: &Settings, domain_xml: &[u8], vmi: &[u8]) -> Result<(String, String), Status> {
    let domain_xml = std::str::from_utf8(domain_xml)
        .map_err(|_| Status::invalid_argument("the domain XML is not UTF-8"))?;
    // Everything that can be checked is checked before the daemon learns of the VM.
    let request =
        domain::check(domain_xml, vmi).map_err(|e| Status::invalid_argument(chain(&e)))?;
    let info = register::register(&settings.control, &settings.socket_dir, &request)
        .map_err(|e| Status::failed_precondition(chain(&e)))?;
    let xml = domain::attach(domain_xml, vmi, &info, settings.qemu_socket_dir.as_deref())
        .map_err(|e| Status::invalid_argument(chain(&e)))?;
    tracing::info!(vmi = %request.display(), vm = %info.name, cid = info.cid, "domain attached");
    Ok((info.name, xml))
}

/// An error and its sources, `: `-separated.
fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[tonic::async_trait]
impl info::info_server::Info for Hook {
    async fn info(
        &self,
        _request: Request<info::InfoParams>,
    ) -> Result<Response<info::InfoResult>, Status> {
        let mut hook_points = vec![info::HookPoint {
            name: ON_DEFINE_DOMAIN.to_owned(),
            priority: self.settings.priority,
        }];
        if self.settings.versions.iter().any(|v| v == "v1alpha3") {
            hook_points.push(info::HookPoint {
                name: SHUTDOWN.to_owned(),
                priority: 0,
            });
        }
        Ok(Response::new(info::InfoResult {
            name: self.settings.name.clone(),
            hook_points,
            versions: self.settings.versions.clone(),
        }))
    }
}

#[tonic::async_trait]
impl v1alpha2::callbacks_server::Callbacks for Hook {
    async fn on_define_domain(
        &self,
        request: Request<v1alpha2::OnDefineDomainParams>,
    ) -> Result<Response<v1alpha2::OnDefineDomainResult>, Status> {
        let params = request.into_inner();
        let domain_xml = self.define(params.domain_xml, params.vmi).await?;
        Ok(Response::new(v1alpha2::OnDefineDomainResult { domain_xml }))
    }

    async fn pre_cloud_init_iso(
        &self,
        request: Request<v1alpha2::PreCloudInitIsoParams>,
    ) -> Result<Response<v1alpha2::PreCloudInitIsoResult>, Status> {
        let params = request.into_inner();
        Ok(Response::new(v1alpha2::PreCloudInitIsoResult {
            cloud_init_no_cloud_source: params.cloud_init_no_cloud_source,
            cloud_init_data: params.cloud_init_data,
        }))
    }
}

#[tonic::async_trait]
impl v1alpha3::callbacks_server::Callbacks for Hook {
    async fn on_define_domain(
        &self,
        request: Request<v1alpha3::OnDefineDomainParams>,
    ) -> Result<Response<v1alpha3::OnDefineDomainResult>, Status> {
        let params = request.into_inner();
        let domain_xml = self.define(params.domain_xml, params.vmi).await?;
        Ok(Response::new(v1alpha3::OnDefineDomainResult { domain_xml }))
    }

    async fn pre_cloud_init_iso(
        &self,
        request: Request<v1alpha3::PreCloudInitIsoParams>,
    ) -> Result<Response<v1alpha3::PreCloudInitIsoResult>, Status> {
        let params = request.into_inner();
        Ok(Response::new(v1alpha3::PreCloudInitIsoResult {
            cloud_init_no_cloud_source: params.cloud_init_no_cloud_source,
            cloud_init_data: params.cloud_init_data,
        }))
    }

    async fn shutdown(
        &self,
        _request: Request<v1alpha3::ShutdownParams>,
    ) -> Result<Response<v1alpha3::ShutdownResult>, Status> {
        tracing::info!("Shutdown called: removing the VM and stopping");
        self.unregister_all().await;
        // A permit is stored if the server is not waiting yet, so the call is never lost.
        self.shutdown.notify_one();
        Ok(Response::new(v1alpha3::ShutdownResult {}))
    }
}

/// Creates the hook socket at `path` (its directory too), replacing a stale socket left by an
/// earlier run.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let bind_error = |source| ServeError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_error)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path).map_err(bind_error)?;
        }
        _ => {}
    }
    UnixListener::bind(path).map_err(bind_error)
}

/// Serves the hook on `listener` until `Shutdown` is called or `stop` completes; in-flight
/// calls are answered first.
pub async fn serve(
    listener: UnixListener,
    hook: Hook,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let shutdown = Arc::clone(&hook.shutdown);
    tonic::transport::Server::builder()
        .add_service(info::info_server::InfoServer::new(hook.clone()))
        .add_service(v1alpha2::callbacks_server::CallbacksServer::new(
            hook.clone(),
        ))
        .add_service(v1alpha3::callbacks_server::CallbacksServer::new(hook))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            tokio::select! {
                () = shutdown.notified() => {}
                () = stop => {}
            }
        })
        .await
        .map_err(ServeError::Serve)
}
