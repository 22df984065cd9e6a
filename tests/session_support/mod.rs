//! Shared fixtures for the session tests: a simulator with fast heartbeats, a session
//! configuration with short thresholds, and a probe that records what the session reports.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio::time::Instant;

use tickgate::fsm::{self, StateName};
use tickgate::session::{SessionConfig, SessionEvent, SessionHandle, SessionStatus, TransitionRecord};
use tickgate::simulator::{SimulatorConfig, SimulatorHandle, DEMO_ACCESS_TOKEN, DEMO_ACCOUNT_ID, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET};

/// Generous upper bound for anything the fast configuration should do in well under a second.
pub const WAIT: Duration = Duration::from_secs(10);

/// State machine thresholds short enough for a test, long enough for a loaded 2-core machine.
pub fn fast_fsm() -> fsm::Config {
    fsm::Config {
        connect_timeout_ms: 1_000,
        stale_after_ms: 300,
        liveness_timeout_ms: 500,
        heartbeat_interval_ms: 100,
        stale_reconnect_after_ms: 600,
        backoff_base_ms: 50,
        backoff_cap_ms: 400,
        jitter: 0.1,
        jitter_seed: 7,
        has_refresh_token: false,
    }
}

/// A running simulator plus the temporary directory holding its CA file.
pub struct Fixture {
    pub sim: SimulatorHandle,
    pub dir: TempDir,
    pub ca_file: PathBuf,
}

impl Fixture {
    /// Starts a simulator with 100 ms heartbeats and 20 spot events per second per symbol;
    /// `tweak` adjusts its configuration first.
    pub async fn start(tweak: impl FnOnce(&mut SimulatorConfig)) -> Fixture {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut config = SimulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tick_rate: 20.0,
            heartbeat_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(3),
            duplicate_close_after: Duration::from_millis(300),
            ..SimulatorConfig::default()
        };
        tweak(&mut config);
        let sim = SimulatorHandle::start(config).await.expect("simulator starts");
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("simulator-ca.pem");
        std::fs::write(&ca_file, sim.ca_pem()).unwrap();
        Fixture { sim, dir, ca_file }
    }

    /// A session configuration for this simulator with the fast thresholds.
    pub fn session_config(&self) -> SessionConfig {
        let mut config = SessionConfig::new(
            "127.0.0.1",
            self.sim.addr().port(),
            DEMO_CLIENT_ID,
            DEMO_CLIENT_SECRET,
            DEMO_ACCESS_TOKEN,
            DEMO_ACCOUNT_ID,
        );
        config.server_name = self.sim.server_name().to_string();
        config.ca_file = Some(self.ca_file.clone());
        config.fsm = fast_fsm();
        config.request_timeout = Duration::from_secs(2);
        config.subscribe_spacing = Duration::from_millis(5);
        config.rate_limit_pause = Duration::from_millis(100);
        config
    }

    /// The simulator's live subscriptions, by normalised name, with zero counts left out.
    pub fn upstream(&self) -> BTreeMap<String, usize> {
        self.sim.stats().subscriptions.into_iter().filter(|(_, count)| *count > 0).collect()
    }

    /// Highest number of concurrent sessions the simulator saw for the demo account.
    pub fn max_concurrent(&self) -> usize {
        self.sim.stats().max_concurrent_per_account.get(&DEMO_ACCOUNT_ID).copied().unwrap_or(0)
    }
}

/// Starts a session driver with a probe subscribed before the driver runs, so the probe sees
/// every event from the first transition on.
pub fn spawn_session(config: SessionConfig) -> (SessionHandle, tokio::task::JoinHandle<anyhow::Result<()>>, Probe) {
    let (handle, ends) = SessionHandle::channel(config.event_capacity);
    let probe = Probe::new(&handle);
    let task = tokio::spawn(tickgate::session::driver::run(config, ends));
    (handle, task, probe)
}

/// Everything a session reported, in order, as read from its event broadcast.
pub struct Probe {
    events: Receiver<SessionEvent>,
    pub transitions: Vec<TransitionRecord>,
    pub statuses: Vec<SessionStatus>,
    pub ticks: BTreeMap<String, usize>,
    pub failures: Vec<(String, String)>,
    pub ready: usize,
    pub tick_log: Vec<tickgate::protocol::Tick>,
}

impl Probe {
    pub fn new(handle: &SessionHandle) -> Probe {
        Probe {
            events: handle.events(),
            transitions: Vec::new(),
            statuses: Vec::new(),
            ticks: BTreeMap::new(),
            failures: Vec::new(),
            ready: 0,
            tick_log: Vec::new(),
        }
    }

    fn record(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Tick(tick) => {
                *self.ticks.entry(tick.symbol.to_string()).or_default() += 1;
                if self.tick_log.len() < 10_000 {
                    self.tick_log.push(tick);
                }
            }
            SessionEvent::Status(status) => self.statuses.push(status),
            SessionEvent::Ready { .. } => self.ready += 1,
            SessionEvent::Transition(record) => self.transitions.push(record),
            SessionEvent::SubscriptionFailed { symbol, code, .. } => self.failures.push((symbol, code)),
        }
    }

    /// Reads events until `done` holds, failing the test after `timeout` with what was seen.
    pub async fn wait_until(&mut self, what: &str, timeout: Duration, mut done: impl FnMut(&Probe) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Ok(event)) => self.record(event),
                Ok(Err(RecvError::Lagged(_))) => {}
                Ok(Err(RecvError::Closed)) => panic!("session stopped while waiting for {what}; path {:?}", self.path()),
                Err(_) => panic!("timed out waiting for {what}; path {:?}; ticks {:?}", self.path(), self.ticks),
            }
        }
    }

    /// Waits until the machine enters `state` (counting transitions from the current position).
    pub async fn wait_state(&mut self, state: StateName) {
        let seen = self.transitions.len();
        self.wait_until(&format!("state {state}"), WAIT, |p| p.transitions[seen..].iter().any(|t| t.to == state)).await;
    }

    /// Forgets tick counts, so a later wait sees only new ticks.
    pub fn reset_ticks(&mut self) {
        self.ticks.clear();
        self.tick_log.clear();
    }

    /// Waits for at least `count` new ticks of every symbol in `symbols`.
    pub async fn wait_ticks(&mut self, symbols: &[&str], count: usize) {
        let symbols: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
        self.wait_until(&format!("{count} ticks of each of {symbols:?}"), WAIT, |p| {
            symbols.iter().all(|s| p.ticks.get(s).copied().unwrap_or(0) >= count)
        })
        .await;
    }

    /// Drains events already queued without waiting.
    pub fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.record(event);
        }
    }

    /// The states entered so far, in order.
    pub fn path(&self) -> Vec<StateName> {
        self.transitions.iter().map(|t| t.to).collect()
    }

    /// The states entered after transition index `from`.
    pub fn path_since(&self, from: usize) -> Vec<StateName> {
        self.transitions[from..].iter().map(|t| t.to).collect()
    }
}

/// Names as the session reports them, for comparing with the simulator's statistics.
pub fn names(symbols: &[&str]) -> BTreeMap<String, usize> {
    symbols.iter().map(|s| (s.to_string(), 1)).collect()
}

/// Waits until the simulator's live subscriptions equal `expected`.
pub async fn wait_upstream(fixture: &Fixture, expected: &BTreeMap<String, usize>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let upstream = fixture.upstream();
        if &upstream == expected {
            return;
        }
        if Instant::now() > deadline {
            panic!("simulator subscriptions {upstream:?}, expected {expected:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `condition` every 20 ms until it holds, failing the test after [`WAIT`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        if Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
