//! The Prometheus exporter (`--metrics-listen ADDR`): one thread, `sb-metrics`, answering
//! `GET /metrics` with the daemon's counters and gauges in the OpenMetrics text format, read
//! at each scrape. README.md ("Prometheus metrics") lists what it exports.
//!
//! The TCP listener is bound in [`crate::daemon::start`] with the other sockets ([`bind`]),
//! before any thread is confined: the seccomp filter refuses `socket(AF_INET)` and `bind`. The
//! thread then installs the filter like every daemon thread, and needs only calls on the
//! sockets it has: `accept4`, reads and writes, and `setsockopt` for the per-connection time
//! limits (`crate::seccomp`).
//!
//! | file | job |
//! |---|---|
//! | `collect.rs` | what is exported: a sample of the daemon at a scrape, as metric families |
//! | `help.rs` | the help text of every family |
//! | `http.rs` | the listener thread's HTTP: one bounded connection at a time |

pub mod collect;
mod help;
pub mod http;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus_client::registry::Registry;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use collect::{DaemonSource, Sample, SampleCollector, Source, VmSample};

use crate::failure::Failure;
use crate::seccomp::ThreadFilter;

/// The name of the exporter's thread.
pub const THREAD_NAME: &str = "sb-metrics";

/// Errors starting the exporter.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// The listening address could not be bound.
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The listener's event loop or stop event could not be set up.
    #[error("cannot set up the metrics listener")]
    Setup(#[source] io::Error),
    /// The thread could not be started.
    #[error("cannot start thread `{THREAD_NAME}`")]
    Thread(#[source] io::Error),
}

/// A bound metrics listener, not yet served.
#[derive(Debug)]
pub struct MetricsListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsListener {
    /// The bound address (the port the kernel chose when the configured one is 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds `addr` (non-blocking: the thread waits for it in `epoll`).
pub fn bind(addr: SocketAddr) -> Result<MetricsListener, ExporterError> {
    let listener =
        TcpListener::bind(addr).map_err(|source| ExporterError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(ExporterError::Setup)?;
    let addr = listener.local_addr().map_err(ExporterError::Setup)?;
    Ok(MetricsListener { listener, addr })
}

/// The running exporter thread. Stopping it (or dropping it) closes the listener.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `listener` on a new thread, confined by `filter`, with metrics read from `source`
    /// at each scrape; a panic of the thread is recorded in `failure` (and stops the daemon).
    pub fn start(
        listener: MetricsListener,
        source: Arc<dyn Source>,
        filter: &ThreadFilter,
        failure: Arc<Failure>,
    ) -> Result<MetricsServer, ExporterError> {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ExporterError::Setup)?;
        let epoll = Epoll::new().map_err(ExporterError::Setup)?;
        for (fd, token) in [
            (listener.listener.as_raw_fd(), http::LISTENER_TOKEN),
            (stop.as_raw_fd(), http::STOP_TOKEN),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(ExporterError::Setup)?;
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SampleCollector::new(source)));
        let addr = listener.addr;
        let filter = filter.clone();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                filter.confine_current_thread();
                failure.guard(THREAD_NAME, || {
                    let render = || render(&registry);
                    http::serve(&listener.listener, &epoll, &render);
                });
            })
            .map_err(ExporterError::Thread)?;
        tracing::info!(%addr, "serving metrics on http://{addr}{}", http::METRICS_PATH);
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops and joins the thread; the listener closes with it.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            if let Err(e) = self.stop.write(1) {
                // Unreachable in practice (an eventfd write fails only on overflow); the join
                // below would then wait for ever, so leave the thread behind instead.
                tracing::error!(error = %e, "cannot stop the metrics thread");
                return;
            }
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The OpenMetrics text of everything `registry` collects, ending in `# EOF`.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::SeccompMode;

    /// A source whose sample the test changes between scrapes.
    #[derive(Debug)]
    struct Fixed(Mutex<Sample>);

    impl Source for Fixed {
        fn sample(&self) -> Sample {
            self.0.lock().expect("sample lock").clone()
        }
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("answer");
        answer
    }

    #[test]
    fn serves_each_scrape_from_the_source_of_that_moment_and_stops() {
        let source = Arc::new(Fixed(Mutex::new(collect::tests::sample())));
        let filter = ThreadFilter::build(SeccompMode::Off).expect("filter");
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr();
        assert_ne!(addr.port(), 0, "the bound port is known");
        let mut server =
            MetricsServer::start(listener, source.clone(), &filter, Failure::new()).expect("start");
        assert_eq!(server.local_addr(), addr);

        let first = get(addr, "/metrics");
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
        assert!(first.ends_with("# EOF\n"), "{first}");
        assert!(first.contains("sockbypass_vm_tx_packets_total{vm=\"web\",cid=\"3\"} 7\n"));
        assert!(first.contains(
            "sockbypass_vm_drops_total{vm=\"web\",cid=\"3\",reason=\"spoofed_src\"} 2\n"
        ));
        assert!(first.contains("# TYPE sockbypass_vm_peer_conns gauge\n"));
        assert!(first.contains("sockbypass_poll_batches_total{thread=\"0\",size=\"2-3\"} 4\n"));

        // VM `web` goes away, `db` counts: the next scrape shows exactly that.
        {
            let mut s = source.0.lock().expect("sample lock");
            s.vms.remove(0);
            s.vms[0].counters.tx_packets = 9;
        }
        let second = get(addr, "/metrics");
        assert!(!second.contains("vm=\"web\""), "{second}");
        assert!(second.contains("sockbypass_vm_tx_packets_total{vm=\"db\",cid=\"4\"} 9\n"));
        assert!(get(addr, "/").starts_with("HTTP/1.1 404 "));

        let start = Instant::now();
        server.stop();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "stop took {:?}",
            start.elapsed()
        );
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "the listener is closed once stopped"
        );
    }

    #[test]
    fn a_taken_address_is_a_bind_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let e = bind(addr).expect_err("address in use");
        assert!(
            matches!(&e, ExporterError::Bind { addr: a, .. } if *a == addr),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("cannot listen for metrics on {addr}")
        );
    }
}
