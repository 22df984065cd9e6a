//! Example-based tests, one or more per named transition. The random-sequence properties live
//! in tests/fsm_properties.rs.

use super::*;

const T0: Millis = 1_700_000_000_000;

/// Plays the driver on a virtual clock.
struct Driver {
    machine: Machine,
    now: Millis,
}

impl Driver {
    fn new(config: Config) -> Self {
        Driver { machine: Machine::new(config), now: T0 }
    }

    fn feed(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        self.machine.handle(self.now, input, &mut out);
        out
    }

    /// Moves the clock to the timer's deadline and fires it.
    fn fire(&mut self, timer: Timer) -> Vec<Action> {
        let at = self.machine.timer_deadline(timer).unwrap_or_else(|| panic!("{timer} is not armed"));
        self.now = self.now.max(at);
        self.feed(Input::TimerFired(timer))
    }

    fn wait(&mut self, ms: Millis) {
        self.now += ms;
    }

    /// Drives a fresh machine through the auth sequence into Streaming.
    fn streaming(config: Config, subscriptions: usize) -> Self {
        let mut driver = Driver::new(config);
        driver.feed(Input::SubscriptionsChanged { count: subscriptions });
        for input in [Input::Start, Input::TransportUp, Input::AppAuthOk, Input::AccountAuthOk] {
            driver.feed(input);
        }
        driver.feed(Input::SymbolsLoaded { count: 40 });
        assert_eq!(driver.machine.state(), StateName::Streaming);
        driver
    }
}

fn broadcasts(actions: &[Action]) -> Vec<&StatusChange> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Broadcast(change) => Some(change),
            _ => None,
        })
        .collect()
}

fn only_broadcast(actions: &[Action]) -> &StatusChange {
    let changes = broadcasts(actions);
    assert_eq!(changes.len(), 1, "expected exactly one broadcast in {actions:#?}");
    changes[0]
}

fn logged(actions: &[Action], text: &str) -> bool {
    actions.iter().any(|action| matches!(action, Action::Log { message, .. } if message.contains(text)))
}

fn schedules(actions: &[Action], timer: Timer) -> Option<Millis> {
    actions.iter().find_map(|action| match action {
        Action::ScheduleTimer { timer: scheduled, at } if *scheduled == timer => Some(*at),
        _ => None,
    })
}

#[test]
fn start_opens_transport() {
    let mut driver = Driver::new(Config::default());
    let actions = driver.feed(Input::Start);

    assert_eq!(driver.machine.state(), StateName::Connecting);
    assert_eq!(actions[0], Action::OpenTransport);
    assert_eq!(actions[1], Action::ScheduleTimer { timer: Timer::ConnectDeadline, at: T0 + 15_000 });
    let change = only_broadcast(&actions);
    assert_eq!((change.from, change.to, change.cause.as_str()), (StateName::Disconnected, StateName::Connecting, "start"));
}

#[test]
fn transport_up_sends_application_auth() {
    let mut driver = Driver::new(Config::default());
    driver.feed(Input::Start);
    let actions = driver.feed(Input::TransportUp);

    assert_eq!(driver.machine.state(), StateName::Authenticating);
    assert_eq!(schedules(&actions, Timer::Heartbeat), Some(T0 + 10_000));
    assert_eq!(schedules(&actions, Timer::Liveness), Some(T0 + 30_000));
    assert!(actions.contains(&Action::Send(Request::ApplicationAuth)));
    assert_eq!(driver.machine.timer_deadline(Timer::ConnectDeadline), Some(T0 + 15_000), "the deadline keeps running");
}

#[test]
fn auth_sequence_reaches_streaming() {
    let mut driver = Driver::new(Config::default());
    driver.feed(Input::Start);
    driver.feed(Input::TransportUp);

    assert_eq!(driver.feed(Input::AppAuthOk), vec![Action::Send(Request::AccountAuth)]);
    assert_eq!(driver.feed(Input::AccountAuthOk), vec![Action::Send(Request::SymbolsList)]);
    let actions = driver.feed(Input::SymbolsLoaded { count: 3 });

    assert_eq!(driver.machine.state(), StateName::Streaming);
    assert!(actions.contains(&Action::CancelTimer(Timer::ConnectDeadline)));
    assert!(actions.contains(&Action::RestoreSubscriptions));
    let change = only_broadcast(&actions);
    assert_eq!((change.from, change.to, change.attempt), (StateName::Authenticating, StateName::Streaming, 0));
}

#[test]
fn transition_path_of_a_connect_cycle() {
    let mut driver = Driver::streaming(Config::default(), 1);
    let mut actions = driver.feed(Input::SocketClosed { reason: "eof".to_string() });
    actions.extend(driver.fire(Timer::Backoff));
    for input in [Input::TransportUp, Input::AppAuthOk, Input::AccountAuthOk, Input::SymbolsLoaded { count: 1 }] {
        actions.extend(driver.feed(input));
    }

    let path: Vec<StateName> = broadcasts(&actions).iter().map(|change| change.to).collect();
    assert_eq!(path, [StateName::Backoff, StateName::Connecting, StateName::Authenticating, StateName::Streaming]);
}

#[test]
fn transport_failure_backs_off() {
    let mut driver = Driver::new(Config::default());
    driver.feed(Input::Start);
    let actions = driver.feed(Input::TransportFailed { error: "connection refused".to_string() });

    assert_eq!(driver.machine.state(), StateName::Backoff);
    assert_eq!(driver.machine.attempt(), 1);
    assert!(!actions.iter().any(|action| matches!(action, Action::CloseTransport { .. })), "nothing to close");
    assert!(actions.contains(&Action::CancelTimer(Timer::ConnectDeadline)));
    let retry_at = schedules(&actions, Timer::Backoff).expect("reconnect scheduled");
    assert!((T0 + 1_000..=T0 + 1_100).contains(&retry_at), "retry at {retry_at}");

    let change = only_broadcast(&actions);
    assert_eq!(change.retry_at, Some(retry_at));
    assert_eq!(change.reason.as_deref(), Some("transport failed: connection refused"));
    assert!(logged(&actions, "connection refused"));
}

#[test]
fn connect_deadline_closes_and_backs_off() {
    let mut driver = Driver::new(Config::default());
    driver.feed(Input::Start);
    driver.feed(Input::TransportUp);
    driver.feed(Input::AppAuthOk);
    let actions = driver.fire(Timer::ConnectDeadline);

    assert_eq!(driver.now, T0 + 15_000);
    assert_eq!(driver.machine.state(), StateName::Backoff);
    assert_eq!(actions[0], Action::CloseTransport { reason: "connect timed out after 15000 ms".to_string() });
    assert!(actions.contains(&Action::CancelTimer(Timer::Heartbeat)));
    assert!(actions.contains(&Action::CancelTimer(Timer::Liveness)));
}

#[test]
fn backoff_timer_reconnects() {
    let mut driver = Driver::new(Config::default());
    driver.feed(Input::Start);
    driver.feed(Input::TransportFailed { error: "refused".to_string() });
    let actions = driver.fire(Timer::Backoff);

    assert_eq!(driver.machine.state(), StateName::Connecting);
    assert!(actions.contains(&Action::OpenTransport));
    let change = only_broadcast(&actions);
    assert_eq!(change.attempt, 1);
    assert_eq!(change.reason.as_deref(), Some("transport failed: refused"), "the last error stays visible");
}

#[test]
fn backoff_delays_double_to_cap() {
    let mut driver = Driver::new(Config { jitter: 0.0, ..Config::default() });
    driver.feed(Input::Start);

    let mut delays = Vec::new();
    for _ in 0..9 {
        let actions = driver.feed(Input::TransportFailed { error: "refused".to_string() });
        delays.push(schedules(&actions, Timer::Backoff).expect("reconnect scheduled") - driver.now);
        driver.fire(Timer::Backoff);
    }

    assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]);
    assert_eq!(driver.machine.attempt(), 9, "it never gives up");
}

#[test]
fn streaming_resets_attempt() {
    let mut driver = Driver::new(Config::default());
    driver.feed(Input::Start);
    driver.feed(Input::TransportFailed { error: "refused".to_string() });
    driver.fire(Timer::Backoff);
    for input in [Input::TransportUp, Input::AppAuthOk, Input::AccountAuthOk, Input::SymbolsLoaded { count: 1 }] {
        driver.feed(input);
    }

    assert_eq!(driver.machine.attempt(), 0);
}

#[test]
fn expired_token_is_refreshed_once() {
    let mut driver = Driver::new(Config { has_refresh_token: true, ..Config::default() });
    driver.feed(Input::Start);
    driver.feed(Input::TransportUp);
    driver.feed(Input::AppAuthOk);
    let rejected = || Input::AuthRejected {
        step: AuthStep::Account,
        code: "OA_AUTH_TOKEN_EXPIRED".to_string(),
        description: "access token expired".to_string(),
    };

    let actions = driver.feed(rejected());
    assert_eq!(driver.machine.state(), StateName::Authenticating);
    assert!(actions.contains(&Action::Send(Request::RefreshToken)));

    assert_eq!(driver.feed(Input::TokenRefreshed), vec![Action::Send(Request::AccountAuth)]);

    let actions = driver.feed(rejected());
    assert_eq!(driver.machine.state(), StateName::Backoff, "a second rejection backs off");
    let reason = only_broadcast(&actions).reason.clone().unwrap_or_default();
    assert!(reason.contains("OA_AUTH_TOKEN_EXPIRED"), "reason {reason:?}");
    assert!(reason.contains("access token expired"), "reason {reason:?}");
}

#[test]
fn expired_token_without_refresh_token_backs_off() {
    let mut driver = Driver::new(Config::default());
    driver.feed(Input::Start);
    driver.feed(Input::TransportUp);
    driver.feed(Input::AppAuthOk);
    let actions = driver.feed(Input::AuthRejected {
        step: AuthStep::Account,
        code: "CH_ACCESS_TOKEN_INVALID".to_string(),
        description: "invalid token".to_string(),
    });

    assert_eq!(driver.machine.state(), StateName::Backoff);
    assert!(matches!(&actions[0], Action::CloseTransport { reason } if reason.contains("CH_ACCESS_TOKEN_INVALID")));
}

#[test]
fn application_rejection_keeps_code() {
    let mut driver = Driver::new(Config { has_refresh_token: true, ..Config::default() });
    driver.feed(Input::Start);
    driver.feed(Input::TransportUp);
    let actions = driver.feed(Input::AuthRejected {
        step: AuthStep::Application,
        code: "CH_CLIENT_AUTH_FAILURE".to_string(),
        description: "bad client id".to_string(),
    });

    assert_eq!(driver.machine.state(), StateName::Backoff);
    let change = only_broadcast(&actions);
    assert_eq!(change.reason.as_deref(), Some("application auth rejected: CH_CLIENT_AUTH_FAILURE: bad client id"));
    assert!(actions.iter().any(|action| matches!(action, Action::Log { level: LogLevel::Error, .. })));
}

#[test]
fn token_invalidated_while_streaming_reauthenticates() {
    let mut driver = Driver::streaming(Config { has_refresh_token: true, ..Config::default() }, 2);
    driver.wait(5_000);
    let actions = driver.feed(Input::TokenInvalidated { reason: "revoked".to_string() });

    assert_eq!(driver.machine.state(), StateName::Authenticating);
    assert!(actions.contains(&Action::Send(Request::RefreshToken)));
    assert!(actions.contains(&Action::CancelTimer(Timer::Stale)));
    assert_eq!(schedules(&actions, Timer::ConnectDeadline), Some(driver.now + 15_000));

    driver.feed(Input::TokenRefreshed);
    driver.feed(Input::AccountAuthOk);
    let actions = driver.feed(Input::SymbolsLoaded { count: 40 });
    assert_eq!(driver.machine.state(), StateName::Streaming);
    assert!(actions.contains(&Action::RestoreSubscriptions));
}

#[test]
fn token_invalidated_without_refresh_backs_off() {
    let mut driver = Driver::streaming(Config::default(), 1);
    let actions = driver.feed(Input::TokenInvalidated { reason: "revoked".to_string() });

    assert_eq!(driver.machine.state(), StateName::Backoff);
    assert_eq!(only_broadcast(&actions).reason.as_deref(), Some("token invalidated: revoked"));
}

#[test]
fn stale_at_threshold_then_tick_recovers() {
    let mut driver = Driver::streaming(Config::default(), 1);
    assert_eq!(driver.machine.timer_deadline(Timer::Stale), Some(T0 + 30_000));

    // Ticks move the deadline without any action; the early fire catches up once.
    driver.wait(10_000);
    assert!(driver.feed(Input::Tick).is_empty());
    let actions = driver.fire(Timer::Stale);
    assert_eq!(actions, vec![Action::ScheduleTimer { timer: Timer::Stale, at: T0 + 40_000 }]);

    let actions = driver.fire(Timer::Stale);
    assert_eq!(driver.now, T0 + 40_000, "stale exactly at last tick + threshold");
    assert_eq!(driver.machine.state(), StateName::Stale);
    assert_eq!(only_broadcast(&actions).reason.as_deref(), Some("no tick for 30000 ms"));

    driver.wait(1_000);
    let actions = driver.feed(Input::Tick);
    assert_eq!(driver.machine.state(), StateName::Streaming);
    let change = only_broadcast(&actions);
    assert_eq!((change.from, change.to), (StateName::Stale, StateName::Streaming));
    assert!(!actions.contains(&Action::RestoreSubscriptions), "the same connection keeps its subscriptions");
}

#[test]
fn zero_subscriptions_never_go_stale() {
    let mut driver = Driver::streaming(Config::default(), 0);
    assert_eq!(driver.machine.timer_deadline(Timer::Stale), None);

    // The wait for a tick starts with the first subscription.
    driver.wait(100_000);
    driver.feed(Input::Frame);
    let actions = driver.feed(Input::SubscriptionsChanged { count: 1 });
    assert_eq!(actions, vec![Action::ScheduleTimer { timer: Timer::Stale, at: driver.now + 30_000 }]);

    let actions = driver.feed(Input::SubscriptionsChanged { count: 0 });
    assert_eq!(actions, vec![Action::CancelTimer(Timer::Stale)]);
}

#[test]
fn stale_returns_to_streaming_without_subscriptions() {
    let mut driver = Driver::streaming(Config::default(), 1);
    driver.fire(Timer::Stale);
    let actions = driver.feed(Input::SubscriptionsChanged { count: 0 });

    assert_eq!(driver.machine.state(), StateName::Streaming);
    assert!(actions.contains(&Action::CancelTimer(Timer::Stale)));
    assert_eq!(driver.machine.timer_deadline(Timer::Stale), None);
}

#[test]
fn liveness_timeout_closes_and_backs_off() {
    let mut driver = Driver::streaming(Config::default(), 1);
    driver.wait(20_000);
    driver.feed(Input::Frame);

    assert_eq!(driver.fire(Timer::Liveness), vec![Action::ScheduleTimer { timer: Timer::Liveness, at: T0 + 50_000 }]);
    let actions = driver.fire(Timer::Liveness);
    assert_eq!(driver.now, T0 + 50_000);
    assert_eq!(driver.machine.state(), StateName::Backoff);
    assert_eq!(actions[0], Action::CloseTransport { reason: "no inbound frame for 30000 ms".to_string() });
}

#[test]
fn heartbeat_timer_sends_heartbeat() {
    let mut driver = Driver::streaming(Config::default(), 1);
    let actions = driver.fire(Timer::Heartbeat);

    assert_eq!(
        actions,
        vec![Action::Send(Request::Heartbeat), Action::ScheduleTimer { timer: Timer::Heartbeat, at: T0 + 20_000 }]
    );
}

#[test]
fn closed_market_reconnects_once() {
    let mut driver = Driver::streaming(Config::default(), 1);
    driver.fire(Timer::Stale);
    assert_eq!(driver.machine.timer_deadline(Timer::Stale), Some(driver.now + 60_000));

    // Heartbeats keep arriving, ticks do not: one reconnect after 60 s in Stale.
    let keep_alive = |driver: &mut Driver, until: Millis| {
        while driver.now + 10_000 <= until {
            driver.wait(10_000);
            driver.feed(Input::Frame);
            if driver.machine.timer_deadline(Timer::Heartbeat).is_some_and(|at| at <= driver.now) {
                driver.fire(Timer::Heartbeat);
            }
        }
    };
    let until = driver.now + 59_000;
    keep_alive(&mut driver, until);
    let actions = driver.fire(Timer::Stale);
    assert_eq!(driver.machine.state(), StateName::Connecting);
    assert!(matches!(&actions[1], Action::CloseTransport { .. }), "closes before reopening: {actions:#?}");
    assert!(actions.contains(&Action::OpenTransport));

    for input in [Input::TransportUp, Input::AppAuthOk, Input::AccountAuthOk, Input::SymbolsLoaded { count: 1 }] {
        driver.feed(input);
    }
    driver.fire(Timer::Stale);
    assert_eq!(driver.machine.state(), StateName::Stale);
    assert_eq!(driver.machine.timer_deadline(Timer::Stale), None, "no second stale-caused reconnect");

    // Two hours of heartbeats: still Stale, and saying so.
    let mut liveness_fires = 0;
    for _ in 0..720 {
        driver.wait(10_000);
        driver.feed(Input::Frame);
        if driver.machine.timer_deadline(Timer::Liveness).is_some_and(|at| at <= driver.now) {
            driver.fire(Timer::Liveness);
            liveness_fires += 1;
        }
    }
    assert_eq!(driver.machine.state(), StateName::Stale);
    assert!(liveness_fires > 0, "the liveness timer kept firing early and re-scheduling");

    // A tick ends the drought and restores the budget for the next one.
    driver.feed(Input::Tick);
    driver.fire(Timer::Stale);
    assert_eq!(driver.machine.state(), StateName::Stale);
    assert_eq!(driver.machine.timer_deadline(Timer::Stale), Some(driver.now + 60_000));
}

#[test]
fn socket_closed_while_streaming_backs_off() {
    let mut driver = Driver::streaming(Config::default(), 1);
    let actions = driver.feed(Input::SocketClosed { reason: "eof".to_string() });

    assert_eq!(driver.machine.state(), StateName::Backoff);
    for timer in [Timer::Stale, Timer::Heartbeat, Timer::Liveness] {
        assert!(actions.contains(&Action::CancelTimer(timer)), "{timer} not cancelled");
    }
    assert!(schedules(&actions, Timer::Backoff).is_some());
}

#[test]
fn socket_error_and_server_disconnect_close() {
    for input in [
        Input::SocketError { error: "connection reset".to_string() },
        Input::ServerDisconnect { reason: "maintenance".to_string() },
    ] {
        let mut driver = Driver::streaming(Config::default(), 1);
        let actions = driver.feed(input.clone());
        assert_eq!(driver.machine.state(), StateName::Backoff, "{input:?}");
        assert!(matches!(&actions[0], Action::CloseTransport { .. }), "{input:?}: {actions:#?}");
    }
}

#[test]
fn stop_closes_and_disconnects() {
    let mut driver = Driver::streaming(Config::default(), 1);
    let actions = driver.feed(Input::Stop { reason: "shutdown".to_string() });

    assert_eq!(driver.machine.state(), StateName::Disconnected);
    assert!(actions.contains(&Action::CloseTransport { reason: "stop: shutdown".to_string() }));
    assert!(Timer::ALL.iter().all(|timer| driver.machine.timer_deadline(*timer).is_none()));
    assert_eq!(only_broadcast(&actions).reason.as_deref(), Some("stopped: shutdown"));

    // Stopped means stopped: nothing but Start leaves Disconnected.
    driver.feed(Input::ForceReconnect { reason: "user".to_string() });
    assert_eq!(driver.machine.state(), StateName::Disconnected);
    driver.feed(Input::Start);
    assert_eq!(driver.machine.state(), StateName::Connecting);
}

#[test]
fn stop_in_backoff_cancels_retry() {
    let mut driver = Driver::new(Config::default());
    driver.feed(Input::Start);
    driver.feed(Input::TransportFailed { error: "refused".to_string() });
    let actions = driver.feed(Input::Stop { reason: "shutdown".to_string() });

    assert_eq!(driver.machine.state(), StateName::Disconnected);
    assert!(actions.contains(&Action::CancelTimer(Timer::Backoff)));
}

#[test]
fn force_reconnect_closes_then_opens() {
    let mut driver = Driver::streaming(Config::default(), 1);
    let actions = driver.feed(Input::ForceReconnect { reason: "user request".to_string() });

    assert_eq!(driver.machine.state(), StateName::Connecting);
    let close = actions.iter().position(|action| matches!(action, Action::CloseTransport { .. }));
    let open = actions.iter().position(|action| *action == Action::OpenTransport);
    assert!(close.is_some(), "no close: {actions:#?}");
    assert!(close < open, "close after open: {actions:#?}");
}

#[test]
fn force_reconnect_skips_backoff_wait() {
    let mut driver = Driver::new(Config::default());
    driver.feed(Input::Start);
    driver.feed(Input::TransportFailed { error: "refused".to_string() });
    let actions = driver.feed(Input::ForceReconnect { reason: "user".to_string() });

    assert_eq!(driver.machine.state(), StateName::Connecting);
    assert!(actions.contains(&Action::CancelTimer(Timer::Backoff)));
    assert!(actions.contains(&Action::OpenTransport));
}

#[test]
fn unarmed_timer_is_ignored() {
    let mut driver = Driver::new(Config::default());
    let actions = driver.feed(Input::TimerFired(Timer::Backoff));

    assert_eq!(driver.machine.state(), StateName::Disconnected);
    assert!(logged(&actions, "not armed"));
}

#[test]
fn unexpected_auth_response_is_ignored() {
    let mut driver = Driver::new(Config::default());
    driver.feed(Input::Start);
    driver.feed(Input::TransportUp);
    let actions = driver.feed(Input::SymbolsLoaded { count: 1 });

    assert_eq!(driver.machine.state(), StateName::Authenticating);
    assert!(logged(&actions, "ignored symbols loaded"));
}

#[test]
fn config_validation_names_the_value() {
    assert_eq!(Config::default().validate(), Ok(()));

    let zero = Config { heartbeat_interval_ms: 0, ..Config::default() };
    assert_eq!(zero.validate(), Err(ConfigError::ZeroDuration { field: "heartbeat_interval_ms" }));

    let cap = Config { backoff_cap_ms: 10, ..Config::default() };
    assert!(cap.validate().is_err_and(|error| error.to_string().contains("backoff_cap_ms (10)")));

    let jitter = Config { jitter: 1.5, ..Config::default() };
    assert!(jitter.validate().is_err_and(|error| error.to_string().contains("1.5")));
}
