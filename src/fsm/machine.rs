//! The connection machine: a statig hierarchical state machine behind the [`Machine`] facade.
//!
//! State tree (superstates in lowercase):
//!
//! ```text
//! Disconnected
//! Backoff
//! online                      Stop, ForceReconnect, transport failures, connect deadline
//! ├── Connecting
//! └── connected               heartbeat, liveness, token invalidation
//!     ├── Authenticating
//!     └── live                restores subscriptions on entry
//!         ├── Streaming
//!         └── Stale
//! ```
//!
//! Handlers and entry/exit actions never perform I/O: they append [`Action`]s to the sink in
//! the statig context, and the driver performs them. Timers follow one rule: each is armed by
//! an entry action or by a handler that stays in its state, and the exit action of that state
//! (or superstate) cancels it, so no timer outlives the states it belongs to:
//!
//! | timer           | armed in                     | cancelled on leaving |
//! |-----------------|------------------------------|----------------------|
//! | ConnectDeadline | Connecting, Authenticating   | Authenticating, online |
//! | Heartbeat       | connected                    | connected            |
//! | Liveness        | connected                    | connected            |
//! | Stale           | Streaming, or Stale          | that state           |
//! | Backoff         | Backoff                      | Backoff              |

use statig::prelude::*;

use super::backoff::Jitter;
use super::timers::TimerTable;
use super::{Action, AuthStep, Config, Input, LogLevel, Millis, Request, StateName, StatusChange, Timer};

/// cTrader error codes that mean "the access token expired": refresh it, then authenticate the
/// account again (`OA_AUTH_TOKEN_EXPIRED` on account auth, `CH_ACCESS_TOKEN_INVALID` on any
/// request that carries the token).
const TOKEN_EXPIRED_CODES: [&str; 2] = ["OA_AUTH_TOKEN_EXPIRED", "CH_ACCESS_TOKEN_INVALID"];

/// The connection state machine. Pure: it reads no clock, opens no socket and draws no random
/// numbers except from the seeded jitter generator. It never receives secrets either, because
/// the driver keeps the tokens and the machine only names the requests to send.
///
/// Feed every input with [`Machine::handle`], then perform the appended actions in order.
#[derive(Clone, Debug)]
pub struct Machine {
    inner: InitializedStateMachine<Connection>,
}

impl Machine {
    /// Creates a machine in Disconnected; nothing happens until [`Input::Start`].
    pub fn new(config: Config) -> Self {
        let connection = Connection {
            jitter: Jitter::new(config.jitter_seed),
            config,
            state: StateName::Disconnected,
            attempt: 0,
            timers: TimerTable::default(),
            subscriptions: 0,
            last_frame: 0,
            tick_baseline: 0,
            stale_reconnect_spent: false,
            token_refresh_spent: false,
            last_failure: None,
        };

        // Disconnected has no entry action, so initialising appends nothing.
        let mut scratch = Vec::new();
        let mut context = Context { now: 0, input: &Input::Start, out: &mut scratch, reason: None };
        let inner = connection.uninitialized_state_machine().init_with_context(&mut context);
        Self { inner }
    }

    /// Feeds one input at time `now` and appends the resulting actions to `out`. A reused `out`
    /// means no allocation per call, except for transitions and log lines.
    ///
    /// A `TimerFired` for a timer that is not armed (the driver raced a cancel) is ignored with
    /// a warning. One that fires before its deadline is re-scheduled for that deadline.
    pub fn handle(&mut self, now: Millis, input: Input, out: &mut Vec<Action>) {
        if let Input::TimerFired(timer) = input {
            match self.inner.inner().timers.deadline(timer) {
                None => {
                    out.push(Action::Log {
                        level: LogLevel::Warn,
                        message: format!("ignored {timer} timer: it is not armed"),
                    });
                    return;
                }
                Some(at) if now < at => {
                    out.push(Action::ScheduleTimer { timer, at });
                    return;
                }
                Some(_) => {}
            }
        }

        let mut context = Context { now, input: &input, out, reason: None };
        self.inner.handle_with_context(&input, &mut context);
    }

    pub fn state(&self) -> StateName {
        self.inner.state().name()
    }

    /// Consecutive failed connect attempts; 0 once live and before the first failure.
    pub fn attempt(&self) -> u32 {
        self.inner.inner().attempt
    }

    pub fn config(&self) -> &Config {
        &self.inner.inner().config
    }

    /// Returns when `timer` is armed to fire, if it is.
    pub fn timer_deadline(&self, timer: Timer) -> Option<Millis> {
        self.inner.inner().timers.deadline(timer)
    }

    /// Size of the desired subscription set, as last reported.
    pub fn subscriptions(&self) -> usize {
        self.inner.inner().subscriptions
    }

    /// Returns everything that decides how the machine reacts to inputs, except times and
    /// counts: two machines with the same shape take the same transitions.
    pub(crate) fn shape(&self) -> Shape {
        let connection = self.inner.inner();
        let awaiting = match self.inner.state() {
            State::Authenticating { awaiting } => Some(*awaiting),
            _ => None,
        };
        Shape {
            state: self.state(),
            awaiting,
            armed: Timer::ALL.map(|timer| connection.timers.is_armed(timer)),
            subscribed: connection.subscriptions > 0,
            stale_reconnect_spent: connection.stale_reconnect_spent,
            token_refresh_spent: connection.token_refresh_spent,
        }
    }
}

/// See [`Machine::shape`]; the diagram explorer visits each shape once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Shape {
    state: StateName,
    awaiting: Option<Awaiting>,
    armed: [bool; 5],
    subscribed: bool,
    stale_reconnect_spent: bool,
    token_refresh_spent: bool,
}

/// The response Authenticating awaits, which marks its place in the auth sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Awaiting {
    Application,
    Account,
    TokenRefresh,
    Symbols,
}

impl Awaiting {
    fn request(self) -> Request {
        match self {
            Awaiting::Application => Request::ApplicationAuth,
            Awaiting::Account => Request::AccountAuth,
            Awaiting::TokenRefresh => Request::RefreshToken,
            Awaiting::Symbols => Request::SymbolsList,
        }
    }
}

/// The statig context: the current time, the input being handled and the action sink.
pub(crate) struct Context<'a> {
    now: Millis,
    input: &'a Input,
    out: &'a mut Vec<Action>,
    /// The reason for entering the target state. The handler that returns the transition sets
    /// it, and `after_transition` publishes it.
    reason: Option<String>,
}

/// Data shared by all states (statig's shared storage).
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    config: Config,
    /// The current leaf state, kept for log lines written by superstates.
    state: StateName,
    attempt: u32,
    timers: TimerTable,
    jitter: Jitter,
    subscriptions: usize,
    /// Last inbound frame, or the moment the transport came up.
    last_frame: Millis,
    /// Last tick, or the start of the current wait for one (going live, first subscription).
    tick_baseline: Millis,
    /// The one stale-caused reconnect of this tick drought has happened; reset by a tick.
    stale_reconnect_spent: bool,
    /// The token refresh of this connection has been used.
    token_refresh_spent: bool,
    /// The reason of the last failure, shown while retrying.
    last_failure: Option<String>,
}

#[state_machine(
    initial = "State::disconnected()",
    visibility = "pub(crate)",
    state(derive(Clone, Debug, PartialEq)),
    superstate(derive(Debug)),
    before_dispatch = "Self::before_dispatch",
    after_transition = "Self::after_transition"
)]
impl Connection {
    /// Not connected and not trying: the initial state, and the state after a stop.
    ///
    /// - [`Input::Start`] => [`State::Connecting`]
    /// - [`Input::SubscriptionsChanged`] => stays, records the count
    /// - anything else => stays (inputs with a reason are logged)
    #[state]
    fn disconnected(&mut self, context: &mut Context<'_>, event: &Input) -> Outcome<State> {
        match event {
            Input::Start => {
                self.attempt = 0;
                self.stale_reconnect_spent = false;
                self.last_failure = None;
                Transition(State::connecting())
            }
            Input::SubscriptionsChanged { count } => {
                self.subscriptions = *count;
                Handled
            }
            _ => self.ignore(context),
        }
    }

    /// Waiting until `retry_at` before the next connect attempt.
    ///
    /// - [`Timer::Backoff`] fired => [`State::Connecting`]
    /// - [`Input::ForceReconnect`] => [`State::Connecting`] at once
    /// - [`Input::Stop`] => [`State::Disconnected`]
    /// - [`Input::SubscriptionsChanged`] => stays, records the count
    /// - anything else => stays
    #[state(entry_action = "enter_backoff", exit_action = "exit_backoff")]
    fn backoff(&mut self, retry_at: &Millis, context: &mut Context<'_>, event: &Input) -> Outcome<State> {
        match event {
            // `handle` re-schedules a timer that fires early, so this guard always holds here.
            Input::TimerFired(Timer::Backoff) if context.now >= *retry_at => {
                context.reason = self.last_failure.clone();
                Transition(State::connecting())
            }
            Input::ForceReconnect { reason } => {
                log(context, LogLevel::Info, format!("reconnecting on request: {reason}"));
                context.reason = Some(format!("forced reconnect: {reason}"));
                Transition(State::connecting())
            }
            Input::Stop { reason } => {
                log(context, LogLevel::Info, format!("stopping: {reason}"));
                context.reason = Some(format!("stopped: {reason}"));
                Transition(State::disconnected())
            }
            Input::SubscriptionsChanged { count } => {
                self.subscriptions = *count;
                Handled
            }
            _ => self.ignore(context),
        }
    }

    #[action]
    fn enter_backoff(&mut self, retry_at: &mut Millis, context: &mut Context<'_>) {
        self.timers.schedule(Timer::Backoff, *retry_at, context.out);
    }

    #[action]
    fn exit_backoff(&mut self, context: &mut Context<'_>) {
        self.timers.cancel(Timer::Backoff, context.out);
    }

    /// Superstate of every state that has, or is getting, a transport.
    ///
    /// - [`Input::Stop`] => closes the transport, [`State::Disconnected`]
    /// - [`Input::ForceReconnect`] => closes the transport, [`State::Connecting`]
    /// - [`Input::TransportFailed`], [`Input::SocketClosed`] => [`State::Backoff`]
    /// - [`Input::SocketError`], [`Input::ServerDisconnect`] => closes, [`State::Backoff`]
    /// - [`Timer::ConnectDeadline`] fired => closes, [`State::Backoff`]
    /// - [`Input::SubscriptionsChanged`] => stays, records the count
    /// - anything else => stays
    #[superstate(exit_action = "exit_online")]
    fn online(&mut self, context: &mut Context<'_>, event: &Input) -> Outcome<State> {
        match event {
            Input::Stop { reason } => {
                log(context, LogLevel::Info, format!("stopping: {reason}"));
                context.out.push(Action::CloseTransport { reason: format!("stop: {reason}") });
                context.reason = Some(format!("stopped: {reason}"));
                Transition(State::disconnected())
            }
            Input::ForceReconnect { reason } => {
                log(context, LogLevel::Info, format!("reconnecting on request: {reason}"));
                context.out.push(Action::CloseTransport { reason: format!("forced reconnect: {reason}") });
                context.reason = Some(format!("forced reconnect: {reason}"));
                Transition(State::connecting())
            }

            // The transport is already gone, so there is nothing to close.
            Input::TransportFailed { error } => self.fail(context, false, LogLevel::Warn, format!("transport failed: {error}")),
            Input::SocketClosed { reason } => self.fail(context, false, LogLevel::Warn, format!("socket closed: {reason}")),

            Input::SocketError { error } => self.fail(context, true, LogLevel::Warn, format!("socket error: {error}")),
            Input::ServerDisconnect { reason } => {
                self.fail(context, true, LogLevel::Warn, format!("server disconnect: {reason}"))
            }
            Input::TimerFired(Timer::ConnectDeadline) => {
                let message = format!("connect timed out after {} ms", self.config.connect_timeout_ms);
                self.fail(context, true, LogLevel::Warn, message)
            }
            Input::SubscriptionsChanged { count } => {
                self.subscriptions = *count;
                Handled
            }
            _ => self.ignore(context),
        }
    }

    #[action]
    fn exit_online(&mut self, context: &mut Context<'_>) {
        self.timers.cancel(Timer::ConnectDeadline, context.out);
    }

    /// TCP connect and TLS handshake in progress; the connect deadline runs from entry.
    ///
    /// - [`Input::TransportUp`] => [`State::Authenticating`], sends application auth
    /// - anything else => `online`
    #[state(superstate = "online", entry_action = "enter_connecting")]
    fn connecting(event: &Input) -> Outcome<State> {
        match event {
            Input::TransportUp => Transition(State::authenticating(Awaiting::Application)),
            _ => Super,
        }
    }

    #[action]
    fn enter_connecting(&mut self, context: &mut Context<'_>) {
        context.out.push(Action::OpenTransport);
        let deadline = context.now.saturating_add(self.config.connect_timeout_ms);
        self.timers.schedule(Timer::ConnectDeadline, deadline, context.out);
    }

    /// Superstate of the states with a live transport: keeps heartbeats going and watches for
    /// inbound silence.
    ///
    /// - [`Timer::Heartbeat`] fired => stays, sends a heartbeat, schedules the next
    /// - [`Timer::Liveness`] fired, a frame arrived since => stays, re-schedules
    /// - [`Timer::Liveness`] fired, no frame for `liveness_timeout_ms` => closes, [`State::Backoff`]
    /// - [`Input::TokenInvalidated`], refresh possible => [`State::Authenticating`], refreshes
    /// - [`Input::TokenInvalidated`], no refresh possible => closes, [`State::Backoff`]
    /// - [`Input::Tick`], [`Input::Frame`] => stays (the frame time is already noted)
    /// - anything else => `online`
    #[superstate(superstate = "online", entry_action = "enter_connected", exit_action = "exit_connected")]
    fn connected(&mut self, context: &mut Context<'_>, event: &Input) -> Outcome<State> {
        match event {
            Input::Tick | Input::Frame => Handled,
            Input::TimerFired(Timer::Heartbeat) => {
                context.out.push(Action::Send(Request::Heartbeat));
                let next = context.now.saturating_add(self.config.heartbeat_interval_ms.max(1));
                self.timers.schedule(Timer::Heartbeat, next, context.out);
                Handled
            }
            Input::TimerFired(Timer::Liveness) => {
                let deadline = self.last_frame.saturating_add(self.config.liveness_timeout_ms);
                if context.now < deadline {
                    self.timers.schedule(Timer::Liveness, deadline, context.out);
                    return Handled;
                }
                let message = format!("no inbound frame for {} ms", self.config.liveness_timeout_ms);
                self.fail(context, true, LogLevel::Warn, message)
            }
            Input::TokenInvalidated { reason } => {
                if self.can_refresh_token() {
                    self.token_refresh_spent = true;
                    log(context, LogLevel::Warn, format!("token invalidated, refreshing: {reason}"));
                    context.reason = Some(format!("token invalidated: {reason}"));
                    return Transition(State::authenticating(Awaiting::TokenRefresh));
                }
                self.fail(context, true, LogLevel::Error, format!("token invalidated: {reason}"))
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_connected(&mut self, context: &mut Context<'_>) {
        self.last_frame = context.now;
        self.token_refresh_spent = false;
        let heartbeat_at = context.now.saturating_add(self.config.heartbeat_interval_ms.max(1));
        self.timers.schedule(Timer::Heartbeat, heartbeat_at, context.out);
        let liveness_at = context.now.saturating_add(self.config.liveness_timeout_ms);
        self.timers.schedule(Timer::Liveness, liveness_at, context.out);
    }

    #[action]
    fn exit_connected(&mut self, context: &mut Context<'_>) {
        self.timers.cancel(Timer::Heartbeat, context.out);
        self.timers.cancel(Timer::Liveness, context.out);
    }

    /// Running the auth sequence: application auth, account auth (with one token refresh if the
    /// token expired), then the symbol list. Entry sends the request for the response it awaits,
    /// and arms the connect deadline unless it already runs (re-auth after a token invalidation).
    ///
    /// - [`Input::AppAuthOk`] awaited => stays, sends account auth
    /// - [`Input::AccountAuthOk`] awaited => stays, sends the symbols list request
    /// - [`Input::TokenRefreshed`] awaited => stays, sends account auth again
    /// - [`Input::SymbolsLoaded`] awaited => [`State::Streaming`]
    /// - [`Input::AuthRejected`] on account auth with an expired-token code, refresh possible
    ///   => stays, sends the token refresh
    /// - [`Input::AuthRejected`] otherwise => closes, [`State::Backoff`] with code and description
    /// - [`Input::TokenInvalidated`], refresh possible => stays, sends the token refresh
    /// - an auth response not awaited => stays, logged
    /// - anything else => `connected`
    #[state(superstate = "connected", entry_action = "enter_authenticating", exit_action = "exit_authenticating")]
    fn authenticating(&mut self, awaiting: &mut Awaiting, context: &mut Context<'_>, event: &Input) -> Outcome<State> {
        match (event, *awaiting) {
            (Input::AppAuthOk, Awaiting::Application)
            | (Input::TokenRefreshed, Awaiting::TokenRefresh) => {
                self.advance(awaiting, Awaiting::Account, context);
                Handled
            }
            (Input::AccountAuthOk, Awaiting::Account) => {
                self.advance(awaiting, Awaiting::Symbols, context);
                Handled
            }
            (Input::SymbolsLoaded { .. }, Awaiting::Symbols) => Transition(State::streaming()),
            (Input::AuthRejected { step: AuthStep::Account, code, description }, Awaiting::Account)
                if TOKEN_EXPIRED_CODES.contains(&code.as_str()) && self.can_refresh_token() =>
            {
                self.token_refresh_spent = true;
                log(context, LogLevel::Warn, format!("account auth rejected, refreshing the token: {code}: {description}"));
                self.advance(awaiting, Awaiting::TokenRefresh, context);
                Handled
            }
            (Input::AuthRejected { step, code, description }, _) => {
                self.fail(context, true, LogLevel::Error, format!("{step} rejected: {code}: {description}"))
            }
            (Input::TokenInvalidated { reason }, _) if self.can_refresh_token() => {
                self.token_refresh_spent = true;
                log(context, LogLevel::Warn, format!("token invalidated, refreshing: {reason}"));
                self.advance(awaiting, Awaiting::TokenRefresh, context);
                Handled
            }
            (Input::AppAuthOk | Input::AccountAuthOk | Input::TokenRefreshed | Input::SymbolsLoaded { .. }, _) => {
                log(context, LogLevel::Warn, format!("ignored {event} while awaiting the {:?} response", awaiting.request()));
                Handled
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_authenticating(&mut self, awaiting: &mut Awaiting, context: &mut Context<'_>) {
        if !self.timers.is_armed(Timer::ConnectDeadline) {
            let deadline = context.now.saturating_add(self.config.connect_timeout_ms);
            self.timers.schedule(Timer::ConnectDeadline, deadline, context.out);
        }
        context.out.push(Action::Send(awaiting.request()));
    }

    #[action]
    fn exit_authenticating(&mut self, context: &mut Context<'_>) {
        self.timers.cancel(Timer::ConnectDeadline, context.out);
    }

    /// Superstate of the ready states. Entering it ends a connect: the attempt count resets,
    /// the wait for a tick starts and the desired subscriptions are restored upstream.
    ///
    /// - anything => `connected`
    #[superstate(superstate = "connected", entry_action = "enter_live")]
    fn live() -> Outcome<State> {
        Super
    }

    #[action]
    fn enter_live(&mut self, context: &mut Context<'_>) {
        self.attempt = 0;
        self.last_failure = None;
        self.tick_baseline = context.now;
        context.out.push(Action::RestoreSubscriptions);
    }

    /// Ready: ticks flowing, or no subscriptions. With at least one subscription the Stale
    /// timer runs for the last tick plus `stale_after_ms`.
    ///
    /// - [`Input::Tick`] => stays (no action: the timer catches up when it fires)
    /// - [`Timer::Stale`] fired, a tick arrived since => stays, re-schedules
    /// - [`Timer::Stale`] fired, no tick for `stale_after_ms` => [`State::Stale`]
    /// - [`Input::SubscriptionsChanged`] => stays, arms or cancels the Stale timer
    /// - anything else => `live`
    #[state(superstate = "live", entry_action = "enter_streaming", exit_action = "exit_streaming")]
    fn streaming(&mut self, context: &mut Context<'_>, event: &Input) -> Outcome<State> {
        match event {
            Input::Tick => {
                self.note_tick(context.now);
                Handled
            }
            Input::SubscriptionsChanged { count } => {
                let before = self.subscriptions;
                self.subscriptions = *count;
                if before == 0 && *count > 0 {
                    // The wait for a tick starts with the first subscription, not earlier.
                    self.tick_baseline = context.now;
                    let at = context.now.saturating_add(self.config.stale_after_ms);
                    self.timers.schedule(Timer::Stale, at, context.out);
                } else if *count == 0 {
                    self.timers.cancel(Timer::Stale, context.out);
                }
                Handled
            }
            Input::TimerFired(Timer::Stale) => {
                let deadline = self.tick_baseline.saturating_add(self.config.stale_after_ms);
                if context.now < deadline {
                    self.timers.schedule(Timer::Stale, deadline, context.out);
                    return Handled;
                }
                let message = format!("no tick for {} ms", self.config.stale_after_ms);
                log(context, LogLevel::Warn, message.clone());
                context.reason = Some(message);
                Transition(State::stale())
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_streaming(&mut self, context: &mut Context<'_>) {
        if self.subscriptions > 0 {
            let at = self.tick_baseline.saturating_add(self.config.stale_after_ms);
            self.timers.schedule(Timer::Stale, at, context.out);
        }
    }

    #[action]
    fn exit_streaming(&mut self, context: &mut Context<'_>) {
        self.timers.cancel(Timer::Stale, context.out);
    }

    /// Connected and subscribed, but no tick for `stale_after_ms`. A closed market looks like
    /// this too, so the machine reconnects only once per tick drought: the Stale timer runs for
    /// `stale_reconnect_after_ms` unless that reconnect has already happened.
    ///
    /// - [`Input::Tick`] => [`State::Streaming`], the drought is over
    /// - [`Input::SubscriptionsChanged`] to 0 => [`State::Streaming`], nothing to wait for
    /// - [`Timer::Stale`] fired => closes, [`State::Connecting`] (the one stale-caused reconnect)
    /// - anything else => `live`
    #[state(superstate = "live", entry_action = "enter_stale", exit_action = "exit_stale")]
    fn stale(&mut self, context: &mut Context<'_>, event: &Input) -> Outcome<State> {
        match event {
            Input::Tick => {
                self.note_tick(context.now);
                Transition(State::streaming())
            }
            Input::SubscriptionsChanged { count } => {
                self.subscriptions = *count;
                if *count == 0 {
                    context.reason = Some("no subscriptions left".to_string());
                    return Transition(State::streaming());
                }
                Handled
            }
            Input::TimerFired(Timer::Stale) => {
                self.stale_reconnect_spent = true;
                let message = format!(
                    "stale for {} ms while frames still arrive, reconnecting once until the next tick",
                    self.config.stale_reconnect_after_ms
                );
                log(context, LogLevel::Warn, message.clone());
                context.out.push(Action::CloseTransport { reason: message.clone() });
                context.reason = Some(message);
                Transition(State::connecting())
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_stale(&mut self, context: &mut Context<'_>) {
        if !self.stale_reconnect_spent {
            let at = context.now.saturating_add(self.config.stale_reconnect_after_ms);
            self.timers.schedule(Timer::Stale, at, context.out);
        }
    }

    #[action]
    fn exit_stale(&mut self, context: &mut Context<'_>) {
        self.timers.cancel(Timer::Stale, context.out);
    }
}

impl Connection {
    /// Notes the facts every state relies on before statig dispatches an input: the time of an
    /// inbound frame, and that a fired timer is no longer armed. Runs once per input, at the
    /// leaf state.
    fn before_dispatch(
        &mut self,
        target: StateOrSuperstate<'_, State, Superstate>,
        event: &Input,
        context: &mut Context<'_>,
    ) {
        if !matches!(target, StateOrSuperstate::State(_)) {
            return;
        }

        if event.is_inbound_frame() {
            self.last_frame = context.now;
        }

        if let Input::TimerFired(timer) = event {
            self.timers.disarm(*timer);
        }
    }

    /// Publishes every transition, after the exit and entry actions have run.
    fn after_transition(&mut self, source: &State, target: &State, context: &mut Context<'_>) {
        self.state = target.name();
        let retry_at = match target {
            State::Backoff { retry_at } => Some(*retry_at),
            _ => None,
        };
        context.out.push(Action::Broadcast(StatusChange {
            from: source.name(),
            to: self.state,
            cause: context.input.to_string(),
            attempt: self.attempt,
            retry_at,
            reason: context.reason.take(),
        }));
    }

    /// Records a failure and moves to Backoff with the next delay. Pass `close` when the
    /// transport may still be open and must be closed.
    fn fail(&mut self, context: &mut Context<'_>, close: bool, level: LogLevel, reason: String) -> Outcome<State> {
        if close {
            context.out.push(Action::CloseTransport { reason: reason.clone() });
        }
        log(context, level, reason.clone());

        self.attempt = self.attempt.saturating_add(1);
        let delay = self.jitter.delay(&self.config, self.attempt);
        let retry_at = context.now.saturating_add(delay);

        self.last_failure = Some(reason.clone());
        context.reason = Some(reason);
        Transition(State::backoff(retry_at))
    }

    /// Logs an input the current state does not act on. Ticks, frames and subscription counts
    /// are routine and stay silent, so they cost nothing.
    fn ignore(&mut self, context: &mut Context<'_>) -> Outcome<State> {
        match context.input {
            Input::Tick | Input::Frame | Input::SubscriptionsChanged { .. } => {}
            input => log(context, LogLevel::Info, format!("ignored {input} in {}", self.state)),
        }
        Handled
    }

    fn advance(&mut self, awaiting: &mut Awaiting, next: Awaiting, context: &mut Context<'_>) {
        *awaiting = next;
        context.out.push(Action::Send(next.request()));
    }

    fn note_tick(&mut self, now: Millis) {
        self.tick_baseline = now;
        self.stale_reconnect_spent = false;
    }

    fn can_refresh_token(&self) -> bool {
        self.config.has_refresh_token && !self.token_refresh_spent
    }
}

impl State {
    fn name(&self) -> StateName {
        match self {
            State::Disconnected {} => StateName::Disconnected,
            State::Backoff { .. } => StateName::Backoff,
            State::Connecting {} => StateName::Connecting,
            State::Authenticating { .. } => StateName::Authenticating,
            State::Streaming {} => StateName::Streaming,
            State::Stale {} => StateName::Stale,
        }
    }
}

fn log(context: &mut Context<'_>, level: LogLevel, message: String) {
    context.out.push(Action::Log { level, message });
}
