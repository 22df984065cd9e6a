//! The session driver against the real simulator: auth, symbols, spots, subscriptions,
//! heartbeats, shutdown and the journal.

mod session_support;

use std::time::Duration;

use session_support::{eventually, names, spawn_session, wait_upstream, Fixture};
use tickgate::fsm::StateName;
use tickgate::session;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_streams_subscribed_symbols() {
    let fixture = Fixture::start(|_| {}).await;
    let (handle, task, mut probe) = spawn_session(fixture.session_config());

    // Requested before the connection exists: kept and applied on connect, in both spellings.
    handle.subscribe(vec!["EUR/USD".into(), "usdjpy".into(), "XAUUSD".into()]).await.unwrap();
    probe.wait_state(StateName::Streaming).await;
    probe.wait_ticks(&["EURUSD", "USDJPY", "XAUUSD"], 3).await;

    assert_eq!(probe.path()[..3], [StateName::Connecting, StateName::Authenticating, StateName::Streaming]);
    assert_eq!(probe.ready, 1);
    wait_upstream(&fixture, &names(&["EURUSD", "USDJPY", "XAUUSD"])).await;

    // Prices are shown at each symbol's digits and carry the server's timestamp.
    for tick in &probe.tick_log {
        let digits = match &*tick.symbol {
            "USDJPY" => 3,
            "XAUUSD" => 2,
            _ => 5,
        };
        assert_eq!(tick.bid.digits, digits, "{tick:?}");
        assert!(tick.bid <= tick.ask, "{tick:?}");
        assert!(tick.server_time_ms.is_some(), "{tick:?}");
        let decimals = tick.bid.to_string().split('.').nth(1).map_or(0, str::len);
        assert_eq!(decimals, usize::from(digits), "{tick:?}");
    }

    let status = handle.status().borrow().clone();
    assert_eq!(status.state, StateName::Streaming);
    assert_eq!(status.desired_subscriptions, 3);
    assert_eq!(status.upstream_subscriptions, 3);
    assert!(status.available_symbols.contains(&"GBPCAD".to_string()), "{:?}", status.available_symbols);
    assert!(status.available_symbols.contains(&"XAUUSD".to_string()));

    handle.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    fixture.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_subscribes_and_unsubscribes_live() {
    let fixture = Fixture::start(|_| {}).await;
    let (handle, task, mut probe) = spawn_session(fixture.session_config());
    handle.subscribe(vec!["EURUSD".into()]).await.unwrap();
    probe.wait_ticks(&["EURUSD"], 1).await;

    handle.subscribe(vec!["GBPUSD".into()]).await.unwrap();
    probe.wait_ticks(&["GBPUSD"], 2).await;
    wait_upstream(&fixture, &names(&["EURUSD", "GBPUSD"])).await;

    handle.unsubscribe(vec!["EURUSD".into()]).await.unwrap();
    wait_upstream(&fixture, &names(&["GBPUSD"])).await;
    probe.wait_until("status without EURUSD", session_support::WAIT, |_| {
        let status = handle.status().borrow().clone();
        status.desired_subscriptions == 1 && status.upstream_subscriptions == 1
    })
    .await;

    // After the unsubscribe is confirmed, no EURUSD tick reaches users.
    tokio::time::sleep(Duration::from_millis(100)).await;
    probe.drain();
    probe.reset_ticks();
    probe.wait_ticks(&["GBPUSD"], 5).await;
    assert_eq!(probe.ticks.get("EURUSD"), None);

    handle.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    fixture.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_symbol_fails_alone() {
    let fixture = Fixture::start(|_| {}).await;
    let (handle, task, mut probe) = spawn_session(fixture.session_config());

    handle.subscribe(vec!["EURUSD".into(), "BTCUSD".into()]).await.unwrap();
    probe.wait_until("a subscription failure", session_support::WAIT, |p| !p.failures.is_empty()).await;
    probe.wait_ticks(&["EURUSD"], 2).await;

    assert_eq!(probe.failures, vec![("BTCUSD".to_string(), "SYMBOL_NOT_FOUND".to_string())]);
    assert_eq!(handle.status().borrow().desired_subscriptions, 1);

    // Not retried on the next connection.
    handle.reconnect("test").await.unwrap();
    probe.wait_state(StateName::Streaming).await;
    probe.reset_ticks();
    probe.wait_ticks(&["EURUSD"], 2).await;
    assert_eq!(probe.failures.len(), 1);

    handle.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    fixture.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_unsubscribes_and_closes() {
    let fixture = Fixture::start(|_| {}).await;
    let journal = fixture.dir.path().join("journal.jsonl");
    let mut config = fixture.session_config();
    config.journal = Some(journal.clone());
    let (handle, task, mut probe) = spawn_session(config);
    handle.subscribe(vec!["EURUSD".into(), "AUDUSD".into()]).await.unwrap();
    probe.wait_ticks(&["EURUSD", "AUDUSD"], 2).await;

    handle.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("driver ends").unwrap().unwrap();
    probe.drain();

    assert_eq!(probe.path().last(), Some(&StateName::Disconnected));
    wait_upstream(&fixture, &names(&[])).await;
    let stats = fixture.sim.stats();
    assert_eq!(stats.requests_by_type.get("ProtoOAUnsubscribeSpotsReq"), Some(&1), "{:?}", stats.requests_by_type);
    eventually("the simulator saw the connection close", || fixture.sim.stats().connections_current == 0).await;

    // The journal holds every input with its time, in the FSM's format, and replays cleanly.
    let text = std::fs::read_to_string(&journal).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() > 5, "{} journal lines", lines.len());
    assert_eq!(lines[0]["format"], tickgate::fsm::journal::FORMAT);
    assert_eq!(lines[1]["input"], "Start");
    assert!(lines.iter().any(|l| l["input"] == "TransportUp"));
    assert!(lines[1..].iter().all(|l| l["time"].as_u64().is_some()));
    assert_eq!(lines.last().unwrap()["to"], "Disconnected");
    let file = std::io::BufReader::new(std::fs::File::open(&journal).unwrap());
    let replayed = tickgate::fsm::replay::replay(file).expect("journal replays identically");
    assert_eq!(replayed.timeline.len(), lines.len() - 1);

    fixture.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_idle_connection_open() {
    // The simulator drops a client that sends nothing for 400 ms. Heartbeats every 100 ms keep
    // the connection open, even with no subscription and so no other request.
    let fixture = Fixture::start(|sim| sim.idle_timeout = Duration::from_millis(400)).await;
    let (handle, task, mut probe) = spawn_session(fixture.session_config());
    probe.wait_state(StateName::Streaming).await;

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    probe.drain();

    assert_eq!(probe.path(), vec![StateName::Connecting, StateName::Authenticating, StateName::Streaming]);
    let stats = fixture.sim.stats();
    assert_eq!(stats.connections_total, 1);
    assert!(stats.requests_by_type.get("ProtoHeartbeatEvent").copied().unwrap_or(0) >= 8, "{:?}", stats.requests_by_type);

    handle.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    fixture.sim.shutdown().await;
}

#[tokio::test]
async fn invalid_config_ends_task_with_error() {
    let fixture = Fixture::start(|_| {}).await;
    let mut config = fixture.session_config();
    config.client_secret.clear();

    let (_handle, task) = session::spawn(config);
    let error = task.await.unwrap().unwrap_err().to_string();

    assert!(error.contains("CTRADER_CLIENT_SECRET"), "{error}");
    fixture.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_names_host() {
    let fixture = Fixture::start(|_| {}).await;
    let mut config = fixture.session_config();
    config.ca_file = None;
    let (handle, task, mut probe) = spawn_session(config);

    probe
        .wait_until("backoff for the untrusted certificate", session_support::WAIT, |p| {
            p.statuses.iter().any(|s| s.state == StateName::Backoff && s.reason.is_some())
        })
        .await;

    let reason = probe.statuses.iter().find_map(|s| s.reason.clone()).unwrap();
    assert!(reason.contains("localhost"), "{reason}");
    assert!(reason.contains("--ca-file"), "{reason}");
    assert_eq!(fixture.sim.stats().connections_total, 0, "no TLS session was established");
    handle.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    fixture.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_config_trusts_in_memory_ca() {
    let fixture = Fixture::start(|_| {}).await;
    let mut config = tickgate::session::SessionConfig::for_simulator(&fixture.sim);
    config.fsm = session_support::fast_fsm();
    config.fsm.has_refresh_token = true;
    assert_eq!(config.ca_file, None);
    let (handle, task, mut probe) = spawn_session(config);

    handle.subscribe(vec!["EURUSD".into()]).await.unwrap();
    probe.wait_ticks(&["EURUSD"], 2).await;

    handle.shutdown().await.unwrap();
    task.await.unwrap().unwrap();
    fixture.sim.shutdown().await;
}
