//! `sockbypass-kubevirt-hook`: KubeVirt hook sidecar. See the library for what it does.

use std::process::ExitCode;

use clap::Parser;
use sockbypass_kubevirt_hook::config::Args;
use sockbypass_kubevirt_hook::grpc::{self, Hook};
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            tracing::error!("{text}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until Shutdown, SIGTERM or SIGINT, then removes the hook socket.
async fn run(args: &Args) -> Result<(), grpc::ServeError> {
    let path = args.hook_socket();
    let listener = grpc::bind(&path)?;
    let mut term = signal(SignalKind::terminate()).map_err(|source| grpc::ServeError::Bind {
        path: path.clone(),
        source,
    })?;
    tracing::info!(socket = %path.display(), control = %args.control.display(), "serving KubeVirt hooks");
    let stop = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        }
    };
    let result = grpc::serve(listener, Hook::new(args.settings()), stop).await;
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(socket = %path.display(), error = %e, "cannot remove the hook socket");
    }
    result
}
