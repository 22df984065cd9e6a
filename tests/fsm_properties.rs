//! Properties of the connection machine over random input sequences.
//!
//! Each scenario is a random configuration plus a few dozen random steps. A step advances the
//! time (firing due timers at their exact deadlines, as the driver does), sends the input a
//! well-behaved server would send next, or sends any input at all with a random payload. A [`Harness`] plays the
//! driver: it performs the actions, keeps its own model of the armed timers, the transport and
//! the deadlines, and checks one invariant after every input.

use std::collections::BTreeMap;

use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use tickgate::fsm::backoff::base_delay;
use tickgate::fsm::{Action, AuthStep, Config, Input, Machine, Millis, Request, StateName, StatusChange, Timer};

/// Random scenarios per property.
const SCENARIOS: u64 = 400;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Invariant {
    SocketFailureBacksOff,
    ReasonsKept,
    BackoffSchedule,
    NoDeadEnd,
    OneTransport,
    ConnectDeadline,
    Staleness,
    Liveness,
    ClosedMarket,
    TimersScoped,
    BroadcastPerTransition,
    QuietTicks,
}

#[derive(Clone, Debug)]
enum Step {
    /// Let this many milliseconds pass, firing every timer that falls due.
    Advance(Millis),
    /// The input a well-behaved server sends next; `variant` picks tick or frame when live.
    Happy { variant: u8 },
    /// Any input, whatever the state.
    Any(Input),
}

#[derive(Clone, Debug)]
struct Scenario {
    config: Config,
    steps: Vec<Step>,
}

fn pick<T: Clone>(g: &mut Gen, items: &[T]) -> T {
    g.choose(items).expect("non-empty choice").clone()
}

fn below(g: &mut Gen, bound: u64) -> u64 {
    u64::arbitrary(g) % bound
}

fn between(g: &mut Gen, low: u64, high: u64) -> u64 {
    low + below(g, high - low + 1)
}

fn reason(g: &mut Gen, prefix: &str) -> String {
    format!("{prefix}-{}", below(g, 10_000))
}

fn arbitrary_input(g: &mut Gen) -> Input {
    match below(g, 18) {
        0 => Input::Start,
        1 => Input::Stop { reason: reason(g, "stop") },
        2 => Input::ForceReconnect { reason: reason(g, "manual") },
        3 => Input::TransportUp,
        4 => Input::TransportFailed { error: reason(g, "refused") },
        5 => Input::SocketClosed { reason: reason(g, "eof") },
        6 => Input::SocketError { error: reason(g, "reset") },
        7 => Input::AppAuthOk,
        8 => Input::AccountAuthOk,
        9 => Input::AuthRejected {
            step: pick(g, &[AuthStep::Application, AuthStep::Account, AuthStep::TokenRefresh, AuthStep::SymbolsList]),
            code: pick(g, &["OA_AUTH_TOKEN_EXPIRED", "CH_ACCESS_TOKEN_INVALID", "CH_CLIENT_AUTH_FAILURE"]).to_string(),
            description: reason(g, "why"),
        },
        10 => Input::TokenRefreshed,
        11 => Input::SymbolsLoaded { count: below(g, 50) as usize },
        12 => Input::Tick,
        13 => Input::Frame,
        14 => Input::SubscriptionsChanged { count: below(g, 3) as usize },
        15 => Input::ServerDisconnect { reason: reason(g, "maintenance") },
        16 => Input::TokenInvalidated { reason: reason(g, "revoked") },
        _ => Input::TimerFired(pick(g, &Timer::ALL)),
    }
}

impl Arbitrary for Step {
    fn arbitrary(g: &mut Gen) -> Self {
        match below(g, 100) {
            0..=29 => {
                let limit = pick(g, &[100, 5_000, 5_000, 120_000]);
                Step::Advance(below(g, limit + 1))
            }
            30..=74 => Step::Happy { variant: u8::arbitrary(g) },
            _ => Step::Any(arbitrary_input(g)),
        }
    }
}

impl Arbitrary for Scenario {
    fn arbitrary(g: &mut Gen) -> Self {
        let backoff_base_ms = between(g, 1, 5_000);
        let config = Config {
            connect_timeout_ms: between(g, 1_000, 20_000),
            stale_after_ms: between(g, 1_000, 40_000),
            liveness_timeout_ms: between(g, 2_000, 60_000),
            heartbeat_interval_ms: between(g, 500, 15_000),
            stale_reconnect_after_ms: between(g, 1_000, 90_000),
            backoff_base_ms,
            backoff_cap_ms: between(g, backoff_base_ms, 100_000),
            jitter: pick(g, &[0.0, 0.1, 0.1, 0.5, 1.0]),
            jitter_seed: u64::arbitrary(g),
            has_refresh_token: bool::arbitrary(g),
        };
        let length = between(g, 20, 80) as usize;
        let steps = (0..length).map(|_| Step::arbitrary(g)).collect();
        Scenario { config, steps }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        let config = self.config.clone();
        Box::new(self.steps.shrink().map(move |steps| Scenario { config: config.clone(), steps }))
    }
}

/// A scenario for the closed-market rule: connect with subscriptions, then hours of frames
/// (heartbeats) with a tick only now and then. Plain random scenarios rarely stay connected
/// through more than one stale-caused reconnect.
#[derive(Clone, Debug)]
struct Drought(Scenario);

impl Arbitrary for Drought {
    fn arbitrary(g: &mut Gen) -> Self {
        let Scenario { config, .. } = Scenario::arbitrary(g);
        let mut steps = vec![Step::Any(Input::SubscriptionsChanged { count: between(g, 1, 3) as usize })];

        // Variant 3 gives Frame in Streaming and in Stale, and the auth responses otherwise.
        let frames_only = Step::Happy { variant: 3 };
        steps.extend(std::iter::repeat_n(frames_only.clone(), 5));
        for _ in 0..between(g, 50, 150) {
            steps.push(Step::Advance(between(g, 1, config.liveness_timeout_ms / 2)));
            if below(g, 100) < 3 {
                steps.push(Step::Any(Input::Tick));
            } else {
                steps.push(frames_only.clone());
            }
        }
        Drought(Scenario { config, steps })
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        Box::new(self.0.shrink().map(Drought))
    }
}

fn is_online(state: StateName) -> bool {
    matches!(state, StateName::Connecting | StateName::Authenticating | StateName::Streaming | StateName::Stale)
}

fn is_connected(state: StateName) -> bool {
    matches!(state, StateName::Authenticating | StateName::Streaming | StateName::Stale)
}

fn is_live(state: StateName) -> bool {
    matches!(state, StateName::Streaming | StateName::Stale)
}

/// Returns the states a timer may stay armed in. The Stale timer is further tied to the one
/// state that scheduled it.
fn timer_scope(timer: Timer) -> &'static [StateName] {
    match timer {
        Timer::ConnectDeadline => &[StateName::Connecting, StateName::Authenticating],
        Timer::Backoff => &[StateName::Backoff],
        Timer::Heartbeat | Timer::Liveness => &[StateName::Authenticating, StateName::Streaming, StateName::Stale],
        Timer::Stale => &[StateName::Streaming, StateName::Stale],
    }
}

/// Text of a failure input that must survive into the logs and the status reason.
fn failure_texts(input: &Input) -> Vec<&str> {
    match input {
        Input::Stop { reason }
        | Input::ForceReconnect { reason }
        | Input::SocketClosed { reason }
        | Input::ServerDisconnect { reason }
        | Input::TokenInvalidated { reason } => vec![reason.as_str()],
        Input::TransportFailed { error } | Input::SocketError { error } => vec![error.as_str()],
        Input::AuthRejected { code, description, .. } => vec![code.as_str(), description.as_str()],
        _ => Vec::new(),
    }
}

/// An armed timer in the harness's model: its deadline and the state that scheduled it.
#[derive(Clone, Copy, Debug)]
struct Armed {
    at: Millis,
    scheduled_in: StateName,
}

/// Plays the driver and checks one invariant after every input.
struct Harness {
    invariant: Invariant,
    config: Config,
    machine: Machine,
    now: Millis,
    out: Vec<Action>,
    armed: BTreeMap<Timer, Armed>,
    transport_open: bool,
    /// The last auth-sequence request sent, so that `Happy` can send its response.
    pending_request: Option<Request>,
    subscriptions: usize,
    /// When the current connect (or re-auth) began.
    handshake_started: Millis,
    /// Last inbound frame while connected, or the moment the transport came up.
    frame_baseline: Millis,
    /// Last tick while live, or the start of the current wait for one.
    tick_baseline: Millis,
    /// Consecutive failures, counted by the harness.
    attempt: u32,
    /// Stale-caused reconnects since the last tick.
    stale_reconnects: u32,
    /// The inputs so far, for failure messages.
    history: Vec<String>,
}

impl Harness {
    fn new(invariant: Invariant, config: Config) -> Self {
        Harness {
            invariant,
            machine: Machine::new(config.clone()),
            config,
            now: 1_000_000,
            out: Vec::new(),
            armed: BTreeMap::new(),
            transport_open: false,
            pending_request: None,
            subscriptions: 0,
            handshake_started: 0,
            frame_baseline: 0,
            tick_baseline: 0,
            attempt: 0,
            stale_reconnects: 0,
            history: Vec::new(),
        }
    }

    fn run(&mut self, steps: &[Step]) -> Result<(), String> {
        for step in steps {
            match step {
                Step::Advance(ms) => self.advance(*ms)?,
                Step::Happy { variant } => {
                    let input = self.happy_input(*variant);
                    self.feed(input, None)?;
                }
                Step::Any(input) => {
                    // A fire the driver would have delivered already counts as a real expiry.
                    let mut fired = None;
                    if let Input::TimerFired(timer) = input {
                        if self.armed.get(timer).is_some_and(|armed| armed.at <= self.now) {
                            self.armed.remove(timer);
                            fired = Some(*timer);
                        }
                    }
                    self.feed(input.clone(), fired)?;
                }
            }
        }
        Ok(())
    }

    fn happy_input(&self, variant: u8) -> Input {
        match self.machine.state() {
            StateName::Disconnected => Input::Start,
            StateName::Connecting => Input::TransportUp,
            StateName::Authenticating => match self.pending_request {
                Some(Request::ApplicationAuth) | None => Input::AppAuthOk,
                Some(Request::AccountAuth) => Input::AccountAuthOk,
                Some(Request::RefreshToken) => Input::TokenRefreshed,
                Some(Request::SymbolsList) | Some(Request::Heartbeat) => Input::SymbolsLoaded { count: 12 },
            },
            StateName::Streaming if variant % 3 != 0 => Input::Tick,
            StateName::Stale if variant % 2 == 0 => Input::Tick,
            StateName::Streaming | StateName::Stale | StateName::Backoff => Input::Frame,
        }
    }

    /// Moves the clock forward, firing due timers in deadline order at their deadlines.
    fn advance(&mut self, ms: Millis) -> Result<(), String> {
        let target = self.now + ms;
        loop {
            let due = self
                .armed
                .iter()
                .filter(|(_, armed)| armed.at <= target)
                .min_by_key(|(timer, armed)| (armed.at, **timer))
                .map(|(timer, armed)| (*timer, armed.at));
            let Some((timer, at)) = due else { break };
            self.now = self.now.max(at);
            self.armed.remove(&timer);
            self.feed(Input::TimerFired(timer), Some(timer))?;
        }
        self.now = target;
        Ok(())
    }

    fn check(&self, invariant: Invariant, condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
        if self.invariant != invariant || condition {
            return Ok(());
        }
        Err(format!(
            "{invariant:?} violated at t={} in {}: {}\ninputs so far:\n  {}\nactions of the last input: {:#?}",
            self.now,
            self.machine.state(),
            message(),
            self.history.join("\n  "),
            self.out
        ))
    }

    /// Feeds one input. `fired` names the timer when the input is a real expiry, delivered at
    /// the timer's deadline; a spurious `TimerFired` passes `None`.
    fn feed(&mut self, input: Input, fired: Option<Timer>) -> Result<(), String> {
        let before = self.machine.state();
        self.history.push(format!("t={} {before}: {input:?}", self.now));
        self.out.clear();
        self.machine.handle(self.now, input.clone(), &mut self.out);
        let after = self.machine.state();

        let broadcasts: Vec<StatusChange> = self
            .out
            .iter()
            .filter_map(|action| match action {
                Action::Broadcast(change) => Some(change.clone()),
                _ => None,
            })
            .collect();
        let transition = broadcasts.first().cloned();

        self.check_broadcasts(before, after, &broadcasts)?;
        self.update_model(&input, before, transition.as_ref());
        self.check_transport(&input, after)?;
        self.check_timers(after)?;
        self.check_reasons(&input, transition.as_ref())?;
        self.check_quiet_ticks(&input, transition.as_ref())?;
        self.check_socket_failure(&input, before, after)?;
        self.check_backoff(transition.as_ref())?;
        self.check_deadlines(fired, before, after, transition.as_ref())?;
        self.check_closed_market()?;
        self.check_no_dead_end(after)?;
        Ok(())
    }

    fn check_broadcasts(&self, before: StateName, after: StateName, broadcasts: &[StatusChange]) -> Result<(), String> {
        let invariant = Invariant::BroadcastPerTransition;
        self.check(invariant, broadcasts.len() <= 1, || format!("{} broadcasts for one input", broadcasts.len()))?;
        if before != after {
            self.check(invariant, broadcasts.len() == 1, || format!("{before} → {after} without a broadcast"))?;
        }
        if let Some(change) = broadcasts.first() {
            self.check(invariant, change.from == before && change.to == after, || {
                format!("broadcast {} → {} but the machine went {before} → {after}", change.from, change.to)
            })?;
            self.check(invariant, change.from != change.to || change.to == StateName::Connecting, || {
                format!("a self-transition of {} was broadcast", change.to)
            })?;
            self.check(invariant, change.attempt == self.machine.attempt(), || {
                format!("broadcast attempt {} but the machine reports {}", change.attempt, self.machine.attempt())
            })?;
        }
        Ok(())
    }

    fn check_transport(&mut self, input: &Input, after: StateName) -> Result<(), String> {
        if matches!(input, Input::TransportFailed { .. } | Input::SocketClosed { .. } | Input::SocketError { .. }) {
            self.transport_open = false;
        }
        for action in self.out.clone() {
            match action {
                Action::OpenTransport => {
                    self.check(Invariant::OneTransport, !self.transport_open, || {
                        "OpenTransport while a transport is open".to_string()
                    })?;
                    self.transport_open = true;
                }
                Action::CloseTransport { .. } => self.transport_open = false,
                _ => {}
            }
        }
        self.check(Invariant::OneTransport, self.transport_open == is_online(after), || {
            format!("transport open is {} in {after}", self.transport_open)
        })
    }

    fn check_timers(&mut self, after: StateName) -> Result<(), String> {
        let invariant = Invariant::TimersScoped;
        for action in self.out.clone() {
            match action {
                Action::ScheduleTimer { timer, at } => {
                    self.check(invariant, at >= self.now, || format!("{timer} scheduled in the past, at {at}"))?;
                    self.armed.insert(timer, Armed { at, scheduled_in: after });
                }
                Action::CancelTimer(timer) => {
                    self.check(invariant, self.armed.contains_key(&timer), || format!("{timer} cancelled but not armed"))?;
                    self.armed.remove(&timer);
                }
                _ => {}
            }
        }

        for (timer, armed) in &self.armed {
            self.check(invariant, timer_scope(*timer).contains(&after), || format!("{timer} still armed in {after}"))?;
            if *timer == Timer::Stale {
                self.check(invariant, armed.scheduled_in == after, || {
                    format!("Stale timer scheduled in {} still armed in {after}", armed.scheduled_in)
                })?;
            }
        }
        for timer in Timer::ALL {
            let model = self.armed.get(&timer).map(|armed| armed.at);
            self.check(invariant, model == self.machine.timer_deadline(timer), || {
                format!("{timer}: driver holds {model:?}, machine holds {:?}", self.machine.timer_deadline(timer))
            })?;
        }

        // Every waiting state has a timer that ends the wait.
        let needed: &[Timer] = match after {
            StateName::Disconnected => &[],
            StateName::Backoff => &[Timer::Backoff],
            StateName::Connecting => &[Timer::ConnectDeadline],
            StateName::Authenticating => &[Timer::ConnectDeadline, Timer::Heartbeat, Timer::Liveness],
            StateName::Streaming | StateName::Stale => &[Timer::Heartbeat, Timer::Liveness],
        };
        for timer in needed {
            self.check(invariant, self.armed.contains_key(timer), || format!("{timer} not armed in {after}"))?;
        }
        if after == StateName::Streaming && self.subscriptions > 0 {
            self.check(invariant, self.armed.contains_key(&Timer::Stale), || {
                "Stale timer not armed in Streaming with subscriptions".to_string()
            })?;
        }
        Ok(())
    }

    fn check_reasons(&self, input: &Input, transition: Option<&StatusChange>) -> Result<(), String> {
        for text in failure_texts(input) {
            let logged = self.out.iter().any(|action| matches!(action, Action::Log { message, .. } if message.contains(text)));
            self.check(Invariant::ReasonsKept, logged, || format!("{text:?} not in any log action"))?;
            if let Some(change) = transition {
                let kept = change.reason.as_deref().is_some_and(|reason| reason.contains(text));
                self.check(Invariant::ReasonsKept, kept, || format!("{text:?} not in status reason {:?}", change.reason))?;
            }
        }
        Ok(())
    }

    fn check_quiet_ticks(&self, input: &Input, transition: Option<&StatusChange>) -> Result<(), String> {
        if matches!(input, Input::Tick | Input::Frame) && transition.is_none() {
            self.check(Invariant::QuietTicks, self.out.is_empty(), || format!("{input:?} produced actions"))?;
        }
        Ok(())
    }

    fn check_socket_failure(&self, input: &Input, before: StateName, after: StateName) -> Result<(), String> {
        if !matches!(input, Input::SocketClosed { .. } | Input::SocketError { .. }) || !is_online(before) {
            return Ok(());
        }
        let invariant = Invariant::SocketFailureBacksOff;
        self.check(invariant, after == StateName::Backoff, || format!("{before} went to {after}, not Backoff"))?;
        let scheduled = self
            .out
            .iter()
            .any(|action| matches!(action, Action::ScheduleTimer { timer: Timer::Backoff, at } if *at > self.now));
        self.check(invariant, scheduled, || "no reconnect scheduled".to_string())
    }

    fn update_model(&mut self, input: &Input, before: StateName, transition: Option<&StatusChange>) {
        for action in &self.out {
            if let Action::Send(request) = action {
                if *request != Request::Heartbeat {
                    self.pending_request = Some(*request);
                }
            }
        }

        if let Input::SubscriptionsChanged { count } = input {
            if before == StateName::Streaming && self.subscriptions == 0 && *count > 0 {
                self.tick_baseline = self.now;
            }
            self.subscriptions = *count;
        }
        if input.is_inbound_frame() && is_connected(before) {
            self.frame_baseline = self.now;
        }
        if *input == Input::Tick && is_live(before) {
            self.tick_baseline = self.now;
            self.stale_reconnects = 0;
        }

        let Some(change) = transition else { return };
        match (change.from, change.to) {
            (StateName::Disconnected, StateName::Connecting) => {
                self.attempt = 0;
                self.stale_reconnects = 0;
                self.handshake_started = self.now;
            }
            (StateName::Stale, StateName::Connecting) => {
                if *input == Input::TimerFired(Timer::Stale) {
                    self.stale_reconnects += 1;
                }
                self.handshake_started = self.now;
            }
            (_, StateName::Connecting) => self.handshake_started = self.now,
            (StateName::Connecting, StateName::Authenticating) => self.frame_baseline = self.now,
            (StateName::Streaming | StateName::Stale, StateName::Authenticating) => self.handshake_started = self.now,
            (StateName::Authenticating, StateName::Streaming) => {
                self.attempt = 0;
                self.tick_baseline = self.now;
            }
            (_, StateName::Backoff) => self.attempt += 1,
            _ => {}
        }
    }

    fn check_backoff(&self, transition: Option<&StatusChange>) -> Result<(), String> {
        let invariant = Invariant::BackoffSchedule;
        self.check(invariant, self.machine.attempt() == self.attempt, || {
            format!("machine attempt {} after {} consecutive failures", self.machine.attempt(), self.attempt)
        })?;
        // A Backoff timer that fires early is re-scheduled for the same instant; only entering
        // Backoff picks a new delay.
        if transition.is_none_or(|change| change.to != StateName::Backoff) {
            return Ok(());
        }
        for action in &self.out {
            let Action::ScheduleTimer { timer: Timer::Backoff, at } = action else { continue };

            // Doubling from the base, capped, computed here independently of the machine.
            let exponent = self.attempt.saturating_sub(1).min(40);
            let expected = self.config.backoff_base_ms.saturating_mul(1 << exponent).min(self.config.backoff_cap_ms);
            let jitter = (expected as f64 * self.config.jitter).floor() as Millis;
            let delay = at - self.now;
            self.check(invariant, expected == base_delay(&self.config, self.attempt), || {
                format!("base_delay gives {} for attempt {}", base_delay(&self.config, self.attempt), self.attempt)
            })?;
            self.check(invariant, delay >= expected && delay <= expected + jitter, || {
                format!("attempt {}: delay {delay} outside {expected}..={}", self.attempt, expected + jitter)
            })?;
        }
        Ok(())
    }

    fn check_deadlines(
        &self,
        fired: Option<Timer>,
        before: StateName,
        after: StateName,
        transition: Option<&StatusChange>,
    ) -> Result<(), String> {
        // Another timer may fire at the very instant of a deadline, so the state may still be
        // the old one at that instant. The armed timer must then fire no later than it.
        let armed_at = |timer| self.armed.get(&timer).map(|armed: &Armed| armed.at);

        let connect_deadline = self.handshake_started + self.config.connect_timeout_ms;
        if matches!(after, StateName::Connecting | StateName::Authenticating) {
            self.check(Invariant::ConnectDeadline, self.now <= connect_deadline, || {
                format!("still in {after} after the connect deadline {connect_deadline}")
            })?;
            self.check(Invariant::ConnectDeadline, armed_at(Timer::ConnectDeadline) == Some(connect_deadline), || {
                format!("connect deadline armed for {:?}, expected {connect_deadline}", armed_at(Timer::ConnectDeadline))
            })?;
        }
        if fired == Some(Timer::ConnectDeadline) {
            self.check(Invariant::ConnectDeadline, after == StateName::Backoff && self.now == connect_deadline, || {
                format!("connect deadline fired in {before} → {after}, deadline {connect_deadline}")
            })?;
        }

        let liveness_deadline = self.frame_baseline + self.config.liveness_timeout_ms;
        if is_connected(after) {
            self.check(Invariant::Liveness, self.now <= liveness_deadline, || {
                format!("still connected after the liveness deadline {liveness_deadline}")
            })?;
            let at = armed_at(Timer::Liveness);
            self.check(Invariant::Liveness, at.is_some_and(|at| at <= liveness_deadline), || {
                format!("liveness timer armed for {at:?}, after the deadline {liveness_deadline}")
            })?;
        }
        if fired == Some(Timer::Liveness) {
            let expected = if self.now >= liveness_deadline { StateName::Backoff } else { before };
            self.check(Invariant::Liveness, after == expected, || {
                format!("liveness timer at {}, deadline {liveness_deadline}: {before} → {after}", self.now)
            })?;
        }

        let stale_deadline = self.tick_baseline + self.config.stale_after_ms;
        if after == StateName::Streaming && self.subscriptions > 0 {
            self.check(Invariant::Staleness, self.now <= stale_deadline, || {
                format!("still Streaming after the stale deadline {stale_deadline}")
            })?;
            let at = armed_at(Timer::Stale);
            self.check(Invariant::Staleness, at.is_some_and(|at| at <= stale_deadline), || {
                format!("Stale timer armed for {at:?}, after the deadline {stale_deadline}")
            })?;
        }
        if after == StateName::Stale {
            self.check(Invariant::Staleness, self.subscriptions > 0, || "Stale with no subscriptions".to_string())?;
        }
        if let Some(change) = transition {
            if change.to == StateName::Stale {
                self.check(Invariant::Staleness, change.from == StateName::Streaming && self.now == stale_deadline, || {
                    format!("{} → Stale at {}, stale deadline {stale_deadline}", change.from, self.now)
                })?;
            }
            if change.from == StateName::Stale && change.cause == "tick" {
                self.check(Invariant::Staleness, change.to == StateName::Streaming, || {
                    format!("a tick moved Stale to {}", change.to)
                })?;
            }
        }
        Ok(())
    }

    fn check_closed_market(&self) -> Result<(), String> {
        self.check(Invariant::ClosedMarket, self.stale_reconnects <= 1, || {
            format!("{} stale-caused reconnects without a tick", self.stale_reconnects)
        })
    }

    /// Searches, breadth first, for a way back to Connecting that needs no user command: only
    /// a socket closure and armed timers firing at their deadlines.
    fn check_no_dead_end(&self, after: StateName) -> Result<(), String> {
        if self.invariant != Invariant::NoDeadEnd {
            return Ok(());
        }
        if after == StateName::Disconnected {
            let mut machine = self.machine.clone();
            machine.handle(self.now, Input::Start, &mut Vec::new());
            return self.check(Invariant::NoDeadEnd, machine.state() == StateName::Connecting, || {
                "Start does not lead to Connecting".to_string()
            });
        }

        let mut frontier = vec![(self.machine.clone(), self.now)];
        for _depth in 0..4 {
            let mut next = Vec::new();
            for (machine, now) in &frontier {
                if machine.state() == StateName::Connecting && machine.timer_deadline(Timer::ConnectDeadline).is_some() {
                    return Ok(());
                }
                let mut inputs = vec![(*now, Input::SocketClosed { reason: "probe".to_string() })];
                for timer in Timer::ALL {
                    if let Some(at) = machine.timer_deadline(timer) {
                        inputs.push((at.max(*now), Input::TimerFired(timer)));
                    }
                }
                for (at, input) in inputs {
                    let mut probe = machine.clone();
                    probe.handle(at, input, &mut Vec::new());
                    next.push((probe, at));
                }
            }
            if next.iter().any(|(machine, _)| machine.state() == StateName::Connecting) {
                return Ok(());
            }
            frontier = next;
        }
        self.check(Invariant::NoDeadEnd, false, || format!("no way back to Connecting from {after}"))
    }
}

fn holds(invariant: Invariant, scenario: Scenario) -> TestResult {
    let mut harness = Harness::new(invariant, scenario.config.clone());
    match harness.run(&scenario.steps) {
        Ok(()) => TestResult::passed(),
        Err(message) => TestResult::error(message),
    }
}

fn check_property(property: fn(Scenario) -> TestResult) {
    QuickCheck::new().tests(SCENARIOS).rng(Gen::new(60)).quickcheck(property);
}

/// Declares one test per invariant, each over its own random scenarios.
macro_rules! property_tests {
    ($($name:ident => $invariant:ident,)*) => {
        $(
            #[test]
            fn $name() {
                fn property(scenario: Scenario) -> TestResult {
                    holds(Invariant::$invariant, scenario)
                }
                check_property(property);
            }
        )*
    };
}

property_tests! {
    socket_failure_backs_off => SocketFailureBacksOff,
    failure_reasons_are_kept => ReasonsKept,
    backoff_doubles_to_cap_with_bounded_jitter => BackoffSchedule,
    no_dead_end => NoDeadEnd,
    at_most_one_transport => OneTransport,
    connect_deadline_holds => ConnectDeadline,
    stale_exactly_at_threshold => Staleness,
    liveness_timeout_reconnects => Liveness,
    one_stale_reconnect_per_drought => ClosedMarket,
    timers_never_leak => TimersScoped,
    one_broadcast_per_transition => BroadcastPerTransition,
    ticks_and_frames_are_quiet => QuietTicks,
}

#[test]
fn one_stale_reconnect_per_long_drought() {
    fn property(drought: Drought) -> TestResult {
        holds(Invariant::ClosedMarket, drought.0)
    }
    QuickCheck::new().tests(SCENARIOS).rng(Gen::new(60)).quickcheck(property as fn(Drought) -> TestResult);
}

/// The harness must reach every state, or the properties above prove little.
#[test]
fn scenarios_reach_every_state() {
    let mut seen = std::collections::BTreeSet::new();
    let mut g = Gen::new(60);
    for _ in 0..SCENARIOS {
        let scenario = Scenario::arbitrary(&mut g);
        let mut harness = Harness::new(Invariant::QuietTicks, scenario.config.clone());
        for step in &scenario.steps {
            harness.run(std::slice::from_ref(step)).expect("quiet ticks hold");
            seen.insert(harness.machine.state());
        }
    }
    assert_eq!(seen.len(), StateName::ALL.len(), "states reached: {seen:?}");
}
