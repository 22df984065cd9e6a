//! The fault suite: every fault the simulator can inject, against a real session. Each test
//! checks the states the machine passes through and that it reconnects. It also checks that
//! every subscription is restored symbol for symbol and ticks flow again, that the simulator
//! never saw two concurrent sessions for the account, and that the driver ends without a panic.

mod session_support;

use std::time::Duration;

use session_support::{names, spawn_session, wait_upstream, Fixture, Probe, WAIT};
use tickgate::fsm::StateName::{self, Authenticating, Backoff, Connecting, Stale, Streaming};
use tickgate::session::{SessionConfig, SessionHandle};
use tickgate::simulator::Fault;
use tokio::task::JoinHandle;

const SYMBOLS: [&str; 3] = ["EURUSD", "USDJPY", "XAUUSD"];

struct Running {
    handle: SessionHandle,
    task: JoinHandle<anyhow::Result<()>>,
    probe: Probe,
}

/// Starts a session, subscribes [`SYMBOLS`] and waits until they all tick.
async fn start_streaming(fixture: &Fixture, config: SessionConfig) -> Running {
    let (handle, task, mut probe) = spawn_session(config);
    handle.subscribe(SYMBOLS.iter().map(|s| s.to_string()).collect()).await.unwrap();
    probe.wait_state(Streaming).await;
    probe.wait_ticks(&SYMBOLS, 2).await;
    wait_upstream(fixture, &names(&SYMBOLS)).await;
    probe.reset_ticks();
    Running { handle, task, probe }
}

/// Asserts that `expected` occurs in `path` in order, other states allowed in between.
fn assert_passes(path: &[StateName], expected: &[StateName]) {
    let mut rest = path.iter();
    for state in expected {
        assert!(rest.any(|s| s == state), "path {path:?} does not pass through {expected:?} in order");
    }
}

/// Waits for the session to stream again with every symbol restored upstream and ticking.
async fn assert_recovered(fixture: &Fixture, running: &mut Running, symbols: &[&str]) {
    running
        .probe
        .wait_until("streaming again", WAIT, |p| p.transitions.last().is_some_and(|t| t.to == Streaming))
        .await;
    running.probe.reset_ticks();
    running.probe.wait_ticks(symbols, 3).await;
    wait_upstream(fixture, &names(symbols)).await;

    let status = running.handle.status().borrow().clone();
    assert_eq!(status.state, Streaming);
    assert_eq!(status.desired_subscriptions, symbols.len());
    assert_eq!(status.upstream_subscriptions, symbols.len());
}

/// Shuts the session down and checks it ended cleanly and never overlapped two sessions.
async fn finish(fixture: Fixture, running: Running) {
    assert!(fixture.max_concurrent() <= 1, "simulator saw {} concurrent sessions", fixture.max_concurrent());
    running.handle.shutdown().await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), running.task).await.expect("driver ends after shutdown");
    result.expect("driver task did not panic").expect("driver ended without error");
    fixture.sim.shutdown().await;
}

/// A fault that ends the current connection: drop, reset, malformed frame, oversized length.
async fn connection_fault_recovers(fault: Fault, reason_contains: &str) {
    let fixture = Fixture::start(|_| {}).await;
    let mut running = start_streaming(&fixture, fixture.session_config()).await;
    let mark = running.probe.transitions.len();
    let connections_before = fixture.sim.stats().connections_total;

    fixture.sim.inject(fault.clone());
    running.probe.wait_state(Backoff).await;
    assert_recovered(&fixture, &mut running, &SYMBOLS).await;

    let path = running.probe.path_since(mark);
    assert_passes(&path, &[Backoff, Connecting, Authenticating, Streaming]);
    let stats = fixture.sim.stats();
    assert_eq!(stats.connections_total, connections_before + 1, "one reconnect for {fault:?}");
    // Symbol details are cached across reconnects; the symbol list is fetched on each connect.
    assert_eq!(stats.requests_by_type.get("ProtoOASymbolByIdReq"), Some(&1), "{:?}", stats.requests_by_type);
    assert_eq!(stats.requests_by_type.get("ProtoOASymbolsListReq"), Some(&2), "{:?}", stats.requests_by_type);
    let reasons: Vec<_> = running.probe.statuses.iter().filter_map(|s| s.reason.clone()).collect();
    assert!(reasons.iter().any(|r| r.contains(reason_contains)), "no reason with {reason_contains:?} in {reasons:?}");
    finish(fixture, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_reconnects() {
    connection_fault_recovers(Fault::Drop, "closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_reconnects() {
    connection_fault_recovers(Fault::Reset, "reset").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_reconnects() {
    connection_fault_recovers(Fault::MalformedFrame, "ProtoMessage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_length_reconnects() {
    connection_fault_recovers(Fault::OversizedLength, "exceeds the maximum").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_event_reconnects() {
    connection_fault_recovers(Fault::DisconnectEvent { reason: "maintenance window".into() }, "maintenance window").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_detected_by_liveness() {
    let fixture = Fixture::start(|_| {}).await;
    let mut running = start_streaming(&fixture, fixture.session_config()).await;
    let mark = running.probe.transitions.len();

    // Half-open: nothing arrives, and new connections hang before the handshake.
    fixture.sim.inject(Fault::Silence);
    running.probe.wait_state(Backoff).await;
    running.probe.wait_state(Connecting).await;
    running.probe.wait_state(Backoff).await;
    fixture.sim.inject(Fault::Resume);
    assert_recovered(&fixture, &mut running, &SYMBOLS).await;

    assert_passes(&running.probe.path_since(mark), &[Backoff, Connecting, Backoff, Connecting, Authenticating, Streaming]);
    finish(fixture, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_ticks_goes_stale_and_recovers() {
    let fixture = Fixture::start(|_| {}).await;
    let mut running = start_streaming(&fixture, fixture.session_config()).await;
    let mark = running.probe.transitions.len();
    let connections_before = fixture.sim.stats().connections_total;

    // Heartbeats continue, so the machine reconnects once for staleness and then waits.
    fixture.sim.inject(Fault::StallTicks);
    running.probe.wait_state(Stale).await;
    running.probe.wait_state(Connecting).await;
    running.probe.wait_state(Stale).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    running.probe.drain();
    let reconnects = fixture.sim.stats().connections_total - connections_before;
    assert_eq!(reconnects, 1, "path {:?}", running.probe.path_since(mark));
    assert_eq!(running.handle.status().borrow().state, Stale);

    fixture.sim.inject(Fault::Resume);
    assert_recovered(&fixture, &mut running, &SYMBOLS).await;
    assert_passes(&running.probe.path_since(mark), &[Stale, Connecting, Authenticating, Streaming, Stale, Streaming]);
    finish(fixture, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_auth_times_out_and_retries() {
    let fixture = Fixture::start(|_| {}).await;
    let mut running = start_streaming(&fixture, fixture.session_config()).await;
    let mark = running.probe.transitions.len();

    fixture.sim.inject(Fault::StallAuth);
    fixture.sim.inject(Fault::Drop);
    assert_recovered(&fixture, &mut running, &SYMBOLS).await;

    // The first reconnect hangs in auth until the connect deadline, then backs off.
    let path = running.probe.path_since(mark);
    assert_passes(&path, &[Backoff, Connecting, Authenticating, Backoff, Connecting, Authenticating, Streaming]);
    finish(fixture, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_tls_backs_off_until_resume() {
    let fixture = Fixture::start(|_| {}).await;
    let mut running = start_streaming(&fixture, fixture.session_config()).await;
    let mark = running.probe.transitions.len();

    fixture.sim.inject(Fault::RefuseTls);
    fixture.sim.inject(Fault::Drop);
    running.probe.wait_state(Backoff).await;
    running.probe.wait_state(Backoff).await;
    running.probe.wait_state(Backoff).await;
    let attempt = running.handle.status().borrow().attempt;
    assert!(attempt >= 2, "attempt {attempt}");
    fixture.sim.inject(Fault::Resume);
    assert_recovered(&fixture, &mut running, &SYMBOLS).await;

    assert_passes(&running.probe.path_since(mark), &[Backoff, Connecting, Backoff, Connecting, Backoff, Streaming]);
    assert_eq!(running.handle.status().borrow().attempt, 0);
    finish(fixture, running).await;
}

/// Injects an error for the next subscribe and forces a reconnect, so the restore meets it.
async fn restore_meets_subscribe_error(code: &str) -> (Fixture, Running) {
    let fixture = Fixture::start(|_| {}).await;
    let mut running = start_streaming(&fixture, fixture.session_config()).await;
    fixture.sim.inject(Fault::ErrorNextSubscribe { code: code.into() });
    fixture.sim.inject(Fault::Drop);
    running.probe.wait_state(Backoff).await;
    running.probe.wait_state(Streaming).await;
    (fixture, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_symbol_error_fails_one_symbol() {
    let (fixture, mut running) = restore_meets_subscribe_error("SYMBOL_NOT_FOUND").await;

    // The first symbol in request order gets the error; only it fails, once.
    running.probe.wait_until("subscription failure", WAIT, |p| !p.failures.is_empty()).await;
    assert_recovered(&fixture, &mut running, &["USDJPY", "XAUUSD"]).await;
    assert_eq!(running.probe.failures, vec![("EURUSD".to_string(), "SYMBOL_NOT_FOUND".to_string())]);

    running.handle.reconnect("check the failed symbol stays removed").await.unwrap();
    running.probe.wait_state(Connecting).await;
    assert_recovered(&fixture, &mut running, &["USDJPY", "XAUUSD"]).await;
    assert_eq!(running.probe.failures.len(), 1);
    finish(fixture, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_error_is_retried() {
    let (fixture, mut running) = restore_meets_subscribe_error("REQUEST_FREQUENCY_EXCEEDED").await;

    assert_recovered(&fixture, &mut running, &SYMBOLS).await;
    assert!(running.probe.failures.is_empty(), "{:?}", running.probe.failures);
    finish(fixture, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_subscribe_error_is_retried() {
    let (fixture, mut running) = restore_meets_subscribe_error("CH_SERVER_NOT_REACHABLE").await;

    assert_recovered(&fixture, &mut running, &SYMBOLS).await;
    assert!(running.probe.failures.is_empty(), "{:?}", running.probe.failures);
    finish(fixture, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_subscribed_counts_as_success() {
    let (fixture, mut running) = restore_meets_subscribe_error("ALREADY_SUBSCRIBED").await;

    // The simulator responded only with the error, so upstream it has two of the three. The
    // session treats that response as confirmation and reports no failure.
    running
        .probe
        .wait_until("three confirmed", WAIT, |_| running.handle.status().borrow().upstream_subscriptions == 3)
        .await;
    running.probe.reset_ticks();
    running.probe.wait_ticks(&["USDJPY", "XAUUSD"], 3).await;
    assert!(running.probe.failures.is_empty(), "{:?}", running.probe.failures);
    wait_upstream(&fixture, &names(&["USDJPY", "XAUUSD"])).await;
    finish(fixture, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_restore_completes() {
    let many = ["EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCHF", "USDCAD", "EURGBP", "NZDUSD"];
    let fixture = Fixture::start(|sim| sim.rate_limit_per_s = 5).await;
    let mut config = fixture.session_config();
    config.subscribe_concurrency = 4;
    config.subscribe_spacing = Duration::ZERO;
    config.rate_limit_pause = Duration::from_millis(200);
    let (handle, task, probe) = spawn_session(config);
    let mut running = Running { handle, task, probe };

    running.handle.subscribe(many.iter().map(|s| s.to_string()).collect()).await.unwrap();
    assert_recovered(&fixture, &mut running, &many).await;

    let stats = fixture.sim.stats();
    let sent = stats.requests_by_type.get("ProtoOASubscribeSpotsReq").copied().unwrap_or(0);
    assert!(sent > many.len() as u64, "only {sent} subscribe requests, so the limit was never hit");
    assert!(running.probe.failures.is_empty(), "{:?}", running.probe.failures);
    finish(fixture, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refreshed_and_saved() {
    let fixture = Fixture::start(|_| {}).await;
    let env_file = fixture.dir.path().join(".env");
    std::fs::write(
        &env_file,
        format!(
            "# simulator\nCTRADER_CLIENT_ID=x\nCTRADER_ACCESS_TOKEN={}\nCTRADER_REFRESH_TOKEN={}\nKEEP=me\n",
            tickgate::simulator::DEMO_ACCESS_TOKEN,
            tickgate::simulator::DEMO_REFRESH_TOKEN
        ),
    )
    .unwrap();
    let mut config = fixture.session_config();
    config.refresh_token = Some(tickgate::simulator::DEMO_REFRESH_TOKEN.into());
    config.token_file = Some(env_file.clone());
    let mut running = start_streaming(&fixture, config).await;
    let mark = running.probe.transitions.len();

    fixture.sim.inject(Fault::ExpireToken);
    fixture.sim.inject(Fault::Drop);
    running.probe.wait_state(Backoff).await;
    assert_recovered(&fixture, &mut running, &SYMBOLS).await;

    // One reconnect: auth failed, the token was refreshed in-band and auth retried.
    assert_eq!(running.probe.path_since(mark), vec![Backoff, Connecting, Authenticating, Streaming]);
    let (access, refresh) = fixture.sim.current_tokens();
    assert_ne!(access, tickgate::simulator::DEMO_ACCESS_TOKEN);
    let saved = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(
        saved,
        format!("# simulator\nCTRADER_CLIENT_ID=x\nCTRADER_ACCESS_TOKEN={access}\nCTRADER_REFRESH_TOKEN={refresh}\nKEEP=me\n")
    );
    finish(fixture, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_without_refresh_backs_off() {
    let fixture = Fixture::start(|_| {}).await;
    let mut running = start_streaming(&fixture, fixture.session_config()).await;

    fixture.sim.inject(Fault::ExpireToken);
    fixture.sim.inject(Fault::Drop);
    running
        .probe
        .wait_until("backoff for the rejected token", WAIT, |p| {
            p.statuses.iter().any(|s| s.state == Backoff && s.reason.as_deref().is_some_and(|r| r.contains("CH_ACCESS_TOKEN_INVALID")))
        })
        .await;

    // Without a refresh token the machine keeps backing off and never streams again.
    running.probe.wait_state(Connecting).await;
    running.probe.wait_state(Backoff).await;
    assert!(!running.probe.path_since(3).contains(&Streaming), "{:?}", running.probe.path());
    finish(fixture, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_reconnects_never_overlap() {
    let fixture = Fixture::start(|_| {}).await;
    let mut running = start_streaming(&fixture, fixture.session_config()).await;

    for round in 0..5 {
        running.handle.reconnect(format!("round {round}")).await.unwrap();
        fixture.sim.inject(Fault::Drop);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_recovered(&fixture, &mut running, &SYMBOLS).await;
    assert_eq!(fixture.sim.stats().connections_current, 1);
    finish(fixture, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_session_on_same_account_is_closed() {
    let fixture = Fixture::start(|_| {}).await;
    let mut first = start_streaming(&fixture, fixture.session_config()).await;
    let mark = first.probe.transitions.len();

    // Another process opens a session for the same account. The simulator closes that duplicate
    // after 300 ms, as a third-party client reported cTrader doing, and the duplicate retries.
    let (second, second_task, mut second_probe) = spawn_session(fixture.session_config());
    second_probe.wait_state(Streaming).await;
    second_probe.wait_state(Backoff).await;
    second.shutdown().await.unwrap();
    second_task.await.unwrap().unwrap();

    // The first session never noticed: no transition, ticks kept flowing, all restored.
    first.probe.wait_ticks(&SYMBOLS, 3).await;
    assert_eq!(first.probe.path_since(mark), Vec::<StateName>::new());
    wait_upstream(&fixture, &names(&SYMBOLS)).await;

    // The duplicate is the test's doing, so two sessions at once were expected here; the
    // session under test itself never overlapped.
    assert_eq!(fixture.max_concurrent(), 2);
    first.handle.shutdown().await.unwrap();
    first.task.await.unwrap().unwrap();
    fixture.sim.shutdown().await;
}

/// Refreshes the account's token from another connection, as a second process with the same
/// refresh token would. The server then ends the sessions opened with the old access token.
async fn refresh_token_elsewhere(fixture: &Fixture) {
    use futures_util::{SinkExt, StreamExt};
    use tickgate::protocol::{pb, FrameCodec, Message};
    use tickgate::session::transport;

    let tls = transport::tls_config(Some(&fixture.ca_file)).unwrap();
    let stream = transport::connect("127.0.0.1", fixture.sim.addr().port(), fixture.sim.server_name(), tls).await.unwrap();
    let mut framed = tokio_util::codec::Framed::new(stream, FrameCodec::default());
    let config = fixture.sim.config().clone();
    let requests = [
        Message::ApplicationAuthReq(pb::ProtoOaApplicationAuthReq {
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            ..Default::default()
        }),
        Message::RefreshTokenReq(pb::ProtoOaRefreshTokenReq { refresh_token: config.refresh_token.clone(), ..Default::default() }),
    ];
    for request in requests {
        framed.send(request.encode(Some("raw".into()))).await.unwrap();
        let reply = framed.next().await.unwrap().unwrap();
        let reply = Message::decode(&reply).unwrap();
        assert!(tickgate::protocol::ApiError::from_message(&reply).is_none(), "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_invalidated_event_is_reported() {
    let fixture = Fixture::start(|_| {}).await;
    let mut running = start_streaming(&fixture, fixture.session_config()).await;

    refresh_token_elsewhere(&fixture).await;

    // Without a refresh token of its own the machine cannot recover and says why.
    running
        .probe
        .wait_until("backoff after the invalidation", WAIT, |p| {
            p.statuses.iter().any(|s| s.state == Backoff && s.reason.as_deref().is_some_and(|r| r.contains("Access token was refreshed")))
        })
        .await;
    finish(fixture, running).await;
}
