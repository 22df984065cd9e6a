//! End-to-end tests of the gateway: real WebSocket and HTTP clients over 127.0.0.1 against
//! `serve`, with the test playing the session driver through the real `DriverEnds` channels.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tickgate::fsm::StateName;
use tickgate::gateway::{serve, GatewayConfig};
use tickgate::protocol::{Price, Tick};
use tickgate::session::{Command, DriverEnds, SessionEvent, SessionHandle, SessionStatus, TransitionRecord};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upper bound for any single expected frame, command or response.
const WAIT: Duration = Duration::from_secs(10);

const SYMBOLS: [&str; 3] = ["EURUSD", "GBPUSD", "USDJPY"];

struct Gateway {
    addr: SocketAddr,
    ends: DriverEnds,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    async fn start(config: GatewayConfig) -> Gateway {
        Gateway::start_with_event_capacity(config, 8192).await
    }

    async fn start_with_event_capacity(config: GatewayConfig, event_capacity: usize) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (handle, ends): (SessionHandle, DriverEnds) = SessionHandle::channel(event_capacity);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, handle, config, async move {
            let _ = stop_rx.await;
        }));
        // An HTTP response means `serve` has run its setup, so the hub is reading events.
        let (code, _, _) = http(addr, "GET", "/style.css", &[]).await;
        assert_eq!(code, 200);
        Gateway { addr, ends, stop: Some(stop_tx), task }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Connects a client and reads its first `status` frame.
    async fn connect(&self) -> (Client, Value) {
        let (mut client, _) = tokio_tungstenite::connect_async(self.url()).await.unwrap();
        let status = next_frame(&mut client).await;
        assert_eq!(status["type"], "status", "first frame must be status: {status}");
        (client, status)
    }

    /// Publishes a status the way the driver does: the watch and the event stream.
    fn publish_status(&self, status: SessionStatus) {
        self.ends.status.send_replace(status.clone());
        self.ends.events.send(SessionEvent::Status(status)).unwrap();
    }

    fn publish_streaming(&self) {
        self.publish_status(status_of(StateName::Streaming));
        self.ends.events.send(SessionEvent::Ready { symbols: available() }).unwrap();
    }

    fn publish_tick(&self, symbol: &str, bid_raw: u64, ask_raw: u64) {
        self.ends.events.send(SessionEvent::Tick(tick(symbol, bid_raw, ask_raw))).unwrap();
    }

    async fn next_command(&mut self) -> Command {
        tokio::time::timeout(WAIT, self.ends.commands.recv())
            .await
            .expect("timed out waiting for a session command")
            .expect("command channel closed")
    }

    fn assert_no_command(&mut self) {
        if let Ok(command) = self.ends.commands.try_recv() {
            panic!("unexpected session command {command:?}");
        }
    }

    async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("serve did not return").unwrap()
    }
}

/// Production defaults with a short close timeout, so clients the test no longer reads do not
/// hold up shutdown for long.
fn test_config() -> GatewayConfig {
    GatewayConfig { close_timeout: Duration::from_millis(500), ..GatewayConfig::default() }
}

fn available() -> Arc<[String]> {
    SYMBOLS.iter().map(|symbol| symbol.to_string()).collect()
}

fn status_of(state: StateName) -> SessionStatus {
    let mut status = SessionStatus::initial();
    status.state = state;
    status.since_ms = 1_700_000_000_000;
    status.available_symbols = available();
    status
}

fn tick(symbol: &str, bid_raw: u64, ask_raw: u64) -> Tick {
    let now = chrono::Utc::now().timestamp_millis();
    Tick {
        symbol: Arc::from(symbol),
        bid: Price::new(bid_raw, 5),
        ask: Price::new(ask_raw, 5),
        server_time_ms: Some(now),
        received_at_ms: now,
    }
}

async fn next_message(client: &mut Client) -> Message {
    tokio::time::timeout(WAIT, client.next())
        .await
        .expect("timed out waiting for a frame")
        .expect("connection ended")
        .expect("connection failed")
}

async fn next_text(client: &mut Client) -> String {
    loop {
        match next_message(client).await {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn next_frame(client: &mut Client) -> Value {
    let text = next_text(client).await;
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("frame is not JSON ({err}): {text}"))
}

/// Reads frames until one of type `kind` arrives, skipping others (heartbeats, transitions).
async fn frame_of_type(client: &mut Client, kind: &str) -> Value {
    loop {
        let frame = next_frame(client).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

async fn send_json<S: AsyncRead + AsyncWrite + Unpin>(client: &mut WebSocketStream<S>, text: &str) {
    client.send(Message::text(text.to_string())).await.unwrap();
}

async fn subscribe(client: &mut Client, symbols: &[&str]) -> Value {
    let request = serde_json::json!({ "type": "subscribe", "symbols": symbols }).to_string();
    send_json(client, &request).await;
    frame_of_type(client, "subscribeResponse").await
}

/// Reads frames until the close frame and returns its code and reason.
async fn close_code<S: AsyncRead + AsyncWrite + Unpin>(client: &mut WebSocketStream<S>) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, client.next()).await.expect("timed out waiting for close") {
            Some(Ok(Message::Close(Some(frame)))) => return (u16::from(frame.code), frame.reason.to_string()),
            Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
            Some(Ok(_)) => continue,
            Some(Err(err)) => panic!("connection failed before the close frame: {err}"),
            None => panic!("connection ended without a close frame"),
        }
    }
}

/// Reads to the end of the connection, which also sends the reply to a close frame.
async fn finish<S: AsyncRead + AsyncWrite + Unpin>(client: &mut WebSocketStream<S>) {
    let drain = async { while let Some(Ok(_)) = client.next().await {} };
    tokio::time::timeout(WAIT, drain).await.expect("connection did not end");
}

/// Sends one HTTP/1.1 request and returns the status code, the headers and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();

    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.expect("http response timed out").unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("response has no header end");
    let code: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    (code, head.to_string(), body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

async fn health(addr: SocketAddr) -> (u16, Value) {
    let (code, _, body) = http(addr, "GET", "/health", &[]).await;
    (code, serde_json::from_str(&body).unwrap())
}

async fn metrics(addr: SocketAddr) -> String {
    let (code, head, body) = http(addr, "GET", "/metrics", &[]).await;
    assert_eq!(code, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body
}

fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until a metric sample has the expected value; counters are updated after each write.
async fn wait_for_metric(addr: SocketAddr, sample: &str, expected: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = metric_value(&metrics(addr).await, sample);
        if value == Some(expected) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{sample} stayed at {value:?}, expected {expected}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the gateway reports `count` connected clients.
async fn wait_for_clients(addr: SocketAddr, count: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = health(addr).await;
        if body["clients"] == count {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "client count stayed at {}, expected {count}", body["clients"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connect_sends_status_then_ready() {
    let gateway = Gateway::start(test_config()).await;

    let (mut early, status) = gateway.connect().await;
    assert_eq!(status["status"], "disconnected");
    assert_eq!(status["symbol"], "system");
    assert_eq!(status["availableSymbols"], serde_json::json!([]));

    gateway.publish_streaming();
    let status = frame_of_type(&mut early, "status").await;
    assert_eq!(status["status"], "connected");
    let ready = next_frame(&mut early).await;
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["availableSymbols"], serde_json::json!(SYMBOLS));

    let (mut late, status) = gateway.connect().await;
    assert_eq!(status["status"], "connected");
    assert_eq!(status["since"], 1_700_000_000_000i64);
    assert_eq!(status["availableSymbols"], serde_json::json!(SYMBOLS));
    let ready = next_frame(&mut late).await;
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["symbol"], "system");
    assert_eq!(ready["availableSymbols"], serde_json::json!(SYMBOLS));

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn ticks_reach_only_subscribers() {
    let mut gateway = Gateway::start(test_config()).await;
    let (mut euro, _) = gateway.connect().await;
    let (mut cable, _) = gateway.connect().await;
    gateway.publish_streaming();

    let response = subscribe(&mut euro, &["EURUSD"]).await;
    assert_eq!(response["symbols"], serde_json::json!(["EURUSD"]));
    assert_eq!(response["subscriptions"], serde_json::json!(["EURUSD"]));
    let response = subscribe(&mut cable, &["GBPUSD"]).await;
    assert_eq!(response["symbols"], serde_json::json!(["GBPUSD"]));
    assert!(matches!(gateway.next_command().await, Command::Subscribe(symbols) if symbols == ["EURUSD"]));
    assert!(matches!(gateway.next_command().await, Command::Subscribe(symbols) if symbols == ["GBPUSD"]));

    gateway.publish_tick("EURUSD", 108_567, 108_570);
    gateway.publish_tick("GBPUSD", 126_001, 126_010);

    let frame = loop {
        let text = next_text(&mut euro).await;
        if text.contains("\"tick\"") {
            break text;
        }
    };
    // Prices are exact JSON numbers at the symbol's digits, trailing zero kept.
    assert!(frame.contains(r#""symbol":"EURUSD","bid":1.08567,"ask":1.08570,"timestamp":"#), "{frame}");
    let tick: Value = serde_json::from_str(&frame).unwrap();
    assert!(tick["timestamp"].is_i64());

    // Queues are FIFO and the hub routes in event order, so GBPUSD arriving first at the
    // GBPUSD client proves the earlier EURUSD tick was not sent to it.
    let tick = frame_of_type(&mut cable, "tick").await;
    assert_eq!(tick["symbol"], "GBPUSD");
    assert_eq!(tick["bid"].as_f64(), Some(1.26001));

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn subscriptions_are_coalesced_upstream() {
    let mut gateway = Gateway::start(test_config()).await;
    gateway.publish_streaming();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(gateway.connect().await.0);
    }

    for client in &mut clients {
        subscribe(client, &["EURUSD"]).await;
    }
    assert!(matches!(gateway.next_command().await, Command::Subscribe(symbols) if symbols == ["EURUSD"]));
    // Every response is queued after the hub issued any command, so none is pending now.
    gateway.assert_no_command();

    // First client unsubscribes: others remain, so nothing goes upstream.
    send_json(&mut clients[0], r#"{"type":"unsubscribe","symbols":["EURUSD"]}"#).await;
    let response = frame_of_type(&mut clients[0], "unsubscribeResponse").await;
    assert_eq!(response["symbols"], serde_json::json!(["EURUSD"]));
    assert_eq!(response["subscriptions"], serde_json::json!([]));
    gateway.assert_no_command();

    // Second client disconnects: one subscriber remains.
    let mut second = clients.remove(1);
    second.close(None).await.unwrap();
    wait_for_clients(gateway.addr, 2).await;
    // The hub handles requests in order, so the GBPUSD subscribe below comes after the
    // disconnect. If the next command is that subscribe, the disconnect sent nothing upstream.
    subscribe(&mut clients[0], &["GBPUSD"]).await;
    assert!(matches!(gateway.next_command().await, Command::Subscribe(symbols) if symbols == ["GBPUSD"]));

    // Last EURUSD subscriber unsubscribes with the single-symbol form.
    send_json(&mut clients[1], r#"{"type":"unsubscribe","symbol":"EURUSD"}"#).await;
    frame_of_type(&mut clients[1], "unsubscribeResponse").await;
    assert!(matches!(gateway.next_command().await, Command::Unsubscribe(symbols) if symbols == ["EURUSD"]));

    // The last GBPUSD subscriber disconnects.
    let mut first = clients.remove(0);
    first.close(None).await.unwrap();
    assert!(matches!(gateway.next_command().await, Command::Unsubscribe(symbols) if symbols == ["GBPUSD"]));

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn status_frames_track_state_changes() {
    let gateway = Gateway::start(test_config()).await;
    let (mut client, _) = gateway.connect().await;
    gateway.publish_streaming();
    assert_eq!(frame_of_type(&mut client, "status").await["status"], "connected");
    frame_of_type(&mut client, "ready").await;

    // Streaming → Stale → Streaming.
    let mut stale = status_of(StateName::Stale);
    stale.since_ms = 1_700_000_000_500;
    stale.reason = Some("no tick for 30000 ms".into());
    gateway.publish_status(stale);
    let frame = frame_of_type(&mut client, "status").await;
    assert_eq!(frame["status"], "stale");
    assert_eq!(frame["since"], 1_700_000_000_500i64);
    assert_eq!(frame["reason"], "no tick for 30000 ms");
    assert!(frame.get("attempt").is_none(), "{frame}");

    gateway.publish_status(status_of(StateName::Streaming));
    let frame = frame_of_type(&mut client, "status").await;
    assert_eq!(frame["status"], "connected");
    assert!(frame.get("reason").is_none(), "{frame}");

    // Streaming → Backoff → Connecting → Authenticating → Streaming, with a ready at the end.
    let mut backoff = status_of(StateName::Backoff);
    backoff.attempt = 2;
    backoff.retry_in_ms = Some(2000);
    backoff.reason = Some("socket closed: connection reset".into());
    gateway.publish_status(backoff);
    let frame = frame_of_type(&mut client, "status").await;
    assert_eq!(frame["status"], "reconnecting");
    assert_eq!(frame["attempt"], 2);
    assert_eq!(frame["retryInMs"], 2000);
    assert_eq!(frame["reason"], "socket closed: connection reset");

    gateway.publish_status(status_of(StateName::Connecting));
    assert_eq!(frame_of_type(&mut client, "status").await["status"], "connecting");
    gateway.publish_status(status_of(StateName::Authenticating));
    assert_eq!(frame_of_type(&mut client, "status").await["status"], "authenticating");
    gateway.publish_streaming();
    assert_eq!(frame_of_type(&mut client, "status").await["status"], "connected");
    assert_eq!(next_frame(&mut client).await["type"], "ready");

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn transition_frames_and_history() {
    let config = GatewayConfig { transition_history: 100, ..test_config() };
    let gateway = Gateway::start(config).await;
    let (mut client, _) = gateway.connect().await;

    for n in 0..105 {
        let record = TransitionRecord {
            at_ms: 1_700_000_000_000 + n,
            from: StateName::Streaming,
            to: StateName::Stale,
            cause: format!("no tick #{n}"),
        };
        gateway.ends.events.send(SessionEvent::Transition(record)).unwrap();
    }
    let frame = frame_of_type(&mut client, "transition").await;
    assert_eq!(frame["from"], "Streaming");
    assert_eq!(frame["to"], "Stale");
    assert_eq!(frame["cause"], "no tick #0");
    assert_eq!(frame["at"], 1_700_000_000_000i64);

    // Reading the last frame makes sure the hub recorded all of them.
    loop {
        let frame = frame_of_type(&mut client, "transition").await;
        if frame["cause"] == "no tick #104" {
            break;
        }
    }
    let (code, _, body) = http(gateway.addr, "GET", "/api/transitions", &[]).await;
    assert_eq!(code, 200);
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 100);
    assert_eq!(list[0]["cause"], "no tick #5");
    assert_eq!(list[99]["cause"], "no tick #104");
    assert_eq!(list[99]["at"], 1_700_000_000_104i64);

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_error_and_client_stays() {
    let config = GatewayConfig { max_message_bytes: 256, max_subscriptions_per_client: 2, ..test_config() };
    let mut gateway = Gateway::start(config).await;
    let (mut client, _) = gateway.connect().await;
    gateway.publish_streaming();
    frame_of_type(&mut client, "ready").await;

    let oversized = format!(r#"{{"type":"subscribe","symbols":["{}"]}}"#, "A".repeat(300));
    // (message, expected code, text the message must contain, expected symbol)
    let cases: Vec<(String, &str, &str, &str)> = vec![
        ("{not json".into(), "INVALID_JSON", "invalid JSON", "system"),
        (r#"{"type":"history"}"#.into(), "UNKNOWN_TYPE", "\"history\"", "system"),
        (r#"{"symbols":["EURUSD"]}"#.into(), "INVALID_MESSAGE", "missing field \"type\"", "system"),
        (r#"{"type":42}"#.into(), "INVALID_MESSAGE", "a number", "system"),
        (r#"[1,2,3]"#.into(), "INVALID_MESSAGE", "an array", "system"),
        (r#"{"type":"subscribe"}"#.into(), "INVALID_MESSAGE", "names no symbol", "system"),
        (r#"{"type":"subscribe","symbols":"EURUSD"}"#.into(), "INVALID_MESSAGE", "expected an array", "system"),
        (r#"{"type":"subscribe","symbols":["EURUSD",7]}"#.into(), "INVALID_MESSAGE", "symbols[1]", "system"),
        (r#"{"type":"unsubscribe","symbol":true}"#.into(), "INVALID_MESSAGE", "a boolean", "system"),
        (r#"{"type":"subscribe","symbols":["EUR USD"]}"#.into(), "INVALID_SYMBOL", "\"EUR USD\"", "EUR USD"),
        (r#"{"type":"subscribe","symbol":"XAUXAG"}"#.into(), "SYMBOL_NOT_FOUND", "\"XAUXAG\"", "XAUXAG"),
        (oversized, "MESSAGE_TOO_LARGE", "over the limit of 256 bytes", "system"),
    ];
    for (message, code, needle, symbol) in cases {
        send_json(&mut client, &message).await;
        let error = frame_of_type(&mut client, "error").await;
        assert_eq!(error["code"], code, "for {message}: {error}");
        let text = error["message"].as_str().unwrap();
        assert!(text.contains(needle), "for {message}: {text:?} lacks {needle:?}");
        assert_eq!(error["symbol"], symbol, "for {message}: {error}");
    }

    // A binary frame gets an error frame, not silence.
    client.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let error = frame_of_type(&mut client, "error").await;
    assert_eq!(error["code"], "INVALID_MESSAGE");
    assert!(error["message"].as_str().unwrap().contains("binary"), "{error}");

    // The limit is two symbols. A request listing more is refused whole.
    send_json(&mut client, r#"{"type":"subscribe","symbols":["EURUSD","GBPUSD","USDJPY"]}"#).await;
    let error = frame_of_type(&mut client, "error").await;
    assert_eq!(error["code"], "TOO_MANY_SUBSCRIPTIONS");
    assert_eq!(error["symbol"], "system");
    assert!(error["message"].as_str().unwrap().contains("lists 3 symbols"), "{error}");

    let response = subscribe(&mut client, &["EURUSD", "GBPUSD"]).await;
    assert_eq!(response["symbols"], serde_json::json!(["EURUSD", "GBPUSD"]));
    assert!(matches!(gateway.next_command().await, Command::Subscribe(symbols) if symbols == ["EURUSD", "GBPUSD"]));

    // A third symbol on top of two is refused by name.
    send_json(&mut client, r#"{"type":"subscribe","symbols":["USDJPY"]}"#).await;
    let error = frame_of_type(&mut client, "error").await;
    assert_eq!(error["code"], "TOO_MANY_SUBSCRIPTIONS");
    assert_eq!(error["symbol"], "USDJPY");
    let response = frame_of_type(&mut client, "subscribeResponse").await;
    assert_eq!(response["symbols"], serde_json::json!([]));
    assert_eq!(response["subscriptions"], serde_json::json!(["EURUSD", "GBPUSD"]));
    gateway.assert_no_command();

    // An upstream rejection reaches the subscriber and drops the subscription.
    gateway.ends.events.send(SessionEvent::SubscriptionFailed {
        symbol: "GBPUSD".into(),
        code: "SYMBOL_NOT_FOUND".into(),
        message: "symbol is disabled".into(),
    })
    .unwrap();
    let error = frame_of_type(&mut client, "error").await;
    assert_eq!(error["code"], "SUBSCRIPTION_FAILED");
    assert_eq!(error["symbol"], "GBPUSD");
    assert!(error["message"].as_str().unwrap().contains("symbol is disabled"), "{error}");
    assert!(matches!(gateway.next_command().await, Command::Unsubscribe(symbols) if symbols == ["GBPUSD"]));

    // Still connected and working: ping, and ticks on the remaining subscription.
    send_json(&mut client, r#"{"type":"ping"}"#).await;
    let pong = frame_of_type(&mut client, "pong").await;
    assert!(pong["timestamp"].is_i64());
    gateway.publish_tick("GBPUSD", 126_001, 126_010);
    gateway.publish_tick("EURUSD", 108_567, 108_570);
    let tick = frame_of_type(&mut client, "tick").await;
    assert_eq!(tick["symbol"], "EURUSD");

    let text = metrics(gateway.addr).await;
    assert_eq!(metric_value(&text, "tickgate_client_errors_total{code=\"INVALID_JSON\"}"), Some(1.0));
    assert_eq!(metric_value(&text, "tickgate_client_errors_total{code=\"SUBSCRIPTION_FAILED\"}"), Some(1.0));

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn slow_client_closed_while_fast_continues() {
    let config = GatewayConfig {
        client_queue_capacity: 16,
        socket_send_buffer_bytes: Some(4096),
        close_timeout: Duration::from_secs(10),
        ..test_config()
    };
    let mut gateway = Gateway::start(config).await;
    gateway.publish_streaming();

    // The slow client has a small receive window and stops reading after subscribing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gateway.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(gateway.url(), stream).await.unwrap();
    let response = {
        send_json(&mut slow, r#"{"type":"subscribe","symbols":["EURUSD"]}"#).await;
        loop {
            let text = match slow.next().await.unwrap().unwrap() {
                Message::Text(text) => text,
                _ => continue,
            };
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "subscribeResponse" {
                break frame;
            }
        }
    };
    assert_eq!(response["symbols"], serde_json::json!(["EURUSD"]));

    let (mut fast, _) = gateway.connect().await;
    subscribe(&mut fast, &["EURUSD"]).await;
    assert!(matches!(gateway.next_command().await, Command::Subscribe(symbols) if symbols == ["EURUSD"]));

    // Push ticks in batches smaller than the queue, which the fast client reads in full before
    // the next batch, until the gateway drops the slow client.
    const BATCH: usize = 8;
    let mut sent = 0u64;
    let mut evicted = false;
    for batch in 0..1000 {
        for _ in 0..BATCH {
            sent += 1;
            gateway.publish_tick("EURUSD", 108_000 + sent, 108_010 + sent);
        }
        for _ in 0..BATCH {
            frame_of_type(&mut fast, "tick").await;
        }
        if batch % 5 == 4 {
            let text = metrics(gateway.addr).await;
            if metric_value(&text, "tickgate_slow_client_disconnects_total") == Some(1.0) {
                evicted = true;
                break;
            }
        }
    }
    assert!(evicted, "slow client was never closed after {sent} ticks");

    // The slow client finds its backlog, then close 4002 with a reason.
    let (code, reason) = close_code(&mut slow).await;
    assert_eq!(code, 4002);
    assert!(reason.contains("queue full"), "{reason}");
    finish(&mut slow).await;

    // The fast client keeps receiving, and the symbol stays subscribed upstream.
    gateway.publish_tick("EURUSD", 109_999, 110_001);
    loop {
        let tick = frame_of_type(&mut fast, "tick").await;
        if tick["bid"].as_f64() == Some(1.09999) {
            break;
        }
    }
    gateway.assert_no_command();

    // Not reading the close frame would hold shutdown for the whole close timeout.
    drop(fast);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn client_token_is_required_when_set() {
    let config = GatewayConfig { client_token: Some("s3cret-token".into()), ..test_config() };
    let gateway = Gateway::start(config).await;

    let (mut anonymous, _) = tokio_tungstenite::connect_async(gateway.url()).await.unwrap();
    let (code, reason) = close_code(&mut anonymous).await;
    assert_eq!(code, 4001);
    assert!(reason.contains("token"), "{reason}");

    let (mut wrong, _) = tokio_tungstenite::connect_async(format!("{}?token=guess", gateway.url())).await.unwrap();
    assert_eq!(close_code(&mut wrong).await.0, 4001);

    let (mut by_query, _) = tokio_tungstenite::connect_async(format!("{}?token=s3cret-token", gateway.url())).await.unwrap();
    assert_eq!(next_frame(&mut by_query).await["type"], "status");

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = gateway.url().into_client_request().unwrap();
    request.headers_mut().insert("Authorization", "Bearer s3cret-token".parse().unwrap());
    let (mut by_header, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(next_frame(&mut by_header).await["type"], "status");

    let text = metrics(gateway.addr).await;
    assert_eq!(metric_value(&text, "tickgate_clients_rejected_total{reason=\"token\"}"), Some(2.0));

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn client_limit_closes_extra_clients() {
    let config = GatewayConfig { max_clients: 1, ..test_config() };
    let gateway = Gateway::start(config).await;

    let (_first, _) = gateway.connect().await;
    let (mut second, _) = tokio_tungstenite::connect_async(gateway.url()).await.unwrap();
    let (code, reason) = close_code(&mut second).await;
    assert_eq!(code, 1013);
    assert!(reason.contains("limit of 1 clients"), "{reason}");

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn thousand_clients_receive_ticks() {
    const CLIENTS: usize = 1000;
    const TICKS: u64 = 3;
    let mut gateway = Gateway::start(test_config()).await;
    gateway.publish_streaming();

    let url = gateway.url();
    let mut clients: Vec<Client> = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS / 100 {
        let batch = (0..100).map(|_| {
            let url = url.clone();
            async move {
                let config = WebSocketConfig::default().read_buffer_size(4096);
                let (mut client, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await.unwrap();
                let response = subscribe(&mut client, &["EURUSD"]).await;
                assert_eq!(response["symbols"], serde_json::json!(["EURUSD"]));
                client
            }
        });
        clients.extend(futures_util::future::join_all(batch).await);
    }
    assert!(matches!(gateway.next_command().await, Command::Subscribe(symbols) if symbols == ["EURUSD"]));
    gateway.assert_no_command();

    for n in 0..TICKS {
        gateway.publish_tick("EURUSD", 108_000 + n, 108_010 + n);
    }
    let received = clients.iter_mut().map(|client| async move {
        let mut bids = Vec::new();
        while bids.len() < TICKS as usize {
            bids.push(frame_of_type(client, "tick").await["bid"].as_f64().unwrap());
        }
        bids
    });
    let all = tokio::time::timeout(Duration::from_secs(60), futures_util::future::join_all(received))
        .await
        .expect("1000 clients did not all receive their ticks within 60 s");
    for bids in all {
        assert_eq!(bids, vec![1.08, 1.08001, 1.08002]);
    }

    let text = metrics(gateway.addr).await;
    assert_eq!(metric_value(&text, "tickgate_clients"), Some(CLIENTS as f64));
    assert_eq!(metric_value(&text, "tickgate_ticks_received_total"), Some(TICKS as f64));
    wait_for_metric(gateway.addr, "tickgate_ticks_sent_total", (TICKS as usize * CLIENTS) as f64).await;
    drop(clients);

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_reports_state_and_fields() {
    let gateway = Gateway::start(test_config()).await;
    let (mut client, _) = gateway.connect().await;

    let (code, body) = health(gateway.addr).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["status"], "disconnected");
    assert_eq!(body["state"], "Disconnected");

    let mut backoff = status_of(StateName::Backoff);
    backoff.attempt = 4;
    backoff.retry_in_ms = Some(8000);
    backoff.reason = Some("tls handshake failed".into());
    gateway.publish_status(backoff);
    let (code, body) = health(gateway.addr).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["status"], "reconnecting");
    assert_eq!(body["attempt"], 4);
    assert_eq!(body["retryInMs"], 8000);
    assert_eq!(body["reason"], "tls handshake failed");

    let mut streaming = status_of(StateName::Streaming);
    streaming.upstream_subscriptions = 1;
    streaming.desired_subscriptions = 2;
    gateway.publish_status(streaming);
    subscribe(&mut client, &["EURUSD", "GBPUSD"]).await;
    gateway.publish_tick("EURUSD", 108_567, 108_570);
    frame_of_type(&mut client, "tick").await;

    let (code, body) = health(gateway.addr).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "connected");
    assert_eq!(body["since"], 1_700_000_000_000i64);
    assert_eq!(body["attempt"], 0);
    assert_eq!(body["upstreamSubscriptions"], 1);
    assert_eq!(body["desiredSubscriptions"], 2);
    assert_eq!(body["clients"], 1);
    let age = body["lastTickAgeMs"]["EURUSD"].as_i64().expect("EURUSD has a tick age");
    assert!((0..60_000).contains(&age), "{body}");
    assert!(body["lastTickAgeMs"]["GBPUSD"].is_null(), "{body}");

    gateway.publish_status(status_of(StateName::Stale));
    let (code, body) = health(gateway.addr).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["status"], "stale");

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_expose_prometheus_text() {
    let gateway = Gateway::start(test_config()).await;
    let (mut client, _) = gateway.connect().await;
    for (from, to) in [
        (StateName::Disconnected, StateName::Connecting),
        (StateName::Connecting, StateName::Backoff),
        (StateName::Backoff, StateName::Connecting),
        (StateName::Connecting, StateName::Authenticating),
        (StateName::Authenticating, StateName::Streaming),
    ] {
        let record = TransitionRecord { at_ms: 1, from, to, cause: "test".into() };
        gateway.ends.events.send(SessionEvent::Transition(record)).unwrap();
    }
    gateway.publish_streaming();
    subscribe(&mut client, &["EURUSD"]).await;
    gateway.publish_tick("EURUSD", 108_567, 108_570);
    gateway.publish_tick("GBPUSD", 126_001, 126_010);
    frame_of_type(&mut client, "tick").await;

    let text = metrics(gateway.addr).await;
    for state in StateName::ALL {
        let expected = if state == StateName::Streaming { 1.0 } else { 0.0 };
        let sample = format!("tickgate_state{{state=\"{}\"}}", state.as_str());
        assert_eq!(metric_value(&text, &sample), Some(expected), "{sample}");
    }
    assert!(text.contains("# TYPE tickgate_state gauge\n"), "{text}");
    assert!(text.contains("# HELP tickgate_transitions_total "), "{text}");
    assert!(text.contains("# TYPE tickgate_tick_latency_seconds histogram\n"), "{text}");
    assert_eq!(metric_value(&text, "tickgate_transitions_total{from=\"Backoff\",to=\"Connecting\"}"), Some(1.0));
    assert_eq!(metric_value(&text, "tickgate_transitions_total{from=\"Disconnected\",to=\"Connecting\"}"), Some(1.0));
    assert_eq!(metric_value(&text, "tickgate_reconnect_attempts_total"), Some(1.0));
    assert_eq!(metric_value(&text, "tickgate_ticks_received_total"), Some(2.0));
    wait_for_metric(gateway.addr, "tickgate_ticks_sent_total", 1.0).await;
    wait_for_metric(gateway.addr, "tickgate_tick_latency_seconds_count", 1.0).await;
    let text = metrics(gateway.addr).await;
    assert_eq!(metric_value(&text, "tickgate_clients"), Some(1.0));
    assert_eq!(metric_value(&text, "tickgate_slow_client_disconnects_total"), Some(0.0));
    assert_eq!(metric_value(&text, "tickgate_tick_latency_seconds_count"), Some(1.0));
    assert_eq!(metric_value(&text, "tickgate_tick_latency_seconds_bucket{le=\"+Inf\"}"), Some(1.0));

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn admin_reconnect_from_loopback() {
    let mut gateway = Gateway::start(test_config()).await;

    let (code, _, body) = http(gateway.addr, "POST", "/admin/reconnect", &[]).await;
    assert_eq!(code, 202, "{body}");
    match gateway.next_command().await {
        Command::Reconnect { reason } => assert!(reason.contains("admin request from 127.0.0.1"), "{reason}"),
        other => panic!("expected Reconnect, got {other:?}"),
    }

    let (code, _, _) = http(gateway.addr, "GET", "/admin/reconnect", &[]).await;
    assert_eq!(code, 405);

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn admin_reconnect_needs_token_when_loopback_untrusted() {
    let config = GatewayConfig {
        client_token: Some("s3cret-token".into()),
        trust_loopback_admin: false,
        ..test_config()
    };
    let mut gateway = Gateway::start(config).await;

    let (code, _, body) = http(gateway.addr, "POST", "/admin/reconnect", &[]).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("client token"), "{body}");
    let (code, _, _) = http(gateway.addr, "POST", "/admin/reconnect", &[("Authorization", "Bearer nope")]).await;
    assert_eq!(code, 403);
    gateway.assert_no_command();

    let (code, _, body) = http(gateway.addr, "POST", "/admin/reconnect", &[("Authorization", "Bearer s3cret-token")]).await;
    assert_eq!(code, 202, "{body}");
    assert!(matches!(gateway.next_command().await, Command::Reconnect { .. }));

    let (code, _, _) = http(gateway.addr, "POST", "/admin/reconnect?token=s3cret-token", &[]).await;
    assert_eq!(code, 202);
    assert!(matches!(gateway.next_command().await, Command::Reconnect { .. }));

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn dashboard_served_at_root() {
    let gateway = Gateway::start(test_config()).await;

    let (code, head, body) = http(gateway.addr, "GET", "/", &[]).await;
    assert_eq!(code, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/html"), "{head}");
    assert!(body.contains("<html"), "{body}");
    let (code, head, _) = http(gateway.addr, "GET", "/app.js", &[]).await;
    assert_eq!(code, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/javascript"), "{head}");
    let (code, head, _) = http(gateway.addr, "GET", "/style.css", &[]).await;
    assert_eq!(code, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/css"), "{head}");

    // A plain GET on /ws gets 426 Upgrade Required, and a WebSocket on / works like /ws.
    let (code, _, _) = http(gateway.addr, "GET", "/ws", &[]).await;
    assert_eq!(code, 426);
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{}/", gateway.addr)).await.unwrap();
    assert_eq!(next_frame(&mut client).await["type"], "status");

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn heartbeat_reaches_idle_clients() {
    let config = GatewayConfig { heartbeat_interval: Duration::from_millis(50), ..test_config() };
    let gateway = Gateway::start(config).await;
    let (mut client, _) = gateway.connect().await;

    let frame = frame_of_type(&mut client, "heartbeat").await;
    assert!(frame["timestamp"].is_i64(), "{frame}");
    assert_eq!(frame["status"], "disconnected");

    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001() {
    let gateway = Gateway::start(test_config()).await;
    let (mut first, _) = gateway.connect().await;
    let (mut second, _) = gateway.connect().await;
    let addr = gateway.addr;

    let stopping = tokio::spawn(gateway.shutdown());
    assert_eq!(close_code(&mut first).await.0, 1001);
    assert_eq!(close_code(&mut second).await.0, 1001);
    finish(&mut first).await;
    finish(&mut second).await;
    stopping.await.unwrap().unwrap();

    // Nothing listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn hub_lag_is_counted() {
    // A small event buffer that the test overruns: this runtime has one thread, so the hub
    // cannot read while the loop below publishes.
    let mut gateway = Gateway::start_with_event_capacity(test_config(), 16).await;
    let addr = gateway.addr;
    let (mut client, _) = gateway.connect().await;
    gateway.publish_streaming();
    subscribe(&mut client, &["EURUSD"]).await;
    assert!(matches!(gateway.next_command().await, Command::Subscribe(_)));

    for n in 0..1000 {
        gateway.publish_tick("EURUSD", 100_000 + n, 100_010 + n);
    }
    wait_for_metric(addr, "tickgate_hub_lagged_events_total", 984.0).await;

    // The hub goes on with the newest events: the last tick still arrives.
    loop {
        let tick = frame_of_type(&mut client, "tick").await;
        if tick["bid"].as_f64() == Some(1.00999) {
            break;
        }
    }
    drop(client);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_transport_message_closes_1009() {
    let config = GatewayConfig { max_message_bytes: 256, max_transport_message_bytes: 1024, ..test_config() };
    let gateway = Gateway::start(config).await;
    let (mut client, _) = gateway.connect().await;
    let (mut other, _) = gateway.connect().await;

    // Between the two limits: an error frame, and the client stays.
    send_json(&mut client, &format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(600))).await;
    assert_eq!(frame_of_type(&mut client, "error").await["code"], "MESSAGE_TOO_LARGE");

    // Over the transport limit: close 1009, because the bytes are never buffered.
    send_json(&mut client, &format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(4000))).await;
    let (code, reason) = close_code(&mut client).await;
    assert_eq!(code, 1009);
    assert!(reason.contains("limit of 1024 bytes"), "{reason}");

    // Other clients are unaffected.
    send_json(&mut other, r#"{"type":"ping"}"#).await;
    assert_eq!(frame_of_type(&mut other, "pong").await["type"], "pong");

    drop(other);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn serve_rejects_empty_token() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (handle, _ends) = SessionHandle::channel(16);
    let config = GatewayConfig { client_token: Some(String::new()), ..test_config() };
    let result = tokio::time::timeout(WAIT, serve(listener, handle, config, std::future::pending())).await;
    let error = result.expect("serve kept running with an empty token").unwrap_err();
    assert!(format!("{error:#}").contains("client token is empty"), "{error:#}");
}
