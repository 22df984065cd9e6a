//! `tickgate bench`: end-to-end throughput, latency, resource use and detection timings of the
//! gateway on this machine.
//!
//! The bench process runs the simulator and the WebSocket clients. The gateway under test runs
//! as a separate `tickgate serve` child, so its CPU time and memory are its own. Every socket is
//! on 127.0.0.1, every wait has a deadline, and the child is killed on every exit path (it is
//! started with `kill_on_drop`).

mod clients;
mod detect;
mod gateway;
mod report;
mod wire;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use self::clients::{ClientEnd, ClientOutcome, Phase, Window, SLOW_CLIENT_CLOSE_CODE};
use self::detect::Thresholds;
use self::gateway::{Gateway, GatewayOptions, ProcessSample, Upstream};
use self::report::{BenchReport, Detection, GatewayUsage, Load, Machine, Percentiles, Settings, SlowClients};
use crate::simulator::{SimulatorConfig, SimulatorHandle};

/// Time the gateway gets to authenticate upstream and load the symbol list.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Time the gateway gets to subscribe upstream to every bench symbol.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Pause before a memory reading, so connection set-up has finished.
const SETTLE: Duration = Duration::from_secs(1);

/// Time every client gets to close and report after the window.
const CLIENTS_DONE_TIMEOUT: Duration = Duration::from_secs(30);

/// Interval of the simulator statistics polls while waiting for the gateway.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The simulator's timestamps are whole milliseconds.
const TIMESTAMP_RESOLUTION_US: u64 = 1000;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Symbols every client subscribes to (at most the simulator's symbol count, 24).
    #[arg(long, default_value_t = 10)]
    pub symbols: usize,

    /// Spot events per second per symbol from the simulator; the upstream rate is this times
    /// --symbols.
    #[arg(long, default_value_t = 100.0)]
    pub tick_rate: f64,

    /// WebSocket clients that read every tick and measure latency.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,

    /// Extra clients that subscribe and never read, so the gateway must close them (code 4002).
    #[arg(long, default_value_t = 2)]
    pub slow_clients: usize,

    /// Length of the measurement window, in seconds.
    #[arg(long, default_value_t = 20.0)]
    pub duration_s: f64,

    /// Time between subscribing and the start of the window, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_s: f64,

    /// Rounds of fault injection (stall, silence, drop) for the detection timings; 0 skips them.
    #[arg(long, default_value_t = 2)]
    pub detection_rounds: u32,

    /// Stale threshold of the gateway under test, in milliseconds. Keep it well above the gap
    /// between ticks (1000 / (tick rate x symbols) ms), or the load phase turns stale.
    #[arg(long, default_value_t = 2000)]
    pub stale_after_ms: u64,

    /// Liveness timeout of the gateway under test, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub liveness_timeout_ms: u64,

    /// First reconnect delay of the gateway under test, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub backoff_base_ms: u64,

    /// File that receives the results as JSON.
    #[arg(long, default_value = "target/bench-results.json")]
    pub out: PathBuf,

    /// The `tickgate` executable to run as the gateway under test; defaults to this one.
    #[arg(long)]
    pub serve_exe: Option<PathBuf>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let started_at_ms = chrono::Utc::now().timestamp_millis();

    // Ctrl-C drops the run, and with it the gateway child, which is killed on drop.
    let report = tokio::select! {
        report = run_bench(&args, started_at_ms) => report?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; no results written"),
    };

    print!("{}", report.table());
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&args.out, json + "\n").with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("results written to {}", args.out.display());
    Ok(())
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    let usage = |message: String| Err(super::UsageError(message).into());
    if args.symbols == 0 {
        return usage("--symbols 0 is not allowed: use at least 1".into());
    }
    if !(args.tick_rate > 0.0 && args.tick_rate <= 100_000.0) {
        return usage(format!("--tick-rate {} is out of range: use a rate above 0 and at most 100000 per second", args.tick_rate));
    }
    if args.clients == 0 || args.clients > 10_000 {
        return usage(format!("--clients {} is out of range: use 1 to 10000", args.clients));
    }
    if args.slow_clients > 1_000 {
        return usage(format!("--slow-clients {} is out of range: use 0 to 1000", args.slow_clients));
    }
    if !(args.duration_s > 0.0 && args.duration_s <= 3600.0) {
        return usage(format!("--duration-s {} is out of range: use more than 0 and at most 3600 seconds", args.duration_s));
    }
    if !(0.0..=600.0).contains(&args.warmup_s) {
        return usage(format!("--warmup-s {} is out of range: use 0 to 600 seconds", args.warmup_s));
    }
    if args.detection_rounds > 20 {
        return usage(format!("--detection-rounds {} is out of range: use 0 to 20", args.detection_rounds));
    }
    for (flag, value) in [
        ("--stale-after-ms", args.stale_after_ms),
        ("--liveness-timeout-ms", args.liveness_timeout_ms),
        ("--backoff-base-ms", args.backoff_base_ms),
    ] {
        if value == 0 || value > 600_000 {
            return usage(format!("{flag} {value} is out of range: use 1 to 600000 milliseconds"));
        }
    }
    Ok(())
}

async fn run_bench(args: &BenchArgs, started_at_ms: i64) -> anyhow::Result<BenchReport> {
    let work_dir = WorkDir::create()?;
    let simulator_config = SimulatorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tick_rate: args.tick_rate,
        control: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..SimulatorConfig::default()
    };
    let mut upstream = Upstream {
        addr: simulator_config.listen,
        server_name: String::new(),
        client_id: simulator_config.client_id.clone(),
        client_secret: simulator_config.client_secret.clone(),
        access_token: simulator_config.access_token.clone(),
        account_id: simulator_config.account_id,
    };

    let simulator = SimulatorHandle::start(simulator_config).await.context("cannot start the simulator")?;
    upstream.addr = simulator.addr();
    upstream.server_name = simulator.server_name().to_string();
    info!(simulator = %simulator.addr(), tick_rate = args.tick_rate, "simulator started");

    let result = run_against(args, started_at_ms, &simulator, &upstream, &work_dir).await;
    simulator.shutdown().await;
    result
}

async fn run_against(
    args: &BenchArgs,
    started_at_ms: i64,
    simulator: &SimulatorHandle,
    upstream: &Upstream,
    work_dir: &WorkDir,
) -> anyhow::Result<BenchReport> {
    let symbols = pick_symbols(simulator, args.symbols)?;

    // 1. Start the gateway against the simulator, and wait until its session is ready.
    let serve_exe = match &args.serve_exe {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find the tickgate executable")?,
    };
    let serve_args = serve_args(args);
    let mut gateway = start_gateway(&serve_exe, &serve_args, simulator, upstream, work_dir).await?;
    wait_until_ready(simulator, &mut gateway).await?;
    tokio::time::sleep(SETTLE).await;
    let idle = gateway.sample()?;
    info!(rss_kib = idle.rss_kib, "gateway idle");

    // 2. Connect every client without subscribing, for the memory cost of an idle client.
    let subscribe: Arc<str> = Arc::from(wire::subscribe_request(&symbols));
    let window = Arc::new(Window::new());
    let (phase_tx, phase_rx) = watch::channel(Phase::Idle);
    let (fast_tasks, slow_tasks) = connect_clients(args, gateway.ws_url(), &subscribe, &phase_rx, &window).await?;
    tokio::time::sleep(SETTLE).await;
    gateway.check_running()?;
    let with_idle_clients = gateway.sample()?;
    let connected = args.clients + args.slow_clients;
    info!(clients = connected, rss_kib = with_idle_clients.rss_kib, "clients connected");

    // 3. Subscribe everyone, warm up, then measure over the window.
    let subscribed_at_us = clients::unix_now_us();
    phase_tx.send_replace(Phase::Subscribed);
    wait_until_subscribed(simulator, &symbols).await?;
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_s)).await;

    let spot_events_before = simulator.stats().spot_events_sent;
    let clock_ticks_per_s = gateway::clock_ticks_per_s();
    let bench_before = gateway::sample_process("self", clock_ticks_per_s)?;
    let before = gateway.sample()?;
    let window_start = Instant::now();
    window.open(clients::unix_now_us());
    info!(duration_s = args.duration_s, "measurement window open");
    sleep_watching(&mut gateway, Duration::from_secs_f64(args.duration_s)).await?;
    window.close(clients::unix_now_us());
    let window_s = window_start.elapsed().as_secs_f64();
    let after = gateway.sample()?;
    let bench_after = gateway::sample_process("self", clock_ticks_per_s)?;
    let spot_events_after = simulator.stats().spot_events_sent;
    info!(window_s, "measurement window closed");

    // 4. Close the clients and collect what they measured.
    phase_tx.send_replace(Phase::Stop);
    let deadline = tokio::time::Instant::now() + CLIENTS_DONE_TIMEOUT;
    let fast = collect_fast_clients(fast_tasks, deadline).await?;
    let mut slow = collect_slow_clients(slow_tasks, deadline).await?;
    let counters = GatewayCounters::fetch(&gateway).await;
    slow.gateway_count = counters.slow_client_disconnects;

    // 5. Fault detection, with one client watching the status frames.
    let thresholds = Thresholds {
        stale_after_ms: args.stale_after_ms,
        liveness_timeout_ms: args.liveness_timeout_ms,
        backoff_base_ms: args.backoff_base_ms,
    };
    let rounds = if args.detection_rounds > 0 {
        info!(rounds = args.detection_rounds, "measuring fault detection");
        detect::run_detection(gateway.ws_url(), &symbols[0], simulator, thresholds, args.detection_rounds).await?
    } else {
        Vec::new()
    };
    let pid = gateway.pid();
    gateway.stop().await;

    // 6. Put the numbers together.
    let samples = Samples { idle, with_idle_clients, before, after, bench_before, bench_after };
    let upstream_ticks_per_s = spot_events_after.saturating_sub(spot_events_before) as f64 / window_s;
    let expected_per_s = upstream_ticks_per_s * args.clients as f64;
    let delivered = fast.window_ticks;
    let delivered_per_s = delivered as f64 / window_s;
    Ok(BenchReport {
        tickgate_version: env!("CARGO_PKG_VERSION"),
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
        started_at_ms,
        machine: Machine::describe(),
        settings: Settings {
            symbols: symbols.len(),
            tick_rate_per_symbol: args.tick_rate,
            clients: args.clients,
            slow_clients: args.slow_clients,
            warmup_s: args.warmup_s,
            duration_s: args.duration_s,
            detection_rounds: args.detection_rounds,
            serve_exe: serve_exe.display().to_string(),
            serve_args,
        },
        load: Load {
            window_s,
            upstream_ticks_per_s,
            delivered_messages: delivered,
            delivered_per_s,
            expected_per_s,
            delivery_ratio: if expected_per_s > 0.0 { delivered_per_s / expected_per_s } else { 0.0 },
            invalid_frames: fast.invalid_frames,
            fast_clients_lost: fast.lost,
            fast_clients_closed_4002: fast.closed_4002,
            first_client_lost_after_s: fast.first_lost_at_us.map(|at_us| at_us.saturating_sub(subscribed_at_us) as f64 / 1e6),
            delivered_messages_whole_run: fast.total_ticks,
            hub_lagged_events: counters.hub_lagged_events,
            latency_us: Percentiles::from_histogram(&fast.latency_us),
            gateway_mean_latency_to_write_ms: counters.mean_latency_to_write_ms,
            latency_resolution_us: TIMESTAMP_RESOLUTION_US,
        },
        gateway: gateway_usage(pid, &samples, window_s, delivered, connected),
        slow_clients: slow,
        detection: Detection { thresholds, rounds },
    })
}

/// Returns the flags the gateway under test gets after `serve --listen 127.0.0.1:0`.
fn serve_args(args: &BenchArgs) -> Vec<String> {
    vec![
        "--stale-after-ms".into(),
        args.stale_after_ms.to_string(),
        "--liveness-timeout-ms".into(),
        args.liveness_timeout_ms.to_string(),
        "--backoff-base-ms".into(),
        args.backoff_base_ms.to_string(),
    ]
}

/// Writes the simulator's CA next to the gateway's log and starts `tickgate serve` against it.
async fn start_gateway(
    serve_exe: &Path,
    serve_args: &[String],
    simulator: &SimulatorHandle,
    upstream: &Upstream,
    work_dir: &WorkDir,
) -> anyhow::Result<Gateway> {
    let ca_file = work_dir.path.join("simulator-ca.pem");
    std::fs::write(&ca_file, simulator.ca_pem()).with_context(|| format!("cannot write {}", ca_file.display()))?;
    Gateway::start(GatewayOptions {
        exe: serve_exe,
        upstream,
        ca_file: &ca_file,
        extra_args: serve_args.to_vec(),
        log_file: work_dir.path.join("gateway.log"),
    })
    .await
}

/// Connects the fast and the slow clients one after another and starts their tasks.
async fn connect_clients(
    args: &BenchArgs,
    url: &str,
    subscribe: &Arc<str>,
    phase: &watch::Receiver<Phase>,
    window: &Arc<Window>,
) -> anyhow::Result<(Vec<JoinHandle<ClientOutcome>>, Vec<JoinHandle<ClientEnd>>)> {
    let mut fast_tasks = Vec::with_capacity(args.clients);
    for index in 0..args.clients {
        let ws = clients::connect(url, None)
            .await
            .with_context(|| format!("client {index} cannot connect (with many clients, check the open files limit, ulimit -n)"))?;
        fast_tasks.push(tokio::spawn(clients::run_fast_client(ws, subscribe.clone(), phase.clone(), window.clone())));
    }

    let mut slow_tasks = Vec::with_capacity(args.slow_clients);
    for index in 0..args.slow_clients {
        let ws = clients::connect(url, clients::slow_client_recv_buffer())
            .await
            .with_context(|| format!("slow client {index} cannot connect"))?;
        slow_tasks.push(tokio::spawn(clients::run_slow_client(ws, subscribe.clone(), phase.clone())));
    }
    Ok((fast_tasks, slow_tasks))
}

/// Totals over the fast clients.
struct FastTotals {
    window_ticks: u64,
    total_ticks: u64,
    invalid_frames: u64,
    latency_us: Histogram<u64>,
    /// Clients whose connection ended before the end of the run.
    lost: usize,
    /// Of those, the ones the gateway closed with 4002.
    closed_4002: usize,
    /// Unix microseconds of the first early end.
    first_lost_at_us: Option<u64>,
}

async fn collect_fast_clients(tasks: Vec<JoinHandle<ClientOutcome>>, deadline: tokio::time::Instant) -> anyhow::Result<FastTotals> {
    let mut totals = FastTotals {
        window_ticks: 0,
        total_ticks: 0,
        invalid_frames: 0,
        latency_us: clients::new_latency_histogram(),
        lost: 0,
        closed_4002: 0,
        first_lost_at_us: None,
    };
    for task in tasks {
        let outcome = tokio::time::timeout_at(deadline, task)
            .await
            .context("clients did not finish in time")?
            .context("a client task failed")?;
        totals.window_ticks += outcome.window_ticks;
        totals.total_ticks += outcome.total_ticks;
        totals.invalid_frames += outcome.invalid_frames;
        totals.latency_us.add(&outcome.latency_us).context("cannot merge latency histograms")?;
        if let Some(at_us) = outcome.ended_early_at_us {
            totals.first_lost_at_us = Some(totals.first_lost_at_us.map_or(at_us, |first| first.min(at_us)));
        }
        match outcome.end {
            ClientEnd::ClosedByClient => {}
            ClientEnd::ClosedByGateway { code } => {
                totals.lost += 1;
                if code == SLOW_CLIENT_CLOSE_CODE {
                    totals.closed_4002 += 1;
                }
            }
            ClientEnd::Lost { error } => {
                warn!(error = %error, "client connection lost during the run");
                totals.lost += 1;
            }
        }
    }
    Ok(totals)
}

async fn collect_slow_clients(tasks: Vec<JoinHandle<ClientEnd>>, deadline: tokio::time::Instant) -> anyhow::Result<SlowClients> {
    let mut slow = SlowClients { clients: tasks.len(), closed_4002: 0, closed_otherwise: 0, still_open: 0, gateway_count: None };
    for task in tasks {
        let end = tokio::time::timeout_at(deadline, task)
            .await
            .context("slow clients did not finish in time")?
            .context("a slow client task failed")?;
        match end {
            ClientEnd::ClosedByGateway { code } if code == SLOW_CLIENT_CLOSE_CODE => slow.closed_4002 += 1,
            ClientEnd::ClosedByClient => slow.still_open += 1,
            other => {
                // Seen when the close frame could not get past the full buffers before the
                // gateway gave up on the close handshake.
                info!(end = ?other, "slow client ended without a 4002 close frame");
                slow.closed_otherwise += 1;
            }
        }
    }
    Ok(slow)
}

/// Counters from the gateway's `/metrics`; each is `None` when it could not be read.
struct GatewayCounters {
    slow_client_disconnects: Option<u64>,
    hub_lagged_events: Option<u64>,
    mean_latency_to_write_ms: Option<f64>,
}

impl GatewayCounters {
    async fn fetch(gateway: &Gateway) -> Self {
        let metrics = match gateway.fetch_metrics().await {
            Ok(metrics) => metrics,
            Err(error) => {
                warn!(error = %error, "cannot read the gateway's metrics");
                Default::default()
            }
        };
        let counter = |name: &str| metrics.get(name).map(|value| *value as u64);
        let mean_latency_to_write_ms = match (
            metrics.get("tickgate_tick_latency_seconds_sum"),
            metrics.get("tickgate_tick_latency_seconds_count"),
        ) {
            (Some(sum_s), Some(count)) if *count > 0.0 => Some(sum_s * 1000.0 / count),
            _ => None,
        };
        Self {
            slow_client_disconnects: counter("tickgate_slow_client_disconnects_total"),
            hub_lagged_events: counter("tickgate_hub_lagged_events_total"),
            mean_latency_to_write_ms,
        }
    }
}

/// Readings of the gateway process, and of the bench process around the window.
struct Samples {
    idle: ProcessSample,
    with_idle_clients: ProcessSample,
    before: ProcessSample,
    after: ProcessSample,
    bench_before: ProcessSample,
    bench_after: ProcessSample,
}

fn gateway_usage(pid: u32, samples: &Samples, window_s: f64, delivered: u64, clients: usize) -> GatewayUsage {
    let cpu_s = (samples.after.cpu_s - samples.before.cpu_s).max(0.0);
    let bench_cpu_s = (samples.bench_after.cpu_s - samples.bench_before.cpu_s).max(0.0);
    let per_client = (samples.with_idle_clients.rss_kib as f64 - samples.idle.rss_kib as f64) / clients as f64;
    GatewayUsage {
        pid,
        cpu_s,
        cpu_cores: cpu_s / window_s,
        bench_process_cpu_cores: bench_cpu_s / window_s,
        cpu_s_per_million_messages: if delivered > 0 { cpu_s / (delivered as f64 / 1e6) } else { 0.0 },
        rss_idle_kib: samples.idle.rss_kib,
        rss_with_idle_clients_kib: samples.with_idle_clients.rss_kib,
        rss_per_idle_client_kib: per_client,
        rss_under_load_kib: samples.after.rss_kib,
        rss_peak_kib: samples.after.peak_rss_kib,
    }
}

/// Returns the first `count` distinct symbol names the simulator offers.
fn pick_symbols(simulator: &SimulatorHandle, count: usize) -> anyhow::Result<Vec<String>> {
    let mut seen = BTreeSet::new();
    let names: Vec<String> = simulator
        .symbols()
        .into_iter()
        .map(|symbol| symbol.name)
        .filter(|name| seen.insert(name.clone()))
        .collect();
    if names.len() < count {
        return Err(super::UsageError(format!(
            "--symbols {count} is more than the simulator's {} symbols; use at most {}",
            names.len(),
            names.len()
        ))
        .into());
    }
    Ok(names.into_iter().take(count).collect())
}

/// Waits until the gateway's session has authenticated and asked for the symbol list.
async fn wait_until_ready(simulator: &SimulatorHandle, gateway: &mut Gateway) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        gateway.check_running()?;
        let stats = simulator.stats();
        let asked_for_symbols = stats.requests_by_type.iter().any(|(name, count)| name.contains("SymbolsListReq") && *count > 0);
        if stats.connections_current > 0 && asked_for_symbols {
            return Ok(());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    bail!(
        "the gateway did not authenticate with the simulator within {} s; its log ends with:\n{}",
        READY_TIMEOUT.as_secs(),
        gateway.log_tail()
    )
}

/// Waits until the simulator has a live subscription for every symbol.
async fn wait_until_subscribed(simulator: &SimulatorHandle, symbols: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
    loop {
        let stats = simulator.stats();
        let missing: Vec<&String> = symbols
            .iter()
            .filter(|symbol| stats.subscriptions.get(symbol.as_str()).copied().unwrap_or(0) == 0)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the gateway did not subscribe upstream within {} s; still missing: {missing:?}",
                SUBSCRIBE_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Sleeps for `duration`, failing early if the gateway exits.
async fn sleep_watching(gateway: &mut Gateway, duration: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + duration;
    loop {
        gateway.check_running()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
    }
}

/// A private temporary directory for the CA file and the gateway's log, removed on drop.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create() -> anyhow::Result<Self> {
        let name = format!("tickgate-bench-{}-{}", std::process::id(), chrono::Utc::now().timestamp_millis());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        remove_dir(&self.path);
    }
}

fn remove_dir(path: &Path) {
    if let Err(error) = std::fs::remove_dir_all(path) {
        warn!(path = %path.display(), error = %error, "cannot remove the bench's temporary directory");
    }
}
