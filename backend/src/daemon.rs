//! Starting and stopping the whole daemon: the switch, one vhost-user server thread per VM,
//! and the host I/O thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{EpollEvent, EventSet};

use crate::config::DaemonConfig;
use crate::device::server::{self, ServerError};
use crate::exporter::{self, DaemonSource, ExporterError, MetricsServer};
use crate::fastpath::{
    pair_window_path, window_path, FastPathThread, Intake, Service, Window, WindowError,
};
use crate::host::poller::split_token;
use crate::host::HostPoller;
use crate::metrics::FastPathCountersSnapshot;
use crate::poll::{PollCountersSnapshot, PollEngine};
use crate::runtime::{notify_systemd, ControlSocket, ControlSocketError, VmSet};
use crate::seccomp::{SeccompError, ThreadFilter};
use crate::switch::{Switch, SwitchError};

/// How often the host I/O thread expires handshakes and stale connections.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The host epoll instance could not be created.
    #[error("cannot create the host event loop")]
    Epoll(#[source] std::io::Error),
    /// The switch could not be built.
    #[error(transparent)]
    Switch(#[from] SwitchError),
    /// A VM's vhost-user socket could not be set up.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A VM's fast-path window could not be made.
    #[error(transparent)]
    Window(#[from] WindowError),
    /// A thread could not be started.
    #[error("cannot start thread `{name}`")]
    Thread {
        /// Thread name.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A daemon thread panicked (see [`crate::failure`]).
    #[error("{0}")]
    ThreadFailed(String),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    Eventfd(#[source] std::io::Error),
    /// The seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The control socket could not be opened.
    #[error(transparent)]
    Control(#[from] ControlSocketError),
    /// The metrics listener (`--metrics-listen`) could not be started.
    #[error(transparent)]
    Metrics(#[from] ExporterError),
    /// Waiting for a termination signal failed.
    #[error("cannot wait for signals")]
    Signals(#[source] std::io::Error),
}

/// A running daemon. Dropping it (or [`DaemonHandle::shutdown`]) stops every thread and removes
/// the sockets it created.
#[derive(Debug)]
pub struct DaemonHandle {
    switch: Arc<Switch>,
    /// The VMs served now, and their server threads.
    vms: Arc<VmSet>,
    stop: Arc<AtomicBool>,
    /// The host I/O thread.
    threads: Vec<JoinHandle<()>>,
    engine: Option<PollEngine>,
    filter: ThreadFilter,
    /// The fast-path windows, mapped for the daemon's life.
    windows: Arc<[Window]>,
    /// The fast-path thread, when some VM has `fastpath=on`.
    fastpath: Option<FastPathThread>,
    /// The control thread (and socket, with `--control`); it also carries out reloads.
    control: Option<ControlSocket>,
    /// The metrics exporter, with `metrics_listen`.
    metrics: Option<MetricsServer>,
}

impl DaemonHandle {
    /// The fast-path windows: the VMs' own (those with `fastpath=on`, in configuration order),
    /// then the pairs'.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// The fast-path counters of VM `name` (SPEC.md §13.10); `None` for an unknown VM or when no
    /// VM has the fast path.
    pub fn fastpath_counters(&self, name: &str) -> Option<FastPathCountersSnapshot> {
        self.vms.fastpath_counters(name)
    }

    /// The VMs served now: add and remove VMs, list them, read their counters (what the
    /// control socket does, SPEC.md §14).
    pub fn vm_set(&self) -> &Arc<VmSet> {
        &self.vms
    }

    /// Asks the control thread to reload the configuration (what `SIGHUP` does).
    pub fn request_reload(&self) {
        if let Some(c) = &self.control {
            c.request_reload();
        }
    }

    /// The address `/metrics` is served on (the bound port when `metrics_listen` asked for 0).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// The switch, for counters and state.
    pub fn switch(&self) -> &Arc<Switch> {
        &self.switch
    }

    /// Counters of every poll thread (empty in event mode).
    pub fn poll_counters(&self) -> Vec<PollCountersSnapshot> {
        self.engine
            .as_ref()
            .map(PollEngine::counters)
            .unwrap_or_default()
    }

    /// Logs every VM's counters and gauges (its live connections and queues), then every poll
    /// thread's counters, one line each (`info`).
    pub fn log_counters(&self) {
        for (vm, _, _) in self.vms.snapshot() {
            if let Some(c) = self.switch.counters(&vm.name) {
                tracing::info!(vm = %vm.name, counters = ?c, "VM counters");
            }
            if let Some(g) = self.switch.gauges(&vm.name) {
                tracing::info!(vm = %vm.name, gauges = ?g, "VM gauges");
            }
            if let Some(c) = self.fastpath_counters(&vm.name) {
                tracing::info!(vm = %vm.name, counters = ?c, "VM fast-path counters");
            }
        }
        for (thread, c) in self.poll_counters().iter().enumerate() {
            tracing::info!(thread, counters = ?c, "poll thread counters");
        }
    }

    /// Stops everything and waits for the threads.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        // No VM comes or goes any more.
        if let Some(mut control) = self.control.take() {
            control.stop();
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(mut metrics) = self.metrics.take() {
            metrics.stop();
        }
        if let Some(mut engine) = self.engine.take() {
            engine.stop();
        }
        if let Some(mut fastpath) = self.fastpath.take() {
            fastpath.stop();
        }
        self.vms.stop_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for DaemonHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop_all();
        }
    }
}

/// Starts the daemon: binds every socket (so bad paths fail now), then starts the threads.
pub fn start(config: DaemonConfig) -> Result<DaemonHandle, DaemonError> {
    let filter = ThreadFilter::build(config.seccomp)?;
    let poller = HostPoller::new().map_err(DaemonError::Epoll)?;
    // The fast-path thread's intake, when some VM has the fast path.
    let (intake, queue) = if config.vms.iter().any(|vm| vm.fastpath_size.is_some()) {
        let (intake, queue) = Intake::new().map_err(DaemonError::Eventfd)?;
        (Some(Arc::new(intake)), Some(queue))
    } else {
        (None, None)
    };
    let sink = intake
        .clone()
        .map(|i| i as Arc<dyn crate::host::ControlSink>);
    let switch = Arc::new(Switch::new(&config, &poller, sink)?);
    // Before any thread starts (and so before any seccomp filter: creating files is not among
    // the calls the filter allows), and before the sockets, so that a VMM that finds its
    // socket finds its window too.
    let mut windows = config
        .vms
        .iter()
        .filter_map(|vm| {
            let size = vm.fastpath_size?;
            Some(Window::create_own(
                &window_path(&vm.socket, &vm.name),
                size,
                vm.cid,
            ))
        })
        .collect::<Result<Vec<Window>, WindowError>>()?;
    for pair in &config.pairs {
        // Validation made sure both VMs exist.
        let vm = |name: &str| config.vms.iter().find(|vm| vm.name == name);
        if let (Some(a), Some(b)) = (vm(&pair.vms[0]), vm(&pair.vms[1])) {
            let path = pair_window_path(&a.socket, &a.name, &b.name);
            windows.push(Window::create_pair(&path, pair.size, a.cid, b.cid)?);
        }
    }
    let windows: Arc<[Window]> = windows.into();
    let mut listeners = Vec::with_capacity(config.vms.len());
    for vm in &config.vms {
        listeners.push(server::bind(&vm.name, &vm.socket)?);
    }
    let metrics_listener = config.metrics_listen.map(exporter::bind).transpose()?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut fastpath_counters = Vec::new();
    let mut fastpath = None;
    if let (Some(intake), Some(queue)) = (intake, queue) {
        let epoll = vmm_sys_util::epoll::Epoll::new().map_err(DaemonError::Epoll)?;
        let service = Service::new(&config, windows.clone(), epoll);
        fastpath_counters = service.counters();
        fastpath = Some(
            FastPathThread::start(
                service,
                intake,
                queue,
                config.poll.mode,
                Duration::from_micros(config.poll.budget_us),
                &filter,
                switch.failure().clone(),
            )
            .map_err(|source| DaemonError::Thread {
                name: "sb-fastpath".into(),
                source,
            })?,
        );
    }
    let vms = Arc::new(VmSet::new(
        switch.clone(),
        filter.clone(),
        &config,
        fastpath_counters,
    ));
    let mut handle = DaemonHandle {
        switch: switch.clone(),
        vms: vms.clone(),
        stop: stop.clone(),
        threads: Vec::new(),
        engine: None,
        filter: filter.clone(),
        windows,
        fastpath,
        control: None,
        metrics: None,
    };
    let engine = PollEngine::start(&switch, &config.poll, &filter).map_err(|source| {
        DaemonError::Thread {
            name: "sb-poll".into(),
            source,
        }
    })?;
    vms.set_poll_counters(engine.counter_handles());
    let poll_counters = engine.counter_handles();
    handle.engine = Some(engine);
    vms.start_configured(&config, listeners)
        .map_err(|source| DaemonError::Thread {
            name: "vm-*".into(),
            source,
        })?;
    handle.control = Some(ControlSocket::start(
        vms,
        config.control.as_deref(),
        switch.failure().clone(),
    )?);
    let sw = switch.clone();
    let t = std::thread::Builder::new()
        .name("host-io".into())
        .spawn(move || {
            filter.confine_current_thread();
            let failure = sw.failure().clone();
            failure.guard("host-io", || host_io_loop(&sw, &poller, &stop));
        })
        .map_err(|source| DaemonError::Thread {
            name: "host-io".into(),
            source,
        })?;
    handle.threads.push(t);
    if let Some(listener) = metrics_listener {
        let source = DaemonSource::new(handle.vms.clone(), switch.clone(), poll_counters);
        handle.metrics = Some(MetricsServer::start(
            listener,
            Arc::new(source),
            &handle.filter,
            switch.failure().clone(),
        )?);
    }
    Ok(handle)
}

/// The host I/O thread: socket readiness and timeouts for every VM's host endpoint.
fn host_io_loop(switch: &Switch, poller: &HostPoller, stop: &AtomicBool) {
    let mut events = vec![EpollEvent::default(); 64];
    let mut last_sweep = Instant::now();
    let timeout_ms = i32::try_from(SWEEP_INTERVAL.as_millis()).unwrap_or(100);
    while !stop.load(Ordering::SeqCst) {
        let n = match poller.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => {
                tracing::error!(error = %e, "host event loop failed");
                std::thread::sleep(SWEEP_INTERVAL);
                0
            }
        };
        for ev in &events[..n] {
            let (vm, id) = split_token(ev.data());
            let set = EventSet::from_bits_truncate(ev.events());
            switch.on_host_event(vm, id, set);
        }
        if last_sweep.elapsed() >= SWEEP_INTERVAL {
            last_sweep = Instant::now();
            switch.sweep(last_sweep);
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM, then reports its counters and stops cleanly.
/// SIGUSR1 reports the counters and carries on. A daemon thread that panics stops the daemon
/// too, and the panic is returned as the error. Once started, the calling (main) thread is
/// confined by the seccomp filter like the daemon's own threads.
pub fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    let signals = crate::signals::TerminationSignals::block().map_err(DaemonError::Signals)?;
    let handle = start(config)?;
    // Before the filter: telling systemd needs a socket of its own.
    notify_systemd(crate::runtime::Readiness::Ready);
    handle.filter.apply()?;
    crate::seccomp::test_forbidden_call_if_asked();
    let failure = handle.switch().failure().clone();
    failure.wake_main_thread_on_failure();
    while failure.message().is_none() {
        let sig = signals.wait().map_err(DaemonError::Signals)?;
        match sig {
            libc::SIGHUP => {
                tracing::info!("SIGHUP: reloading the configuration");
                handle.request_reload();
            }
            libc::SIGUSR1 => handle.log_counters(),
            _ => {
                handle.log_counters();
                tracing::info!(signal = sig, "stopping");
                break;
            }
        }
    }
    handle.shutdown();
    match failure.message() {
        Some(message) => Err(DaemonError::ThreadFailed(message)),
        None => Ok(()),
    }
}
