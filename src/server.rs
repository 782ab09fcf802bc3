//! Start-up and shutdown: checks, placement, the monitor, one supervised thread per shard, and
//! the signals that stop them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::app::routes::ROUTE_NAMES;
use crate::app::AppFactory;
use crate::config::{Config, EngineKind};
use crate::engine::{self, Engine, ShardContext};
use crate::metrics::ShardReport;
use crate::monitor::evaluation::{EvaluationSettings, Evaluator};
use crate::monitor::webhook::Webhook;
use crate::monitor::{Identity, Monitor, Published};
use crate::shard::{self, Control, ShardSlot, ShardState};
use arc_swap::ArcSwap;
use crossbeam::channel::Receiver;

/// Why the server could not start. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Preflight(#[from] engine::preflight::PreflightError),
    #[error("invalid configuration: {0}")]
    Placement(#[from] shard::PlacementError),
    #[error("cannot reserve {addr}: {source}")]
    Reserve {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "{addr} is in use: another process already serves it, and starting would silently take part of its \
         traffic (SO_REUSEPORT). Stop it or choose another PORT, or set REUSE_PORT_HANDOVER=1 \
         (--reuse-port-handover) to hand the port over without downtime"
    )]
    PortServed { addr: SocketAddr },
    #[error("shard {shard} on CPU {cpu} failed to start: {reason}")]
    ShardStart {
        shard: usize,
        cpu: usize,
        reason: String,
    },
    #[error("cannot serve the agent check (AGENT_PORT) on {addr}: {source}")]
    Agent {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Database(#[from] crate::db::DbStartError),
    #[error(
        "DB_READ_DRIVER=wire needs the glommio engine, and this server runs on may \
         (--engine may, or glommio cannot run here): set DB_READ_DRIVER=threads, or run \
         where glommio can"
    )]
    WireOnMay,
    #[error("{0}")]
    Webhook(String),
}

impl StartError {
    /// 2 for configuration mistakes, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Placement(_) => 2,
            _ => 1,
        }
    }
}

/// How long start-up waits for every shard to bind and run.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running server: its address, and the threads to join once it stops.
pub struct Server {
    pub addr: SocketAddr,
    control: Arc<Control>,
    supervisors: Vec<JoinHandle<()>>,
    monitor: Option<JoinHandle<()>>,
    /// The HAProxy agent check's thread, when `AGENT_PORT` is set.
    agent: Option<JoinHandle<()>>,
    /// Holds the port while no shard listens (port 0 and restarts); never accepts.
    _port_reservation: socket2::Socket,
}

/// Checks the host, places and starts the shards and the monitor, and returns once every shard
/// serves.
pub fn start(config: Config) -> Result<Server, StartError> {
    let chosen = choose_engine(&config)?;
    if chosen == Engine::May && config.database.read_driver == crate::config::ReadDriver::Wire {
        return Err(StartError::WireOnMay);
    }
    let placement = place_shards(&config)?;
    let (reservation, addr) = bind_port(&config)?;
    let database = crate::db::Database::start(&config.database, Some(placement.monitor_cpu))?;
    let config = Arc::new(config);
    let control = Arc::new(Control::default());
    let slots: Vec<Arc<ShardSlot>> = placement
        .shard_cpus
        .iter()
        .enumerate()
        .map(|(id, &cpu)| Arc::new(ShardSlot::new(id, cpu)))
        .collect();

    if chosen == Engine::May {
        engine::may::carriers::start(&slots).map_err(|reason| StartError::ShardStart {
            shard: 0,
            cpu: slots[0].cpu,
            reason,
        })?;
    }
    let monitor = new_monitor(&config, chosen, &placement, &slots, &control, &database)?;
    let published = monitor.published.clone();
    // Bounded: a monitor that falls behind makes shards drop reports, never block.
    let (reports, report_rx) = crossbeam::channel::bounded(1024);
    let monitor_thread = spawn_monitor(monitor, report_rx, placement.monitor_cpu);
    let instance = format!("{}/{}", config.instance_id(), start_nonce());
    log::info!("instance {instance}: the name of this start in durable job claims");
    let apps = Arc::new(AppFactory {
        config: config.clone(),
        published: published.clone(),
        mesh: crate::queue::Mesh::new(slots.len()),
        database: database.clone(),
        control: control.clone(),
        instance,
        accounts: Default::default(),
    });
    let context = ShardContext {
        slot: slots[0].clone(),
        generation: 0,
        config: config.clone(),
        listen_addr: addr,
        control: control.clone(),
        reports,
        apps,
    };
    let supervisors = spawn_supervisors(chosen, &slots, context);
    let mut server = Server {
        addr,
        control,
        supervisors,
        monitor: Some(monitor_thread),
        agent: None,
        _port_reservation: reservation,
    };
    if let Err(e) = wait_until_running(&slots, &published) {
        server.stop();
        return Err(e);
    }
    if let Some(port) = config.server.agent_port {
        let agent_addr = SocketAddr::new(config.server.bind_address, port);
        match shard::agent::start(agent_addr, server.control.clone(), slots.clone()) {
            Ok(agent) => server.agent = Some(agent),
            Err(source) => {
                server.stop();
                return Err(StartError::Agent {
                    addr: agent_addr,
                    source,
                });
            }
        }
        log::info!("agent check on {agent_addr}");
    }
    log::info!(
        "listening on http://{addr} with {} {} shards on CPUs {:?}; monitor on CPU {}{}",
        slots.len(),
        chosen.name(),
        placement.shard_cpus,
        placement.monitor_cpu,
        if placement.monitor_shares_core {
            " (shared)"
        } else {
            ""
        }
    );
    Ok(server)
}

/// Tells this start apart from every other: 12 hex digits from the kernel's random source,
/// else from the clock and the pid.
fn start_nonce() -> String {
    let mut bytes = [0u8; 6];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let mixed = clock ^ (u64::from(std::process::id()) << 32);
        bytes.copy_from_slice(&mixed.to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The engine asked for, or may where glommio cannot run here.
fn choose_engine(config: &Config) -> Result<Engine, StartError> {
    let preflight = match config.server.engine {
        // may needs nothing of io_uring: no need to probe for it.
        EngineKind::May => Ok(()),
        _ => engine::preflight::check_glommio(),
    };
    let wire = config.database.read_driver == crate::config::ReadDriver::Wire;
    let (chosen, why) = match config.server.engine {
        // The wire driver runs on glommio only: `auto` takes glommio for it where it runs.
        EngineKind::Auto if wire && preflight.is_ok() => (
            Engine::Glommio,
            "auto: DB_READ_DRIVER=wire runs on glommio only".to_string(),
        ),
        asked => engine::choose(asked, preflight)?,
    };
    log::info!("engine: {} ({why})", chosen.name());
    Ok(chosen)
}

/// The CPUs of the shards and of the monitor, from the CPUs this process may use.
fn place_shards(config: &Config) -> Result<shard::Placement, StartError> {
    let available: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let cpu_quota = crate::config::own_cpu_quota();
    let placement = shard::place(
        &available,
        cpu_quota,
        config.server.shards,
        config.server.shard_cpus.as_ref().map(|c| c.ids()),
        config.server.monitor_core,
    )?;
    if let Some(quota) = cpu_quota {
        log::info!(
            "cgroup CPU quota: {quota} CPUs (cpu.max, rounded up) of the {} this process may \
             use; {} shards",
            available.len(),
            placement.shard_cpus.len()
        );
    }
    if placement.shard_cpus.len() > available.len() {
        log::warn!(
            "{} shards on {} CPUs: some CPUs run two shards",
            placement.shard_cpus.len(),
            available.len()
        );
    }
    Ok(placement)
}

/// Refuses a port another process serves (unless handing over), then reserves it.
fn bind_port(config: &Config) -> Result<(socket2::Socket, SocketAddr), StartError> {
    let requested = SocketAddr::new(config.server.bind_address, config.server.port);
    if !config.server.reuse_port_handover {
        refuse_a_served_port(requested)?;
    }
    reserve_port(requested)
}

/// The monitor, with what it says about the process, its evaluator and the webhook.
fn new_monitor(
    config: &Config,
    chosen: Engine,
    placement: &shard::Placement,
    slots: &[Arc<ShardSlot>],
    control: &Arc<Control>,
    database: &Option<Arc<crate::db::Database>>,
) -> Result<Monitor, StartError> {
    let identity = Identity {
        engine: chosen.name(),
        monitor_cpu: placement.monitor_cpu,
        monitor_shares_core: placement.monitor_shares_core,
        min_workers: config.cluster.min_workers,
        max_workers: config.cluster.max_workers,
        queue_size_warning: config.monitoring.queue_size_warning,
        queue_size_critical: config.monitoring.queue_size_critical,
        database: database.clone(),
    };
    let (evaluation_settings, clamp_note) = EvaluationSettings::from_config(config, slots.len());
    if let Some(note) = clamp_note {
        log::info!("{note}");
    }
    let webhook = match &config.monitoring.webhook_url {
        Some(url) => Some(Webhook::start(url).map_err(StartError::Webhook)?),
        None => None,
    };
    Ok(Monitor::new(
        slots.to_vec(),
        identity,
        control.clone(),
        ROUTE_NAMES,
        config.snapshot_interval(),
        Evaluator::new(evaluation_settings, slots.len(), webhook),
    ))
}

/// Runs the monitor on its own thread, pinned to its CPU.
fn spawn_monitor(
    monitor: Monitor,
    reports: Receiver<ShardReport>,
    monitor_cpu: usize,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("monitor".into())
        .spawn(move || {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: monitor_cpu }) {
                log::warn!("could not pin the monitor to CPU {monitor_cpu}");
            }
            monitor.run(reports)
        })
        .expect("spawning the monitor thread")
}

/// One supervisor thread per shard, each running its shard's generations on `chosen`; every
/// shard's context is `context` with its own slot.
fn spawn_supervisors(
    chosen: Engine,
    slots: &[Arc<ShardSlot>],
    context: ShardContext,
) -> Vec<JoinHandle<()>> {
    slots
        .iter()
        .map(|slot| {
            let context = ShardContext {
                slot: slot.clone(),
                ..context.clone()
            };
            std::thread::Builder::new()
                .name(format!("supervisor-{}", slot.id))
                .spawn(move || {
                    let (slot, control) = (context.slot.clone(), context.control.clone());
                    shard::supervise(slot, control, |generation| {
                        chosen.run_shard(ShardContext {
                            generation,
                            ..context.clone()
                        })
                    })
                })
                .expect("spawning a supervisor thread")
        })
        .collect()
}

impl Server {
    /// Announces that the process will stop: every shard keeps accepting and serving, but
    /// `/readyz` answers 503 and the agent check says `drain`, so balancers take it out.
    pub fn begin_leaving(&self) {
        self.control.begin_leaving();
    }

    /// Begins a graceful shutdown and waits for the shards (each bounded by the shutdown
    /// timeout) and the monitor to finish.
    pub fn stop(mut self) {
        self.control.begin_shutdown();
        for supervisor in self.supervisors.drain(..) {
            let _ = supervisor.join();
        }
        self.control.mark_shards_stopped();
        if let Some(monitor) = self.monitor.take() {
            let _ = monitor.join();
        }
        if let Some(agent) = self.agent.take() {
            let _ = agent.join();
        }
    }
}

/// Serves until SIGINT or SIGTERM, then leaves: not ready (and serving) for the drain delay,
/// then shuts down gracefully. A second signal exits at once.
pub fn run(config: Config) -> Result<(), StartError> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(StartError::Signals)?;
    let drain_delay = config.drain_delay();
    let server = start(config)?;
    // The line tests and scripts wait for: the bound address (useful with --port 0).
    println!("coinbit listening on http://{}", server.addr);
    if let Some(signal) = signals.forever().next() {
        log::info!(
            "signal {signal} received: not ready, serving on for {drain_delay:?}, then draining \
             connections and exiting"
        );
    }
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            log::warn!("second signal: exiting without waiting");
            std::process::exit(130);
        }
    });
    server.begin_leaving();
    std::thread::sleep(drain_delay);
    let started = Instant::now();
    server.stop();
    log::info!("stopped in {:?}", started.elapsed());
    Ok(())
}

/// Every shard's listener joins the port's SO_REUSEPORT group, which would let it join another
/// server's as well. A plain bind (SO_REUSEADDR, so that connections in TIME_WAIT do not count,
/// but no SO_REUSEPORT) fails with EADDRINUSE where some process listens on the address.
fn refuse_a_served_port(addr: SocketAddr) -> Result<(), StartError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = || -> std::io::Result<()> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())
    };
    match probe() {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(StartError::PortServed { addr }),
        // Anything else (no such address, no permission) is for the real bind to report.
        _ => Ok(()),
    }
}

/// Binds (without listening) to the address so that port 0 resolves to one port every shard
/// then shares, and so the port stays ours while a shard restarts.
fn reserve_port(addr: SocketAddr) -> Result<(socket2::Socket, SocketAddr), StartError> {
    let reserve = || -> std::io::Result<(socket2::Socket, SocketAddr)> {
        let socket = engine::reuseport_socket(addr)?;
        let bound = socket.local_addr()?.as_socket().unwrap_or(addr);
        Ok((socket, bound))
    };
    reserve().map_err(|source| StartError::Reserve { addr, source })
}

/// Waits until every shard runs and the monitor has published that, so the first `/health`
/// already shows them.
fn wait_until_running(
    slots: &[Arc<ShardSlot>],
    published: &ArcSwap<Published>,
) -> Result<(), StartError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(slot) = slots
            .iter()
            .find(|s| s.restarts() > 0 || s.state() == ShardState::Stopped)
        {
            return Err(StartError::ShardStart {
                shard: slot.id,
                cpu: slot.cpu,
                reason: slot.last_error().unwrap_or_else(|| "it stopped".into()),
            });
        }
        let all_running = slots.iter().all(|s| s.state() == ShardState::Running);
        if all_running && published.load().running_shards == slots.len() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StartError::ShardStart {
                shard: 0,
                cpu: slots[0].cpu,
                reason: "timed out".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
