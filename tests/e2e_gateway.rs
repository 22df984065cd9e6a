//! The whole stack for real: WebSocket clients (tokio-tungstenite) against `gateway::serve`, in
//! front of a real session driver, connected over TLS to a real simulator on 127.0.0.1. Faults
//! are injected into the simulator and checked from the client's side: frames, `/health`,
//! `/metrics`, and the simulator's own counters.

mod e2e_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

use e2e_support::{
    close_code, connect, eventually, frame_of_type, http, metric_value, status_frame, subscribe, tick_of, unsubscribe,
    wait_frame, Client, WAIT,
};
use tickgate::fsm::{self, StateName};
use tickgate::gateway::{self, GatewayConfig};
use tickgate::session::{self, SessionConfig, SessionHandle};
use tickgate::simulator::{Fault, SimulatorConfig, SimulatorHandle, DEMO_ACCOUNT_ID};

/// Settings one test may change before the stack starts.
struct Options {
    /// Spot events per second per subscribed symbol.
    tick_rate: f64,
    fsm: fsm::Config,
    gateway: GatewayConfig,
    /// Pause of the session's subscription queue after a failed subscribe, before the retry.
    retry_pause: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tick_rate: 20.0,
            fsm: fsm::Config {
                connect_timeout_ms: 2_000,
                stale_after_ms: 400,
                liveness_timeout_ms: 800,
                heartbeat_interval_ms: 100,
                // Long enough that Stale recovers in place during a test, without a reconnect.
                stale_reconnect_after_ms: 5_000,
                backoff_base_ms: 50,
                backoff_cap_ms: 400,
                jitter: 0.1,
                jitter_seed: 11,
                has_refresh_token: true,
            },
            gateway: GatewayConfig {
                close_timeout: Duration::from_millis(500),
                shutdown_timeout: Duration::from_secs(3),
                ..GatewayConfig::default()
            },
            retry_pause: Duration::from_millis(100),
        }
    }
}

/// A simulator, a session driver connected to it, and the gateway in front of the session.
struct Stack {
    sim: SimulatorHandle,
    session: SessionHandle,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    gateway: JoinHandle<anyhow::Result<()>>,
    driver: JoinHandle<anyhow::Result<()>>,
}

impl Stack {
    /// Starts everything in the order `tickgate serve` does, then waits until the session streams.
    async fn start(tweak: impl FnOnce(&mut Options)) -> Stack {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut options = Options::default();
        tweak(&mut options);

        // 1. The simulator, with heartbeats fast enough for the short liveness timeout.
        let sim = SimulatorHandle::start(SimulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tick_rate: options.tick_rate,
            heartbeat_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(3),
            duplicate_close_after: Duration::from_millis(300),
            ..SimulatorConfig::default()
        })
        .await
        .expect("simulator starts");

        let mut config = SessionConfig::for_simulator(&sim);
        config.fsm = options.fsm;
        config.request_timeout = Duration::from_secs(2);
        config.subscribe_spacing = Duration::from_millis(5);
        config.rate_limit_pause = options.retry_pause;

        // 2. The gateway first, so its hub receives the session's first transition. `session::spawn`
        //    would start the driver before the hub subscribes to the events.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (session, ends) = SessionHandle::channel(config.event_capacity);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let gateway = tokio::spawn(gateway::serve(listener, session.clone(), options.gateway, async move {
            let _ = stop_rx.await;
        }));
        eventually("the gateway hub subscribes to session events", || ends.events.receiver_count() > 0).await;

        // 3. The session driver, over real TLS to the simulator.
        let driver = tokio::spawn(session::driver::run(config, ends));
        let mut status = session.status();
        tokio::time::timeout(WAIT, status.wait_for(|status| status.state == StateName::Streaming))
            .await
            .expect("session streams within the wait")
            .expect("session status channel open");

        Stack { sim, session, addr, stop, gateway, driver }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Connects a client and waits for its `ready` frame, after which the gateway checks
    /// symbols against the list.
    async fn client(&self) -> Client {
        let mut client = connect(&self.url()).await;
        let first = frame_of_type(&mut client, "status").await;
        assert_eq!(first["symbol"], "system", "{first}");
        frame_of_type(&mut client, "ready").await;
        client
    }

    /// Returns the simulator's live spot subscriptions by symbol, without zero counts.
    fn upstream(&self) -> BTreeMap<String, usize> {
        self.sim.stats().subscriptions.into_iter().filter(|(_, count)| *count > 0).collect()
    }

    async fn wait_upstream(&self, expected: &[(&str, usize)]) {
        let expected: BTreeMap<String, usize> = expected.iter().map(|(name, count)| (name.to_string(), *count)).collect();
        let deadline = Instant::now() + WAIT;
        loop {
            let upstream = self.upstream();
            if upstream == expected {
                return;
            }
            assert!(Instant::now() < deadline, "simulator subscriptions {upstream:?}, expected {expected:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn requests(&self, name: &str) -> u64 {
        self.sim.stats().requests_by_type.get(name).copied().unwrap_or(0)
    }

    fn max_concurrent(&self) -> usize {
        self.sim.stats().max_concurrent_per_account.get(&DEMO_ACCOUNT_ID).copied().unwrap_or(0)
    }

    fn digits(&self, symbol: &str) -> usize {
        let info = self.sim.symbols().into_iter().find(|info| info.name == symbol && !info.broker_name.contains('.'));
        info.unwrap_or_else(|| panic!("simulator has no symbol {symbol}")).digits as usize
    }

    async fn health(&self) -> (u16, Value) {
        let response = http(self.addr, "GET", "/health", None).await;
        (response.code, response.json())
    }

    async fn metrics(&self) -> String {
        let response = http(self.addr, "GET", "/metrics", None).await;
        assert_eq!(response.code, 200, "{}", response.body);
        response.body
    }

    /// Stops the gateway, then the session, then the simulator, checking each ends cleanly and
    /// that the account never had two sessions at once.
    async fn shutdown(self) {
        assert!(self.max_concurrent() <= 1, "simulator saw {} concurrent sessions", self.max_concurrent());

        let _ = self.stop.send(());
        let gateway = tokio::time::timeout(WAIT, self.gateway).await.expect("gateway stops within the wait");
        gateway.expect("gateway task did not panic").expect("gateway stopped without error");

        self.session.shutdown().await.expect("session still running at shutdown");
        let driver = tokio::time::timeout(WAIT, self.driver).await.expect("session stops within the wait");
        driver.expect("driver task did not panic").expect("driver stopped without error");

        tokio::time::timeout(WAIT, self.sim.shutdown()).await.expect("simulator stops within the wait");
    }
}

/// Reads frames until `count` ticks have arrived and returns them as (frame, raw text).
async fn ticks(client: &mut Client, count: usize) -> Vec<(Value, String)> {
    let mut ticks = Vec::with_capacity(count);
    while ticks.len() < count {
        ticks.push(wait_frame(client, "a tick", |frame| frame["type"] == "tick").await);
    }
    ticks
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_have_symbol_digits() {
    let stack = Stack::start(|_| {}).await;
    let symbols = ["EURUSD", "USDJPY", "XAUUSD"];
    let mut client = stack.client().await;

    let response = subscribe(&mut client, &symbols).await;
    assert_eq!(response["symbols"], json!(symbols));
    assert_eq!(response["subscriptions"], json!(["EURUSD", "USDJPY", "XAUUSD"]));

    // Prices are written at the symbol's digits, trailing zeros kept: 5, 3 and 2 decimals here.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    while symbols.iter().any(|symbol| seen.get(*symbol).copied().unwrap_or(0) < 3) {
        let (tick, text) = wait_frame(&mut client, "ticks of every symbol", |frame| frame["type"] == "tick").await;
        let symbol = tick["symbol"].as_str().expect("tick names its symbol").to_string();
        assert!(symbols.contains(&symbol.as_str()), "tick of unsubscribed {symbol}: {text}");

        let digits = stack.digits(&symbol);
        assert_eq!(e2e_support::decimals_of(&text, "bid"), digits, "bid of {symbol}: {text}");
        assert_eq!(e2e_support::decimals_of(&text, "ask"), digits, "ask of {symbol}: {text}");
        assert!(tick["ask"].as_f64() >= tick["bid"].as_f64(), "crossed book: {text}");
        assert_eq!(tick["source"], "ctrader", "{text}");
        assert!(tick["timestamp"].as_i64().is_some_and(|ms| ms > 1_600_000_000_000), "{text}");
        *seen.entry(symbol).or_default() += 1;
    }

    stack.wait_upstream(&[("EURUSD", 1), ("USDJPY", 1), ("XAUUSD", 1)]).await;
    drop(client);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_reach_only_subscribers() {
    let stack = Stack::start(|_| {}).await;
    let mut euro = stack.client().await;
    let mut cable = stack.client().await;
    subscribe(&mut euro, &["EURUSD", "USDJPY"]).await;
    subscribe(&mut cable, &["GBPUSD"]).await;

    for (tick, text) in ticks(&mut cable, 10).await {
        assert_eq!(tick["symbol"], "GBPUSD", "{text}");
    }
    let mut seen_yen = false;
    for (tick, text) in ticks(&mut euro, 20).await {
        assert!(tick["symbol"] == "EURUSD" || tick["symbol"] == "USDJPY", "{text}");
        seen_yen |= tick["symbol"] == "USDJPY";
    }
    assert!(seen_yen, "no USDJPY tick among 20");

    // The hub handles the request before routing later ticks, and the response is queued
    // after the removal, so no USDJPY tick may follow it.
    let response = unsubscribe(&mut euro, &["USDJPY"]).await;
    assert_eq!(response["subscriptions"], json!(["EURUSD"]));
    for (tick, text) in ticks(&mut euro, 10).await {
        assert_eq!(tick["symbol"], "EURUSD", "{text}");
    }
    stack.wait_upstream(&[("EURUSD", 1), ("GBPUSD", 1)]).await;

    drop((euro, cable));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_coalesce_upstream() {
    let stack = Stack::start(|_| {}).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = stack.client().await;
        assert_eq!(subscribe(&mut client, &["EURUSD"]).await["symbols"], json!(["EURUSD"]));
        tick_of(&mut client, "EURUSD").await;
        clients.push(client);
    }

    // Three subscribers, one upstream subscription from one request.
    assert_eq!(stack.upstream(), BTreeMap::from([("EURUSD".to_string(), 1)]));
    assert_eq!(stack.requests("ProtoOASubscribeSpotsReq"), 1);
    let (_, health) = stack.health().await;
    assert_eq!(health["upstreamSubscriptions"], 1, "{health}");
    assert_eq!(health["desiredSubscriptions"], 1, "{health}");

    // The first unsubscribes and the second disconnects, so only the third is subscribed to EURUSD.
    unsubscribe(&mut clients[0], &["EURUSD"]).await;
    let mut second = clients.remove(1);
    second.close(None).await.unwrap();
    let drain = async { while let Some(Ok(_)) = second.next().await {} };
    tokio::time::timeout(WAIT, drain).await.expect("closed client ends");
    // The client task deregisters before it lowers the count, so once the count is 2 the hub
    // has the deregistration queued ahead of the GBPUSD subscribe below. Commands reach the
    // driver in order, so GBPUSD ticking means any EURUSD unsubscribe would have been sent.
    let deadline = Instant::now() + WAIT;
    while stack.health().await.1["clients"] != 2 {
        assert!(Instant::now() < deadline, "client count never dropped to 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    subscribe(&mut clients[1], &["GBPUSD"]).await;
    tick_of(&mut clients[1], "GBPUSD").await;
    tick_of(&mut clients[1], "EURUSD").await;
    assert_eq!(stack.upstream().get("EURUSD"), Some(&1));
    assert_eq!(stack.requests("ProtoOAUnsubscribeSpotsReq"), 0);

    // The last EURUSD subscriber leaves: the upstream subscription goes with it.
    unsubscribe(&mut clients[1], &["EURUSD"]).await;
    stack.wait_upstream(&[("GBPUSD", 1)]).await;
    drop(clients);
    stack.wait_upstream(&[]).await;
    assert_eq!(stack.requests("ProtoOASubscribeSpotsReq"), 2);

    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_ticks_go_stale_then_recover() {
    let stack = Stack::start(|_| {}).await;
    let mut client = stack.client().await;
    subscribe(&mut client, &["EURUSD"]).await;
    tick_of(&mut client, "EURUSD").await;
    let connections = stack.sim.stats().connections_total;

    stack.sim.inject(Fault::StallTicks);
    let stale = status_frame(&mut client, "stale").await;
    assert!(stale["since"].as_i64().is_some_and(|ms| ms > 0), "{stale}");
    assert!(stale.get("attempt").is_none(), "{stale}");
    let (code, health) = stack.health().await;
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["state"], "Stale", "{health}");

    stack.sim.inject(Fault::Resume);
    status_frame(&mut client, "connected").await;
    tick_of(&mut client, "EURUSD").await;

    // Heartbeats kept the connection alive, so the same connection recovered.
    assert_eq!(stack.sim.stats().connections_total, connections);
    assert_eq!(stack.health().await.0, 200);

    drop(client);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_reconnects_and_restores() {
    let stack = Stack::start(|_| {}).await;
    let mut client = stack.client().await;
    subscribe(&mut client, &["EURUSD", "USDJPY"]).await;
    tick_of(&mut client, "EURUSD").await;
    tick_of(&mut client, "USDJPY").await;
    let connections = stack.sim.stats().connections_total;

    stack.sim.inject(Fault::Drop);
    let reconnecting = status_frame(&mut client, "reconnecting").await;
    assert!(reconnecting["attempt"].as_u64().is_some_and(|attempt| attempt >= 1), "{reconnecting}");
    assert!(reconnecting["retryInMs"].as_u64().is_some(), "{reconnecting}");
    assert!(reconnecting["reason"].is_string(), "{reconnecting}");
    status_frame(&mut client, "connecting").await;
    status_frame(&mut client, "authenticating").await;
    status_frame(&mut client, "connected").await;
    frame_of_type(&mut client, "ready").await;

    // Both subscriptions come back without the client asking again.
    tick_of(&mut client, "EURUSD").await;
    tick_of(&mut client, "USDJPY").await;
    stack.wait_upstream(&[("EURUSD", 1), ("USDJPY", 1)]).await;
    assert_eq!(stack.sim.stats().connections_total, connections + 1);

    let text = stack.metrics().await;
    let sample = |name: &str| metric_value(&text, name).unwrap_or_else(|| panic!("no sample {name} in\n{text}"));
    assert_eq!(sample("tickgate_transitions_total{from=\"Streaming\",to=\"Backoff\"}"), 1.0);
    assert!(sample("tickgate_transitions_total{from=\"Backoff\",to=\"Connecting\"}") >= 1.0);
    assert_eq!(sample("tickgate_transitions_total{from=\"Disconnected\",to=\"Connecting\"}"), 1.0);
    assert_eq!(sample("tickgate_transitions_total{from=\"Authenticating\",to=\"Streaming\"}"), 2.0);
    assert!(sample("tickgate_reconnect_attempts_total") >= 1.0);
    assert_eq!(sample("tickgate_state{state=\"Streaming\"}"), 1.0);
    assert!(sample("tickgate_ticks_received_total") >= 4.0);
    assert!(sample("tickgate_ticks_sent_total") >= 4.0);
    assert_eq!(sample("tickgate_upstream_subscriptions"), 2.0);

    drop(client);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_symbol_rejected_client_stays() {
    let stack = Stack::start(|_| {}).await;
    let mut client = stack.client().await;

    let request = json!({ "type": "subscribe", "symbols": ["NOPEUSD"] }).to_string();
    e2e_support::send_text(&mut client, &request).await;
    let error = frame_of_type(&mut client, "error").await;
    assert_eq!(error["code"], "SYMBOL_NOT_FOUND", "{error}");
    assert_eq!(error["symbol"], "NOPEUSD", "{error}");
    assert!(error["message"].as_str().unwrap().contains("\"NOPEUSD\""), "{error}");
    let response = frame_of_type(&mut client, "subscribeResponse").await;
    assert_eq!(response["symbols"], json!([]));
    assert_eq!(stack.requests("ProtoOASubscribeSpotsReq"), 0);

    // The same connection goes on working.
    subscribe(&mut client, &["EURUSD"]).await;
    tick_of(&mut client, "EURUSD").await;

    drop(client);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_subscribe_error_reaches_client() {
    let stack = Stack::start(|_| {}).await;
    let mut client = stack.client().await;

    // Both codes for an unknown symbol are permanent: the subscriber gets an error for it.
    for (code, symbol) in [("SYMBOL_NOT_FOUND", "GBPUSD"), ("UNKNOWN_SYMBOL", "AUDUSD")] {
        stack.sim.inject(Fault::ErrorNextSubscribe { code: code.into() });
        assert_eq!(subscribe(&mut client, &[symbol]).await["symbols"], json!([symbol]));
        let error = frame_of_type(&mut client, "error").await;
        assert_eq!(error["code"], "SUBSCRIPTION_FAILED", "{error}");
        assert_eq!(error["symbol"], symbol, "{error}");
        assert!(error["message"].as_str().unwrap().contains(code), "{error}");
    }
    stack.wait_upstream(&[]).await;

    // Any other code is retried, so one failure never reaches the client.
    stack.sim.inject(Fault::ErrorNextSubscribe { code: "INVALID_REQUEST".into() });
    subscribe(&mut client, &["EURUSD"]).await;
    let (tick, _) = wait_frame(&mut client, "a EURUSD tick or an error", |frame| {
        frame["type"] == "error" || (frame["type"] == "tick" && frame["symbol"] == "EURUSD")
    })
    .await;
    assert_eq!(tick["type"], "tick", "{tick}");
    stack.wait_upstream(&[("EURUSD", 1)]).await;
    assert_eq!(stack.requests("ProtoOASubscribeSpotsReq"), 4);

    let text = stack.metrics().await;
    assert_eq!(metric_value(&text, "tickgate_client_errors_total{code=\"SUBSCRIPTION_FAILED\"}"), Some(2.0));

    drop(client);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_subscribe_error_reaches_client() {
    // A one-second pause between attempts leaves time to inject the next failure.
    let stack = Stack::start(|options| options.retry_pause = Duration::from_secs(1)).await;
    let mut client = stack.client().await;

    // The session makes three attempts, and each injected fault fails one request.
    stack.sim.inject(Fault::ErrorNextSubscribe { code: "INVALID_REQUEST".into() });
    subscribe(&mut client, &["EURCHF"]).await;
    for attempt in 1..=2 {
        eventually(&format!("subscribe attempt {attempt} reaches the simulator"), || {
            stack.requests("ProtoOASubscribeSpotsReq") == attempt
        })
        .await;
        stack.sim.inject(Fault::ErrorNextSubscribe { code: "INVALID_REQUEST".into() });
    }

    let error = frame_of_type(&mut client, "error").await;
    assert_eq!(error["code"], "SUBSCRIPTION_FAILED", "{error}");
    assert_eq!(error["symbol"], "EURCHF", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("INVALID_REQUEST"), "{error}");
    assert!(message.contains("after 3 attempts"), "{error}");
    assert_eq!(stack.requests("ProtoOASubscribeSpotsReq"), 3);
    stack.wait_upstream(&[]).await;

    drop(client);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_streaming_and_backoff() {
    // Longer backoff and a shorter connect timeout than the others, so that each Backoff lasts
    // long enough to be polled and each refused handshake fails within a second.
    let stack = Stack::start(|options| {
        options.fsm.backoff_base_ms = 300;
        options.fsm.backoff_cap_ms = 1_000;
        options.fsm.connect_timeout_ms = 1_000;
    })
    .await;
    let mut client = stack.client().await;
    subscribe(&mut client, &["EURUSD"]).await;
    tick_of(&mut client, "EURUSD").await;

    let (code, health) = stack.health().await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["state"], "Streaming", "{health}");
    assert_eq!(health["status"], "connected", "{health}");
    let age = health["lastTickAgeMs"]["EURUSD"].as_i64().unwrap_or_else(|| panic!("no EURUSD tick age: {health}"));
    assert!((0..5_000).contains(&age), "{health}");
    assert_eq!(health["clients"], 1, "{health}");
    assert_eq!(health["upstreamSubscriptions"], 1, "{health}");

    // With TLS refused, every reconnect fails, and the health check reports each Backoff.
    stack.sim.inject(Fault::RefuseTls);
    stack.sim.inject(Fault::Drop);
    let deadline = Instant::now() + WAIT;
    let backoff = loop {
        let (code, health) = stack.health().await;
        if health["state"] == "Backoff" && health["attempt"].as_u64().is_some_and(|attempt| attempt >= 2) {
            assert_eq!(code, 503, "{health}");
            break health;
        }
        assert!(Instant::now() < deadline, "no second Backoff; last health {health}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(backoff["status"], "reconnecting", "{backoff}");
    assert!(backoff["retryInMs"].as_u64().is_some(), "{backoff}");
    assert!(backoff["reason"].is_string(), "{backoff}");

    stack.sim.inject(Fault::Resume);
    status_frame(&mut client, "connected").await;
    tick_of(&mut client, "EURUSD").await;
    let (code, health) = stack.health().await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["attempt"], 0, "{health}");

    drop(client);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reconnect_reconnects_upstream() {
    let stack = Stack::start(|_| {}).await;
    let mut client = stack.client().await;
    subscribe(&mut client, &["EURUSD"]).await;
    tick_of(&mut client, "EURUSD").await;
    let connections = stack.sim.stats().connections_total;

    let response = http(stack.addr, "POST", "/admin/reconnect", None).await;
    assert_eq!(response.code, 202, "{}", response.body);
    status_frame(&mut client, "connecting").await;
    status_frame(&mut client, "connected").await;
    tick_of(&mut client, "EURUSD").await;

    eventually("the simulator counts one more connection", || stack.sim.stats().connections_total == connections + 1).await;
    stack.wait_upstream(&[("EURUSD", 1)]).await;
    // The old session is closed before the new one authorises.
    assert_eq!(stack.max_concurrent(), 1);
    let text = stack.metrics().await;
    assert_eq!(metric_value(&text, "tickgate_admin_reconnects_total"), Some(1.0));

    drop(client);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_closed_fast_continues() {
    // At 250 ticks per second a stalled reader fills its 64 frames and the 4 KiB socket buffers
    // within about a second, while the fast reader has a quarter of a second of slack.
    let stack = Stack::start(|options| {
        options.tick_rate = 250.0;
        options.gateway.client_queue_capacity = 64;
        options.gateway.socket_send_buffer_bytes = Some(4096);
    })
    .await;

    // The slow client has a small receive window and stops reading after its subscription.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(stack.addr).await.unwrap();
    let handshake = tokio_tungstenite::client_async(stack.url(), MaybeTlsStream::Plain(stream));
    let (mut slow, _) = tokio::time::timeout(WAIT, handshake).await.expect("slow client handshake timed out").unwrap();
    subscribe(&mut slow, &["EURUSD"]).await;

    // The fast client reads every frame on its own task and counts the ticks.
    let mut fast = stack.client().await;
    subscribe(&mut fast, &["EURUSD"]).await;
    let fast_ticks = Arc::new(AtomicUsize::new(0));
    let counter = fast_ticks.clone();
    let reader = tokio::spawn(async move {
        while let Some(message) = fast.next().await {
            match message {
                Ok(Message::Text(text)) if text.contains("\"type\":\"tick\"") => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Message::Close(frame)) => return frame.map(|frame| u16::from(frame.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    });

    let deadline = Instant::now() + WAIT;
    loop {
        let text = stack.metrics().await;
        if metric_value(&text, "tickgate_slow_client_disconnects_total") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "slow client was never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The slow client reads its backlog, then finds close 4002 with the reason.
    let (code, reason) = close_code(&mut slow).await;
    assert_eq!(code, 4002, "{reason}");
    assert!(reason.contains("queue full"), "{reason}");

    // The fast client keeps receiving, and EURUSD stays subscribed upstream for it.
    let before = fast_ticks.load(Ordering::Relaxed);
    eventually("the fast client receives 50 more ticks", || fast_ticks.load(Ordering::Relaxed) >= before + 50).await;
    assert!(!reader.is_finished(), "fast client was closed: {:?}", reader.await);
    stack.wait_upstream(&[("EURUSD", 1)]).await;
    let text = stack.metrics().await;
    assert_eq!(metric_value(&text, "tickgate_slow_client_disconnects_total"), Some(1.0));

    reader.abort();
    drop(slow);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_clients_receive_ticks() {
    const CLIENTS: usize = 1_000;
    // Each client costs two descriptors in this process (its socket and the gateway's).
    let stack = Stack::start(|_| {}).await;
    let url = stack.url();

    let mut clients: Vec<Client> = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS / 100 {
        let batch = (0..100).map(|_| {
            let url = url.clone();
            async move {
                let config = WebSocketConfig::default().read_buffer_size(4096);
                let connecting = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
                let (mut client, _) = tokio::time::timeout(WAIT, connecting)
                    .await
                    .expect("client connect timed out")
                    .unwrap_or_else(|err| panic!("client connect failed: {err}; check `ulimit -n` (about 2,100 needed)"));
                let response = subscribe(&mut client, &["EURUSD"]).await;
                assert_eq!(response["symbols"], json!(["EURUSD"]));
                client
            }
        });
        clients.extend(futures_util::future::join_all(batch).await);
    }

    // Every client gets two ticks of the one upstream subscription.
    let received = clients.iter_mut().map(|client| async move {
        tick_of(client, "EURUSD").await;
        tick_of(client, "EURUSD").await;
    });
    tokio::time::timeout(Duration::from_secs(60), futures_util::future::join_all(received))
        .await
        .expect("1000 clients did not all receive two ticks within 60 s");
    assert_eq!(stack.upstream(), BTreeMap::from([("EURUSD".to_string(), 1)]));
    assert_eq!(stack.requests("ProtoOASubscribeSpotsReq"), 1);
    let text = stack.metrics().await;
    assert_eq!(metric_value(&text, "tickgate_clients"), Some(CLIENTS as f64));
    assert!(metric_value(&text, "tickgate_ticks_sent_total").is_some_and(|sent| sent >= (2 * CLIENTS) as f64), "{text}");
    assert_eq!(metric_value(&text, "tickgate_slow_client_disconnects_total"), Some(0.0));

    // When the last of them leaves, the upstream subscription ends.
    drop(clients);
    stack.wait_upstream(&[]).await;
    stack.shutdown().await;
}
