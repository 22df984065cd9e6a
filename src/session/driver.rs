//! The session driver: one task that owns the connection state machine and performs its actions
//! on a real TLS connection.
//!
//! The machine decides; the driver only translates. Socket events, responses, timer expiries and
//! commands become [`Input`]s; every [`Action`] the machine returns is performed in order before
//! the next input is fed. The driver keeps one sleep for the earliest of three kinds of deadline:
//! the machine's timers, request timeouts, and the pacing of subscription requests.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Sleep;

use crate::fsm::{Action, AuthStep, Input, LogLevel, Machine, Millis, Request, StateName, StatusChange};
use crate::protocol::codec::FrameError;
use crate::protocol::correlation::Correlator;
use crate::protocol::error::ApiError;
use crate::protocol::message::Message;
use crate::protocol::pb;

use super::config::SessionConfig;
use super::connection::{Connection, WriteFailed, CLOSE_TIMEOUT};
use super::handle::{Command, DriverEnds, SessionEvent, SessionHandle, SessionStatus, TransitionRecord};
use super::journal::Journal;
use super::spot::SpotBook;
use super::subscriptions::{Job, RequestQueue, Subscriptions};
use super::symbols::{SymbolDetails, SymbolTable};
use super::timers::{unix_ms, Clock, TimerTable};
use super::tokens::{TokenFile, Tokens};
use super::transport::{self, Stream, TransportError};

mod inbound;
mod subscribing;

/// Error code reported when a request got no response in time.
const REQUEST_TIMEOUT_CODE: &str = "REQUEST_TIMEOUT";

/// Starts a session driver task and returns the handle users talk to.
///
/// The task ends with `Ok(())` after [`Command::Shutdown`] or when every handle is dropped, and
/// with an error only if the configuration is unusable (invalid values, unreadable CA file or
/// journal).
pub fn spawn(config: SessionConfig) -> (SessionHandle, JoinHandle<anyhow::Result<()>>) {
    let (handle, ends) = SessionHandle::channel(config.event_capacity.max(1));
    let task = tokio::spawn(run(config, ends));
    (handle, task)
}

/// Runs the driver on the given channel ends until shutdown.
pub async fn run(config: SessionConfig, ends: DriverEnds) -> anyhow::Result<()> {
    prepare(config, ends)?.run().await;
    Ok(())
}

/// A session whose configuration was checked and whose files are open, ready to run.
pub struct PreparedSession(Driver);

impl PreparedSession {
    /// Runs the driver until shutdown.
    pub async fn run(self) {
        let mut driver = self.0;
        driver.run().await;
    }
}

/// Checks the configuration and opens what the driver needs (token file, TLS roots, journal).
/// Commands call it before they start anything else, so that a bad value stops the process at
/// start with a message, instead of ending a background task that nobody watches.
pub fn prepare(mut config: SessionConfig, ends: DriverEnds) -> anyhow::Result<PreparedSession> {
    config.validate()?;
    let token_file = config.token_file.as_deref().map(TokenFile::for_path);
    if let Some(file) = &token_file {
        // A refresh spends the old refresh token, so tokens saved by an earlier run win.
        if let Some(saved) = file.load()? {
            if saved.access_token != config.access_token {
                tracing::info!(path = %file.path().display(), "using the tokens saved in the token file");
            }
            config.access_token = saved.access_token;
            config.refresh_token = Some(saved.refresh_token).filter(|token| !token.is_empty());
        }
    }
    config.fsm.has_refresh_token = config.refresh_token.is_some();
    let tls = transport::tls_config_with_pem(config.ca_file.as_deref(), config.ca_pem.as_deref())?;
    let journal = match &config.journal {
        Some(path) => Some(Journal::create(path, &config.fsm).map_err(|error| {
            anyhow::anyhow!("cannot create journal {}: {error}; pass a writable file path to --journal", path.display())
        })?),
        None => None,
    };
    Ok(PreparedSession(Driver::new(config, ends, tls, journal, token_file)))
}

/// The purpose of an outstanding request, kept until its response or timeout.
#[derive(Clone, Debug)]
enum Pending {
    AppAuth,
    AccountAuth,
    RefreshToken,
    SymbolsList,
    Job(Job),
}

/// The connection slot: nothing, a connect in progress, or an open connection.
enum Link {
    Idle,
    Connecting(JoinHandle<Result<Stream, TransportError>>),
    Open(Connection),
}

struct Driver {
    config: SessionConfig,
    tls: Arc<rustls::ClientConfig>,
    machine: Machine,
    commands: mpsc::Receiver<Command>,
    events: tokio::sync::broadcast::Sender<SessionEvent>,
    status_tx: tokio::sync::watch::Sender<SessionStatus>,
    status: SessionStatus,
    journal: Option<Journal>,

    clock: Clock,
    timers: TimerTable,
    sleep: std::pin::Pin<Box<Sleep>>,
    armed: Option<Millis>,

    link: Link,
    generation: u64,
    /// The writer task of the last closed connection, still sending close_notify.
    closing: Option<JoinHandle<()>>,
    write_failures_tx: mpsc::UnboundedSender<WriteFailed>,
    write_failures: mpsc::UnboundedReceiver<WriteFailed>,

    requests: Correlator<Pending>,
    queue: RequestQueue,
    subscriptions: Subscriptions,
    subscribe_attempts: HashMap<Arc<str>, u32>,
    /// RestoreSubscriptions ran on the current connection, so new subscriptions go out at once.
    restored: bool,
    symbols: SymbolTable,
    /// Digits and pip position by symbol id, kept across reconnects.
    details: HashMap<i64, SymbolDetails>,
    book: SpotBook,
    /// Symbols whose first spot event since subscribing has not arrived yet. cTrader sends that
    /// event with the current price even when the market is closed, so it proves nothing about
    /// the feed moving and is fed to the machine as a plain frame.
    awaiting_snapshot: HashSet<i64>,
    tokens: Tokens,
    /// The account session on the current connection is authorised.
    account_authorised: bool,
    /// A refresh replaced the token of an authorised session, so the server's invalidation of
    /// that session is expected and is not a new reason to refresh.
    expect_invalidation: bool,
    token_file: Option<TokenFile>,
    has_refresh_token: bool,

    inputs: VecDeque<Input>,
    actions: Vec<Action>,
    unknown_payload_types: HashSet<u32>,
    stopped: bool,
}

impl Driver {
    fn new(
        config: SessionConfig,
        ends: DriverEnds,
        tls: Arc<rustls::ClientConfig>,
        journal: Option<Journal>,
        token_file: Option<TokenFile>,
    ) -> Self {
        let clock = Clock::new();
        let (write_failures_tx, write_failures) = mpsc::unbounded_channel();
        let tokens = Tokens {
            access_token: config.access_token.clone(),
            refresh_token: config.refresh_token.clone().unwrap_or_default(),
        };
        Self {
            machine: Machine::new(config.fsm.clone()),
            queue: RequestQueue::new(config.subscribe_concurrency, config.subscribe_spacing.as_millis() as u64),
            has_refresh_token: config.refresh_token.is_some(),
            tokens,
            account_authorised: false,
            expect_invalidation: false,
            token_file,
            tls,
            commands: ends.commands,
            events: ends.events,
            status_tx: ends.status,
            status: SessionStatus::initial(),
            journal,
            sleep: Box::pin(tokio::time::sleep_until(clock.instant_at(clock.now()))),
            clock,
            timers: TimerTable::default(),
            armed: None,
            link: Link::Idle,
            generation: 0,
            closing: None,
            write_failures_tx,
            write_failures,
            requests: Correlator::new("c0"),
            subscriptions: Subscriptions::new(),
            subscribe_attempts: HashMap::new(),
            restored: false,
            symbols: SymbolTable::default(),
            details: HashMap::new(),
            book: SpotBook::new(),
            awaiting_snapshot: HashSet::new(),
            inputs: VecDeque::new(),
            actions: Vec::new(),
            unknown_payload_types: HashSet::new(),
            stopped: false,
            config,
        }
    }

    async fn run(&mut self) {
        tracing::info!(host = %self.config.host, port = self.config.port, account = self.config.account_id, "session starting");
        self.status.since_ms = unix_ms();
        self.publish_status();
        self.inputs.push_back(Input::Start);

        while !self.stopped {
            self.drain_inputs();
            self.pump_queue();
            self.drain_inputs();
            self.rearm_sleep();
            if self.stopped {
                break;
            }

            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command).await,
                    None => self.shutdown("every session handle was dropped").await,
                },
                event = next_link_event(&mut self.link) => match event {
                    LinkEvent::Connected(result) => self.on_connected(result),
                    LinkEvent::Frame(frame) => self.on_frame(frame),
                },
                Some(failure) = self.write_failures.recv() => self.on_write_failure(failure),
                () = &mut self.sleep, if self.armed.is_some() => self.on_deadline(),
            }
        }

        if let Some(journal) = &mut self.journal {
            journal.flush();
        }
        tracing::info!("session stopped");
    }

    // ---- inputs and actions ----

    /// Feeds queued inputs to the machine one at a time, performing each one's actions before the
    /// next input. Actions may queue further inputs.
    fn drain_inputs(&mut self) {
        while let Some(input) = self.inputs.pop_front() {
            let now = self.clock.now();
            let mut actions = std::mem::take(&mut self.actions);
            actions.clear();
            let from = self.machine.state();
            let journal_input = self.journal.is_some().then(|| input.clone());
            self.machine.handle(now, input, &mut actions);
            if let (Some(journal), Some(input)) = (&mut self.journal, journal_input) {
                let to = self.machine.state();
                journal.record(now, &input, from, to, &actions);
                // Flushing on each transition keeps the interesting lines even if the process dies.
                if from != to {
                    journal.flush();
                }
            }
            for action in actions.drain(..) {
                self.perform(action, now);
            }
            self.actions = actions;
        }
    }

    fn perform(&mut self, action: Action, now: Millis) {
        match action {
            Action::OpenTransport => self.open_transport(),
            Action::CloseTransport { reason } => self.close_transport(&reason),
            Action::Send(request) => self.send_request(request, now),
            Action::RestoreSubscriptions => self.restore_subscriptions(),
            Action::ScheduleTimer { timer, at } => self.timers.schedule(timer, at),
            Action::CancelTimer(timer) => self.timers.cancel(timer),
            Action::Broadcast(change) => self.on_status_change(change, now),
            Action::Log { level, message } => {
                let state = self.machine.state();
                let attempt = self.machine.attempt();
                match level {
                    LogLevel::Info => tracing::info!(%state, attempt, "{message}"),
                    LogLevel::Warn => tracing::warn!(%state, attempt, "{message}"),
                    LogLevel::Error => tracing::error!(%state, attempt, "{message}"),
                }
            }
        }
    }

    fn on_status_change(&mut self, change: StatusChange, now: Millis) {
        let at_ms = unix_ms();
        let retry_in_ms = change.retry_at.map(|at| at.saturating_sub(now));
        tracing::info!(
            from = %change.from,
            to = %change.to,
            cause = %change.cause,
            attempt = change.attempt,
            retry_in_ms,
            reason = change.reason.as_deref().unwrap_or(""),
            "session state changed"
        );

        self.status.state = change.to;
        self.status.since_ms = at_ms;
        self.status.attempt = change.attempt;
        self.status.retry_in_ms = retry_in_ms;
        self.status.reason = change.reason.clone();
        self.status.upstream_subscriptions = self.subscriptions.upstream_len();
        self.status.desired_subscriptions = self.subscriptions.desired_len();
        self.status_tx.send_replace(self.status.clone());

        let record = TransitionRecord { at_ms, from: change.from, to: change.to, cause: change.cause };
        let _ = self.events.send(SessionEvent::Transition(record));
        let _ = self.events.send(SessionEvent::Status(self.status.clone()));
        // Leaving Stale for Streaming is ticks resuming, not the feed becoming ready again.
        if change.to == StateName::Streaming && change.from != StateName::Stale {
            let _ = self.events.send(SessionEvent::Ready { symbols: self.status.available_symbols.clone() });
        }
    }

    /// Refreshes the counts in the status snapshot without a state change.
    fn publish_status(&mut self) {
        self.status.upstream_subscriptions = self.subscriptions.upstream_len();
        self.status.desired_subscriptions = self.subscriptions.desired_len();
        let status = &self.status;
        self.status_tx.send_if_modified(|current| {
            let changed = current.upstream_subscriptions != status.upstream_subscriptions
                || current.desired_subscriptions != status.desired_subscriptions
                || !Arc::ptr_eq(&current.available_symbols, &status.available_symbols)
                || current.since_ms != status.since_ms;
            if changed {
                *current = status.clone();
            }
            changed
        });
    }

    // ---- transport ----

    fn open_transport(&mut self) {
        if !matches!(self.link, Link::Idle) {
            // The machine opens only from a closed state, so this is a safeguard: closing the old
            // link first means two connections to the account never overlap.
            self.close_transport("replaced by a new connection");
        }
        let host = self.config.host.clone();
        let port = self.config.port;
        let server_name = self.config.server_name.clone();
        let tls = self.tls.clone();
        let previous = self.closing.take();
        tracing::info!(%host, port, state = %self.machine.state(), attempt = self.machine.attempt(), "connecting");
        self.link = Link::Connecting(tokio::spawn(async move {
            // Let the previous connection finish closing first, so the server never sees two.
            if let Some(previous) = previous {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT * 2, previous).await;
            }
            transport::connect(&host, port, &server_name, tls).await
        }));
    }

    fn on_connected(&mut self, result: Result<Result<Box<Stream>, TransportError>, tokio::task::JoinError>) {
        self.link = Link::Idle;
        match result {
            Ok(Ok(stream)) => {
                self.generation += 1;
                let generation = self.generation;
                self.requests.reset(format!("c{generation}"));
                self.link = Link::Open(Connection::start(
                    *stream,
                    generation,
                    self.config.max_frame_len,
                    self.write_failures_tx.clone(),
                ));
                tracing::info!(generation, host = %self.config.host, "transport up");
                self.inputs.push_back(Input::TransportUp);
            }
            Ok(Err(error)) => {
                tracing::warn!(state = %self.machine.state(), attempt = self.machine.attempt(), %error, "connect failed");
                self.inputs.push_back(Input::TransportFailed { error: error.to_string() });
            }
            Err(join_error) => {
                let error = format!("connect task failed: {join_error}");
                tracing::error!(state = %self.machine.state(), attempt = self.machine.attempt(), %error, "connect failed");
                self.inputs.push_back(Input::TransportFailed { error });
            }
        }
    }

    fn close_transport(&mut self, reason: &str) {
        match std::mem::replace(&mut self.link, Link::Idle) {
            Link::Idle => {}
            Link::Connecting(task) => {
                task.abort();
                tracing::info!(reason, "connect abandoned");
            }
            Link::Open(connection) => {
                tracing::info!(generation = connection.generation, reason, "closing transport");
                self.closing = Some(connection.close());
            }
        }

        // Nothing of the old connection survives on the server, so nothing survives here either.
        let dropped = self.requests.reset(format!("c{}x", self.generation));
        if !dropped.is_empty() {
            tracing::debug!(count = dropped.len(), "requests dropped with the connection");
        }
        self.queue.clear();
        self.subscriptions.clear_upstream();
        self.subscribe_attempts.clear();
        self.book.clear();
        self.awaiting_snapshot.clear();
        self.restored = false;
        self.account_authorised = false;
        self.expect_invalidation = false;
        self.publish_status();
    }

    fn on_write_failure(&mut self, failure: WriteFailed) {
        let current = matches!(&self.link, Link::Open(c) if c.generation == failure.generation);
        if current {
            tracing::warn!(state = %self.machine.state(), attempt = self.machine.attempt(), error = %failure.error, "socket error");
            self.connection_lost(Input::SocketError { error: failure.error });
        }
    }

    /// Drops a connection that can no longer carry frames (closed, failed or out of sync), then
    /// feeds `input` to the machine. The machine does not ask to close a socket that is already
    /// gone, and a stream past its end or past a framing error must not be read again.
    fn connection_lost(&mut self, input: Input) {
        let reason = match &input {
            Input::SocketClosed { reason } => reason.clone(),
            Input::SocketError { error } => error.clone(),
            other => format!("{other:?}"),
        };
        self.close_transport(&reason);
        self.inputs.push_back(input);
    }

    fn send(&mut self, message: Message, client_msg_id: Option<String>) -> bool {
        match &self.link {
            Link::Open(connection) => {
                connection.send(message.encode(client_msg_id));
                true
            }
            _ => false,
        }
    }

    /// Registers a request with a deadline and sends it with its `clientMsgId`.
    fn send_tracked(&mut self, pending: Pending, message: Message, now: Millis) {
        if !matches!(self.link, Link::Open(_)) {
            tracing::debug!(request = ?pending, "no open connection, request not sent");
            return;
        }
        let deadline = now + self.config.request_timeout.as_millis() as Millis;
        let id = self.requests.register(pending, deadline);
        self.send(message, Some(id));
    }

    fn send_request(&mut self, request: Request, now: Millis) {
        let account = self.config.account_id;
        match request {
            Request::ApplicationAuth => {
                let message = Message::ApplicationAuthReq(pb::ProtoOaApplicationAuthReq {
                    client_id: self.config.client_id.clone(),
                    client_secret: self.config.client_secret.clone(),
                    ..Default::default()
                });
                self.send_tracked(Pending::AppAuth, message, now);
            }
            Request::AccountAuth => {
                let message = Message::AccountAuthReq(pb::ProtoOaAccountAuthReq {
                    ctid_trader_account_id: account,
                    access_token: self.tokens.access_token.clone(),
                    ..Default::default()
                });
                self.send_tracked(Pending::AccountAuth, message, now);
            }
            Request::RefreshToken => {
                if !self.has_refresh_token {
                    self.inputs.push_back(Input::AuthRejected {
                        step: AuthStep::TokenRefresh,
                        code: "NO_REFRESH_TOKEN".into(),
                        description: "no refresh token configured; set CTRADER_REFRESH_TOKEN".into(),
                    });
                    return;
                }
                let message = Message::RefreshTokenReq(pb::ProtoOaRefreshTokenReq {
                    refresh_token: self.tokens.refresh_token.clone(),
                    ..Default::default()
                });
                self.send_tracked(Pending::RefreshToken, message, now);
            }
            Request::SymbolsList => {
                let message = Message::SymbolsListReq(pb::ProtoOaSymbolsListReq {
                    ctid_trader_account_id: account,
                    include_archived_symbols: Some(false),
                    ..Default::default()
                });
                self.send_tracked(Pending::SymbolsList, message, now);
            }
            Request::Heartbeat => {
                // Heartbeats carry no clientMsgId and get no reply.
                self.send(Message::Heartbeat, None);
            }
        }
    }

    // ---- commands ----

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Subscribe(names) => self.subscribe(names),
            Command::Unsubscribe(names) => self.unsubscribe(names),
            Command::Reconnect { reason } => {
                tracing::info!(%reason, "reconnect requested");
                self.inputs.push_back(Input::ForceReconnect { reason });
            }
            Command::Shutdown => self.shutdown("shutdown requested").await,
        }
    }

    // ---- deadlines ----

    fn rearm_sleep(&mut self) {
        let queue_deadline = match self.link {
            Link::Open(_) => self.queue.next_deadline(),
            _ => None,
        };
        let earliest = [self.timers.next_deadline(), self.requests.next_deadline(), queue_deadline]
            .into_iter()
            .flatten()
            .min();
        if earliest != self.armed {
            self.armed = earliest;
            if let Some(at) = earliest {
                self.sleep.as_mut().reset(self.clock.instant_at(at));
            }
        }
    }

    fn on_deadline(&mut self) {
        // Re-read the clock after the sleep, so only what is due now fires.
        self.armed = None;
        let now = self.clock.now();

        while let Some(timer) = self.timers.pop_due(now) {
            self.inputs.push_back(Input::TimerFired(timer));
            // Feed each expiry before looking for the next, since its actions may cancel or
            // reschedule other timers.
            self.drain_inputs();
        }

        for (_, pending) in self.requests.expire(now) {
            self.on_request_timeout(pending);
        }
    }

    fn on_request_timeout(&mut self, pending: Pending) {
        let timeout_ms = self.config.request_timeout.as_millis();
        tracing::warn!(state = %self.machine.state(), attempt = self.machine.attempt(), request = ?pending, timeout_ms, "request timed out");
        let description = format!("no response within {timeout_ms} ms");
        let step = match pending {
            Pending::AppAuth => AuthStep::Application,
            Pending::AccountAuth => AuthStep::Account,
            Pending::RefreshToken => AuthStep::TokenRefresh,
            Pending::SymbolsList => AuthStep::SymbolsList,
            Pending::Job(job) => {
                self.queue.finish(&job);
                match job {
                    Job::Subscribe { name, id } => self.retry_subscribe(name, id, REQUEST_TIMEOUT_CODE, &description),
                    Job::Details(ids) => self.queue.retry_first(Job::Details(ids)),
                    Job::Unsubscribe(_) => {}
                }
                return;
            }
        };
        self.inputs.push_back(Input::AuthRejected { step, code: REQUEST_TIMEOUT_CODE.into(), description });
    }

    // ---- shutdown ----

    async fn shutdown(&mut self, reason: &str) {
        tracing::info!(reason, "session shutting down");

        // Unsubscribe upstream first. The writer sends queued frames before close_notify.
        let ids = self.subscriptions.upstream_ids();
        if !ids.is_empty() {
            let message = Message::UnsubscribeSpotsReq(pb::ProtoOaUnsubscribeSpotsReq {
                ctid_trader_account_id: self.config.account_id,
                symbol_id: ids,
                ..Default::default()
            });
            let now = self.clock.now();
            self.send_tracked(Pending::Job(Job::Unsubscribe(Vec::new())), message, now);
        }

        self.inputs.push_back(Input::Stop { reason: reason.to_string() });
        self.drain_inputs();
        // The machine closes the transport on Stop, which makes this a no-op. It guarantees the
        // socket is closed before the task ends.
        self.close_transport(reason);
        if let Some(closing) = self.closing.take() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT * 2, closing).await;
        }
        self.stopped = true;
    }
}

/// Converts an error response (`ProtoErrorRes` or `ProtoOAErrorRes`) into a typed error.
fn api_error(message: &Message) -> Option<ApiError> {
    ApiError::from_message(message)
}

enum LinkEvent {
    Connected(Result<Result<Box<Stream>, TransportError>, tokio::task::JoinError>),
    /// The next frame of the open connection, or `None` at end of stream.
    Frame(Option<Result<pb::ProtoMessage, FrameError>>),
}

/// Resolves when a connect finishes or the open connection yields a frame. Never resolves while
/// idle.
async fn next_link_event(link: &mut Link) -> LinkEvent {
    match link {
        Link::Connecting(task) => LinkEvent::Connected(task.await.map(|result| result.map(Box::new))),
        Link::Open(connection) => LinkEvent::Frame(connection.next_frame().await),
        Link::Idle => std::future::pending().await,
    }
}
