//! The simulator over real TLS on 127.0.0.1, driven by the crate's own codec.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

use tickgate::protocol::pb;
use tickgate::protocol::{tickdata, trendbar, ApiError, FrameCodec, FrameError, Message};
use tickgate::simulator::{client_config, Fault, SimulatorConfig, SimulatorHandle, Stats};

/// Long enough for any reply on a loaded 2-core machine; only failing tests wait this long.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a test waits to conclude that something does not arrive.
const QUIET: Duration = Duration::from_millis(400);

fn test_config() -> SimulatorConfig {
    SimulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tick_rate: 40.0,
        heartbeat_interval: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..SimulatorConfig::default()
    }
}

async fn start(config: SimulatorConfig) -> SimulatorHandle {
    SimulatorHandle::start(config).await.expect("simulator starts")
}

struct Client {
    transport: Framed<TlsStream<TcpStream>, FrameCodec>,
    /// Messages received while waiting for a particular response.
    pending: VecDeque<Message>,
    next_id: u64,
    account_id: i64,
}

fn connector(sim: &SimulatorHandle) -> TlsConnector {
    TlsConnector::from(Arc::new(client_config(sim.ca_pem()).expect("client config")))
}

async fn connect(sim: &SimulatorHandle) -> Client {
    let tcp = TcpStream::connect(sim.addr()).await.expect("tcp connect");
    let name = rustls::pki_types::ServerName::try_from(sim.server_name().to_string()).unwrap();
    let tls = timeout(REPLY_TIMEOUT, connector(sim).connect(name, tcp)).await.expect("handshake in time").expect("handshake");
    Client { transport: Framed::new(tls, FrameCodec::default()), pending: VecDeque::new(), next_id: 0, account_id: sim.config().account_id }
}

impl Client {
    async fn send(&mut self, message: Message) -> String {
        self.next_id += 1;
        let id = format!("m{}", self.next_id);
        self.transport.send(message.encode(Some(id.clone()))).await.expect("send");
        id
    }

    /// Reads the next frame, or `None` when nothing arrives within `wait`.
    async fn read_frame(&mut self, wait: Duration) -> Option<Result<pb::ProtoMessage, FrameError>> {
        match timeout(wait, self.transport.next()).await {
            Ok(Some(frame)) => Some(frame),
            Ok(None) => panic!("connection closed while waiting for a frame"),
            Err(_) => None,
        }
    }

    /// Sends a request and returns the response carrying its clientMsgId, keeping other
    /// messages for [`Client::next_event`].
    async fn request(&mut self, message: Message) -> Message {
        let id = self.send(message).await;
        loop {
            let frame = self.read_frame(REPLY_TIMEOUT).await.expect("a response in time").expect("a valid frame");
            let message = Message::decode(&frame).expect("a valid payload");
            if frame.client_msg_id.as_deref() == Some(id.as_str()) {
                return message;
            }
            self.pending.push_back(message);
        }
    }

    /// Sends all requests before reading any response, so they reach the server within
    /// milliseconds, and returns the responses in request order.
    async fn pipeline(&mut self, messages: Vec<Message>) -> Vec<Message> {
        let mut ids = Vec::new();
        for message in messages {
            ids.push(self.send(message).await);
        }
        let mut responses: Vec<Option<Message>> = vec![None; ids.len()];
        while responses.iter().any(Option::is_none) {
            let frame = self.read_frame(REPLY_TIMEOUT).await.expect("a response in time").expect("a valid frame");
            let message = Message::decode(&frame).expect("a valid payload");
            match ids.iter().position(|id| frame.client_msg_id.as_deref() == Some(id.as_str())) {
                Some(index) => responses[index] = Some(message),
                None => self.pending.push_back(message),
            }
        }
        responses.into_iter().flatten().collect()
    }

    async fn request_error(&mut self, message: Message) -> ApiError {
        let response = self.request(message).await;
        ApiError::from_message(&response).unwrap_or_else(|| panic!("expected an error, got {response:?}"))
    }

    /// Returns the next pushed message, or `None` when nothing arrives within `wait`.
    async fn next_event(&mut self, wait: Duration) -> Option<Message> {
        if let Some(message) = self.pending.pop_front() {
            return Some(message);
        }
        let frame = self.read_frame(wait).await?.expect("a valid frame");
        Some(Message::decode(&frame).expect("a valid payload"))
    }

    async fn next_spot(&mut self, wait: Duration) -> Option<pb::ProtoOaSpotEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Message::SpotEvent(event) => return Some(event),
                _ => continue,
            }
        }
    }

    /// Waits until the server closes the connection; returns the read error if it was not clean.
    async fn closed(&mut self, wait: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match timeout(left, self.transport.next()).await {
                Err(_) => panic!("connection still open after {wait:?}"),
                Ok(None) => return Ok(()),
                Ok(Some(Err(error))) => return Err(error.to_string()),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    async fn app_auth(&mut self) {
        let request = pb::ProtoOaApplicationAuthReq {
            client_id: tickgate::simulator::DEMO_CLIENT_ID.into(),
            client_secret: tickgate::simulator::DEMO_CLIENT_SECRET.into(),
            ..Default::default()
        };
        let response = self.request(Message::ApplicationAuthReq(request)).await;
        assert_eq!(response, Message::ApplicationAuthRes);
    }

    fn account_auth_request(&self, token: &str) -> Message {
        Message::AccountAuthReq(pb::ProtoOaAccountAuthReq {
            ctid_trader_account_id: self.account_id,
            access_token: token.into(),
            ..Default::default()
        })
    }

    async fn authorise(&mut self, sim: &SimulatorHandle) {
        self.app_auth().await;
        let token = sim.current_tokens().0;
        let response = self.request(self.account_auth_request(&token)).await;
        assert!(matches!(response, Message::AccountAuthRes(_)), "{response:?}");
    }

    async fn subscribe(&mut self, symbol_ids: Vec<i64>) -> Message {
        let request = pb::ProtoOaSubscribeSpotsReq {
            ctid_trader_account_id: self.account_id,
            symbol_id: symbol_ids,
            subscribe_to_spot_timestamp: Some(true),
            ..Default::default()
        };
        self.request(Message::SubscribeSpotsReq(request)).await
    }

    fn trendbars_request(&self, period: pb::ProtoOaTrendbarPeriod, from: Option<i64>, to: Option<i64>, count: Option<u32>) -> Message {
        Message::GetTrendbarsReq(pb::ProtoOaGetTrendbarsReq {
            ctid_trader_account_id: self.account_id,
            from_timestamp: from,
            to_timestamp: to,
            period: period as i32,
            symbol_id: 1,
            count,
            ..Default::default()
        })
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Sends one HTTP/1.1 request to the control endpoint and returns the status and body.
async fn http(sim: &SimulatorHandle, method: &str, path: &str, body: &str) -> (u16, String) {
    let addr = sim.control_addr().expect("control endpoint configured");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    timeout(REPLY_TIMEOUT, stream.read_to_string(&mut response)).await.unwrap().unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("an HTTP status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

// ---- Authentication ----

#[tokio::test]
async fn auth_rejects_bad_credentials() {
    let sim = start(test_config()).await;
    let mut client = connect(&sim).await;

    let error = client.request_error(Message::VersionReq).await;
    assert_eq!(error.code, "CH_CLIENT_NOT_AUTHENTICATED");

    let wrong_secret = pb::ProtoOaApplicationAuthReq {
        client_id: tickgate::simulator::DEMO_CLIENT_ID.into(),
        client_secret: "wrong".into(),
        ..Default::default()
    };
    let error = client.request_error(Message::ApplicationAuthReq(wrong_secret)).await;
    assert_eq!(error.code, "CH_CLIENT_AUTH_FAILURE");

    client.app_auth().await;
    let again = pb::ProtoOaApplicationAuthReq {
        client_id: tickgate::simulator::DEMO_CLIENT_ID.into(),
        client_secret: tickgate::simulator::DEMO_CLIENT_SECRET.into(),
        ..Default::default()
    };
    let error = client.request_error(Message::ApplicationAuthReq(again)).await;
    assert_eq!(error.code, "CH_CLIENT_ALREADY_AUTHENTICATED");

    let error = client.request_error(client.account_auth_request("not-the-token")).await;
    assert_eq!(error.code, "CH_ACCESS_TOKEN_INVALID");
    assert!(error.is_token_expired());

    let wrong_account = Message::AccountAuthReq(pb::ProtoOaAccountAuthReq {
        ctid_trader_account_id: 1,
        access_token: sim.current_tokens().0,
        ..Default::default()
    });
    let error = client.request_error(wrong_account).await;
    assert_eq!(error.code, "CH_CTID_TRADER_ACCOUNT_NOT_FOUND");

    let symbols = Message::SymbolsListReq(pb::ProtoOaSymbolsListReq { ctid_trader_account_id: client.account_id, ..Default::default() });
    let error = client.request_error(symbols).await;
    assert_eq!(error.code, "ACCOUNT_NOT_AUTHORIZED");

    sim.shutdown().await;
}

#[tokio::test]
async fn auth_accepts_demo_credentials() {
    let sim = start(test_config()).await;
    let mut client = connect(&sim).await;
    client.authorise(&sim).await;

    let Message::VersionRes(version) = client.request(Message::VersionReq).await else { panic!("expected VersionRes") };
    assert!(version.version.starts_with("tickgate-simulator"), "{}", version.version);

    let error = client.request_error(client.account_auth_request(&sim.current_tokens().0)).await;
    assert_eq!(error.code, "ALREADY_LOGGED_IN");

    let stats = sim.stats();
    assert_eq!(stats.connections_current, 1);
    assert_eq!(stats.concurrent_per_account.get(&client.account_id), Some(&1));
    assert_eq!(stats.requests_by_type.get("ProtoOAApplicationAuthReq"), Some(&1));
    sim.shutdown().await;
}

#[tokio::test]
async fn account_list_by_access_token() {
    let sim = start(test_config()).await;
    let mut client = connect(&sim).await;
    client.app_auth().await;

    let request = pb::ProtoOaGetAccountListByAccessTokenReq { access_token: sim.current_tokens().0, ..Default::default() };
    let Message::GetAccountListRes(list) = client.request(Message::GetAccountListReq(request)).await else { panic!("expected the account list") };
    assert_eq!(list.ctid_trader_account.len(), 1);
    assert_eq!(list.ctid_trader_account[0].ctid_trader_account_id, client.account_id as u64);
    assert_eq!(list.ctid_trader_account[0].is_live, Some(false));

    let bad = pb::ProtoOaGetAccountListByAccessTokenReq { access_token: "nope".into(), ..Default::default() };
    let error = client.request_error(Message::GetAccountListReq(bad)).await;
    assert_eq!(error.code, "CH_ACCESS_TOKEN_INVALID");
    sim.shutdown().await;
}

// ---- Tokens ----

#[tokio::test]
async fn token_expiry_and_refresh() {
    let sim = start(test_config()).await;
    let mut client = connect(&sim).await;
    client.app_auth().await;
    let (old_access, old_refresh) = sim.current_tokens();

    sim.inject(Fault::ExpireToken);
    let error = client.request_error(client.account_auth_request(&old_access)).await;
    assert_eq!(error.code, "CH_ACCESS_TOKEN_INVALID");
    assert_eq!(error.description, "Access token expired");

    let refresh = Message::RefreshTokenReq(pb::ProtoOaRefreshTokenReq { refresh_token: old_refresh.clone(), ..Default::default() });
    let Message::RefreshTokenRes(tokens) = client.request(refresh.clone()).await else { panic!("expected RefreshTokenRes") };
    assert_ne!(tokens.access_token, old_access);
    assert_ne!(tokens.refresh_token, old_refresh);
    assert_eq!(tokens.token_type, "bearer");
    assert!(tokens.expires_in > 0);

    // The old refresh token is spent.
    let error = client.request_error(refresh).await;
    assert_eq!(error.code, "CH_ACCESS_TOKEN_INVALID");

    let error = client.request_error(client.account_auth_request(&old_access)).await;
    assert_eq!(error.code, "CH_ACCESS_TOKEN_INVALID");
    let response = client.request(client.account_auth_request(&tokens.access_token)).await;
    assert!(matches!(response, Message::AccountAuthRes(_)), "{response:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn token_lifetime_expires() {
    let sim = start(SimulatorConfig { access_token_ttl: Some(Duration::from_millis(200)), ..test_config() }).await;
    let mut client = connect(&sim).await;
    client.app_auth().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let error = client.request_error(client.account_auth_request(&sim.current_tokens().0)).await;
    assert_eq!(error.description, "Access token expired");
    sim.shutdown().await;
}

#[tokio::test]
async fn refresh_ends_sessions_of_old_token() {
    let sim = start(test_config()).await;
    let mut streaming = connect(&sim).await;
    streaming.authorise(&sim).await;

    let mut refresher = connect(&sim).await;
    refresher.app_auth().await;
    let refresh = pb::ProtoOaRefreshTokenReq { refresh_token: sim.current_tokens().1, ..Default::default() };
    assert!(matches!(refresher.request(Message::RefreshTokenReq(refresh)).await, Message::RefreshTokenRes(_)));

    let event = loop {
        match streaming.next_event(REPLY_TIMEOUT).await.expect("an invalidation event") {
            Message::AccountsTokenInvalidatedEvent(event) => break event,
            _ => continue,
        }
    };
    assert_eq!(event.ctid_trader_account_ids, vec![streaming.account_id]);
    let symbols = Message::SymbolsListReq(pb::ProtoOaSymbolsListReq { ctid_trader_account_id: streaming.account_id, ..Default::default() });
    assert_eq!(streaming.request_error(symbols).await.code, "ACCOUNT_NOT_AUTHORIZED");
    sim.shutdown().await;
}

// ---- Symbols ----

#[tokio::test]
async fn symbols_list_and_by_id() {
    let sim = start(test_config()).await;
    let mut client = connect(&sim).await;
    client.authorise(&sim).await;

    let list = Message::SymbolsListReq(pb::ProtoOaSymbolsListReq { ctid_trader_account_id: client.account_id, ..Default::default() });
    let Message::SymbolsListRes(list) = client.request(list).await else { panic!("expected SymbolsListRes") };
    assert!(list.symbol.len() >= 20, "{} symbols", list.symbol.len());
    let names: Vec<&str> = list.symbol.iter().filter_map(|s| s.symbol_name.as_deref()).collect();
    assert!(names.contains(&"EUR/USD"), "{names:?}");
    assert!(names.contains(&"XAUUSD.P"), "{names:?}");
    assert!(list.symbol.iter().all(|s| s.enabled == Some(true)));

    let by_id = Message::SymbolByIdReq(pb::ProtoOaSymbolByIdReq { ctid_trader_account_id: client.account_id, symbol_id: vec![1, 4, 41], ..Default::default() });
    let Message::SymbolByIdRes(full) = client.request(by_id).await else { panic!("expected SymbolByIdRes") };
    let shape: Vec<(i64, i32, i32)> = full.symbol.iter().map(|s| (s.symbol_id, s.digits, s.pip_position)).collect();
    assert_eq!(shape, vec![(1, 5, 4), (4, 3, 2), (41, 2, 1)]);

    let unknown = Message::SymbolByIdReq(pb::ProtoOaSymbolByIdReq { ctid_trader_account_id: client.account_id, symbol_id: vec![999_999], ..Default::default() });
    assert_eq!(client.request_error(unknown).await.code, "SYMBOL_NOT_FOUND");

    assert_eq!(sim.symbols().len(), list.symbol.len());
    assert!(sim.symbols().iter().any(|s| s.broker_name == "USD/JPY" && s.name == "USDJPY"));
    sim.shutdown().await;
}

// ---- Spots ----

#[tokio::test]
async fn spot_events_carry_changed_sides() {
    let sim = start(SimulatorConfig { tick_rate: 100.0, ..test_config() }).await;
    let mut client = connect(&sim).await;
    client.authorise(&sim).await;

    let response = client.subscribe(vec![1]).await;
    assert!(matches!(response, Message::SubscribeSpotsRes(_)), "{response:?}");

    let first = client.next_spot(REPLY_TIMEOUT).await.expect("the first spot event");
    assert_eq!(first.symbol_id, 1);
    assert!(first.bid.is_some(), "first event carries the bid: {first:?}");
    assert!(first.ask.is_some(), "first event carries the ask: {first:?}");
    let timestamp = first.timestamp.expect("a timestamp, because the subscription asked for one");
    assert!((timestamp - now_ms()).abs() < 5_000);

    let (mut bid, mut ask) = (first.bid.unwrap(), first.ask.unwrap());
    let mut one_sided = 0;
    for _ in 0..40 {
        let event = client.next_spot(REPLY_TIMEOUT).await.expect("a spot event");
        assert!(event.bid.is_some() || event.ask.is_some(), "an event without prices: {event:?}");
        if event.bid.is_none() || event.ask.is_none() {
            one_sided += 1;
        }
        assert_ne!(event.bid, Some(bid), "a bid that did not change was sent");
        assert_ne!(event.ask, Some(ask), "an ask that did not change was sent");
        bid = event.bid.unwrap_or(bid);
        ask = event.ask.unwrap_or(ask);
        assert!(ask > bid, "crossed book {bid} / {ask}");
    }
    assert!(one_sided > 0, "no one-sided event in 40");

    let stats = sim.stats();
    assert_eq!(stats.subscriptions.get("EURUSD"), Some(&1));
    assert!(stats.spot_events_sent >= 41);
    sim.shutdown().await;
}

#[tokio::test]
async fn late_subscriber_gets_no_stale_quotes() {
    let sim = start(SimulatorConfig { tick_rate: 200.0, ..test_config() }).await;
    let mut early = connect(&sim).await;
    early.authorise(&sim).await;
    assert!(matches!(early.subscribe(vec![1]).await, Message::SubscribeSpotsRes(_)));

    // The late client's quote queue fills while it is unsubscribed; none of that may leak out.
    let mut late = connect(&sim).await;
    late.authorise(&sim).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(late.subscribe(vec![1]).await, Message::SubscribeSpotsRes(_)));
    assert_eq!(sim.stats().subscriptions.get("EURUSD"), Some(&2));

    let first = late.next_spot(REPLY_TIMEOUT).await.expect("the first spot event");
    let (mut bid, mut ask) = (first.bid.expect("bid"), first.ask.expect("ask"));
    let mut late_books = vec![(bid, ask)];
    for _ in 0..20 {
        let event = late.next_spot(REPLY_TIMEOUT).await.expect("a spot event");
        assert_ne!(event.bid, Some(bid), "an unchanged bid was sent");
        assert_ne!(event.ask, Some(ask), "an unchanged ask was sent");
        bid = event.bid.unwrap_or(bid);
        ask = event.ask.unwrap_or(ask);
        late_books.push((bid, ask));
    }

    // The early client saw every book in order, so the late client's books must be one
    // contiguous run of them; a stale queued quote would break the run.
    let mut early_books: Vec<(u64, u64)> = Vec::new();
    let (mut early_bid, mut early_ask) = (0, 0);
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    while !early_books.ends_with(&late_books) && tokio::time::Instant::now() < deadline {
        let Some(event) = early.next_spot(Duration::from_millis(500)).await else { break };
        early_bid = event.bid.unwrap_or(early_bid);
        early_ask = event.ask.unwrap_or(early_ask);
        early_books.push((early_bid, early_ask));
    }
    assert!(early_books.ends_with(&late_books), "late books {late_books:?} are not a run of the early client's books");

    sim.shutdown().await;
}

#[tokio::test]
async fn subscribe_errors_and_unsubscribe() {
    let sim = start(test_config()).await;
    let mut client = connect(&sim).await;
    client.authorise(&sim).await;

    let error = ApiError::from_message(&client.subscribe(vec![424_242]).await).expect("an error");
    assert_eq!(error.code, "SYMBOL_NOT_FOUND");
    assert!(error.is_unknown_symbol());

    assert!(matches!(client.subscribe(vec![2]).await, Message::SubscribeSpotsRes(_)));
    let error = ApiError::from_message(&client.subscribe(vec![2]).await).expect("an error");
    assert!(error.is_already_subscribed(), "{error}");

    let unsubscribe = Message::UnsubscribeSpotsReq(pb::ProtoOaUnsubscribeSpotsReq { ctid_trader_account_id: client.account_id, symbol_id: vec![2], ..Default::default() });
    assert!(matches!(client.request(unsubscribe).await, Message::UnsubscribeSpotsRes(_)));
    assert!(sim.stats().subscriptions.is_empty());

    let live = Message::SubscribeLiveTrendbarReq(pb::ProtoOaSubscribeLiveTrendbarReq {
        ctid_trader_account_id: client.account_id,
        period: pb::ProtoOaTrendbarPeriod::M1 as i32,
        symbol_id: 2,
        ..Default::default()
    });
    assert_eq!(client.request_error(live).await.code, "NOT_SUBSCRIBED_TO_SPOTS");
    sim.shutdown().await;
}

#[tokio::test]
async fn live_trendbars_ride_on_spots() {
    let sim = start(SimulatorConfig { tick_rate: 50.0, ..test_config() }).await;
    let mut client = connect(&sim).await;
    client.authorise(&sim).await;
    assert!(matches!(client.subscribe(vec![3]).await, Message::SubscribeSpotsRes(_)));
    let live = Message::SubscribeLiveTrendbarReq(pb::ProtoOaSubscribeLiveTrendbarReq {
        ctid_trader_account_id: client.account_id,
        period: pb::ProtoOaTrendbarPeriod::M1 as i32,
        symbol_id: 3,
        ..Default::default()
    });
    assert!(matches!(client.request(live).await, Message::SubscribeLiveTrendbarRes(_)));

    let event = loop {
        let event = client.next_spot(REPLY_TIMEOUT).await.expect("a spot event");
        if !event.trendbar.is_empty() {
            break event;
        }
    };
    let bar = trendbar::decode(&event.trendbar[0], 3).expect("a valid bar");
    assert!(bar.low <= bar.close, "{bar:?}");
    assert!(bar.close <= bar.high, "{bar:?}");
    assert_eq!(bar.time_ms % 60_000, 0);
    sim.shutdown().await;
}

// ---- Heartbeats, idle timeout, rate limits, duplicates ----

#[tokio::test]
async fn server_sends_heartbeats() {
    let sim = start(SimulatorConfig { heartbeat_interval: Duration::from_millis(150), ..test_config() }).await;
    let mut client = connect(&sim).await;

    let mut heartbeats = 0;
    while heartbeats < 3 {
        let message = client.next_event(REPLY_TIMEOUT).await.expect("a heartbeat");
        assert_eq!(message, Message::Heartbeat);
        heartbeats += 1;
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn idle_client_is_disconnected() {
    let sim = start(SimulatorConfig { idle_timeout: Duration::from_millis(500), ..test_config() }).await;
    let mut idle = connect(&sim).await;
    let mut lively = connect(&sim).await;

    // The lively client sends a heartbeat every 150 ms and outlives the idle one.
    let started = tokio::time::Instant::now();
    let keepalive = async {
        for _ in 0..8 {
            lively.transport.send(Message::Heartbeat.encode(None)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        lively
    };
    let (closed, mut lively) = tokio::join!(idle.closed(REPLY_TIMEOUT), keepalive);
    assert!(closed.is_ok(), "idle close should be clean: {closed:?}");
    assert!(started.elapsed() >= Duration::from_millis(450));

    lively.app_auth().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn rate_limits_per_connection() {
    let sim = start(SimulatorConfig { rate_limit_per_s: 10, historical_rate_limit_per_s: 2, ..test_config() }).await;
    let mut client = connect(&sim).await;
    client.authorise(&sim).await;

    let responses = client.pipeline(vec![Message::VersionReq; 25]).await;
    let errors: Vec<ApiError> = responses.iter().filter_map(ApiError::from_message).collect();
    for error in &errors {
        assert_eq!(error.code, "REQUEST_FREQUENCY_EXCEEDED");
    }
    let accepted = responses.len() - errors.len();
    assert!(accepted <= 10, "{accepted} of 25 pipelined requests accepted against a limit of 10/s");
    assert!(accepted >= 8, "only {accepted} accepted; the 2 auth requests use at most 2 of the 10");

    // History requests have their own budget, which the ordinary ones above did not touch.
    let now = now_ms();
    let request = client.trendbars_request(pb::ProtoOaTrendbarPeriod::M5, Some(now - 3_600_000), Some(now), None);
    let responses = client.pipeline(vec![request; 3]).await;
    let limited: Vec<ApiError> = responses.iter().filter_map(ApiError::from_message).collect();
    assert_eq!(limited.len(), 1, "the third history request in a second is over the limit of 2: {limited:?}");
    assert!(limited[0].is_rate_limited(), "{}", limited[0]);
    sim.shutdown().await;
}

#[tokio::test]
async fn duplicate_account_connection_closed() {
    let sim = start(SimulatorConfig { duplicate_close_after: Duration::from_millis(300), ..test_config() }).await;
    let mut first = connect(&sim).await;
    first.authorise(&sim).await;
    let mut second = connect(&sim).await;
    second.authorise(&sim).await;

    assert_eq!(sim.stats().max_concurrent_per_account.get(&first.account_id), Some(&2));
    assert!(second.closed(REPLY_TIMEOUT).await.is_ok());

    // The first session keeps working.
    assert!(matches!(first.request(Message::VersionReq).await, Message::VersionRes(_)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sim.stats().concurrent_per_account.get(&first.account_id), Some(&1));
    sim.shutdown().await;
}

// ---- History ----

#[tokio::test]
async fn trendbars_follow_generated_prices() {
    let sim = start(test_config()).await;
    let mut client = connect(&sim).await;
    client.authorise(&sim).await;
    let now = now_ms();

    let request = client.trendbars_request(pb::ProtoOaTrendbarPeriod::M1, Some(now - 3_600_000), Some(now), None);
    let Message::GetTrendbarsRes(response) = client.request(request).await else { panic!("expected GetTrendbarsRes") };
    assert!(response.trendbar.len() >= 55, "{} M1 bars in an hour of 30 s history", response.trendbar.len());
    let bars: Vec<_> = response.trendbar.iter().map(|b| trendbar::decode(b, 5).expect("valid bar")).collect();
    assert!(bars.windows(2).all(|w| w[0].time_ms < w[1].time_ms), "bars oldest first");
    for bar in &bars {
        assert!(bar.low <= bar.open, "{bar:?}");
        assert!(bar.open <= bar.high, "{bar:?}");
        assert!(bar.low <= bar.close, "{bar:?}");
        assert!(bar.close <= bar.high, "{bar:?}");
        assert!(bar.time_ms >= now - 3_660_000, "bar before the range: {bar:?}");
        assert!(bar.time_ms <= now, "bar after the range: {bar:?}");
    }

    let counted = client.trendbars_request(pb::ProtoOaTrendbarPeriod::H1, None, Some(now), Some(5));
    let Message::GetTrendbarsRes(response) = client.request(counted).await else { panic!("expected GetTrendbarsRes") };
    assert_eq!(response.trendbar.len(), 5);

    // M1 allows 302 400 000 ms (3.5 days) per request.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let too_long = client.trendbars_request(pb::ProtoOaTrendbarPeriod::M1, Some(now - 302_400_001), Some(now), None);
    assert_eq!(client.request_error(too_long).await.code, "INCORRECT_BOUNDARIES");
    let backwards = client.trendbars_request(pb::ProtoOaTrendbarPeriod::M1, Some(now), Some(now - 1), None);
    assert_eq!(client.request_error(backwards).await.code, "INCORRECT_BOUNDARIES");
    sim.shutdown().await;
}

#[tokio::test]
async fn tick_data_is_delta_encoded() {
    let sim = start(test_config()).await;
    let mut client = connect(&sim).await;
    client.authorise(&sim).await;
    let now = now_ms();

    let request = Message::GetTickDataReq(pb::ProtoOaGetTickDataReq {
        ctid_trader_account_id: client.account_id,
        symbol_id: 4,
        r#type: pb::ProtoOaQuoteType::Bid as i32,
        from_timestamp: Some(now - 1_800_000),
        to_timestamp: Some(now),
        ..Default::default()
    });
    let Message::GetTickDataRes(response) = client.request(request).await else { panic!("expected GetTickDataRes") };
    assert!(!response.has_more);
    let ticks = tickdata::decode(&response.tick_data, 3).expect("valid tick data");
    assert!(ticks.len() >= 10, "{} ticks in 30 minutes", ticks.len());
    assert!(ticks.windows(2).all(|w| w[0].0 > w[1].0), "ticks newest first");
    for (time_ms, price) in &ticks {
        assert!(*time_ms >= now - 1_800_000, "tick before the range at {time_ms}");
        assert!(*time_ms <= now, "tick after the range at {time_ms}");
        assert!(price.raw > 10_000_000, "USDJPY price {price} is off by a scale");
    }
    sim.shutdown().await;
}

// ---- Faults ----

#[tokio::test]
async fn fault_drop_closes_cleanly() {
    let sim = start(test_config()).await;
    let mut client = connect(&sim).await;
    sim.inject(Fault::Drop);
    assert_eq!(client.closed(REPLY_TIMEOUT).await, Ok(()));
    assert_eq!(sim.stats().faults_injected, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_reset_aborts() {
    let sim = start(test_config()).await;
    let mut client = connect(&sim).await;
    sim.inject(Fault::Reset);
    let error = client.closed(REPLY_TIMEOUT).await.expect_err("a reset is not a clean close");
    assert!(error.to_lowercase().contains("reset") || error.contains("close_notify"), "{error}");
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_silence_until_resume() {
    let sim = start(SimulatorConfig { heartbeat_interval: Duration::from_millis(100), ..test_config() }).await;
    let mut client = connect(&sim).await;
    assert_eq!(client.next_event(REPLY_TIMEOUT).await, Some(Message::Heartbeat));

    sim.inject(Fault::Silence);
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.pending.clear();
    while client.next_event(Duration::from_millis(10)).await.is_some() {}
    let id = client.send(Message::VersionReq).await;
    assert_eq!(client.next_event(QUIET).await, None, "nothing, not even heartbeats, while silenced");

    sim.inject(Fault::Resume);
    let reply = loop {
        let frame = client.read_frame(REPLY_TIMEOUT).await.expect("a frame after resume").unwrap();
        if frame.client_msg_id.as_deref() == Some(id.as_str()) {
            break Message::decode(&frame).unwrap();
        }
    };
    let error = ApiError::from_message(&reply).expect("the request is answered after resume");
    assert_eq!(error.code, "CH_CLIENT_NOT_AUTHENTICATED");
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_stall_ticks_keeps_heartbeats() {
    let sim = start(SimulatorConfig { tick_rate: 50.0, heartbeat_interval: Duration::from_millis(100), ..test_config() }).await;
    let mut client = connect(&sim).await;
    client.authorise(&sim).await;
    assert!(matches!(client.subscribe(vec![5]).await, Message::SubscribeSpotsRes(_)));
    assert!(client.next_spot(REPLY_TIMEOUT).await.is_some());

    sim.inject(Fault::StallTicks);
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.pending.clear();
    while client.next_event(Duration::from_millis(10)).await.is_some() {}
    let mut heartbeats = 0;
    let deadline = tokio::time::Instant::now() + QUIET;
    while let Some(message) = client.next_event(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
        assert_eq!(message, Message::Heartbeat, "only heartbeats while ticks are stalled");
        heartbeats += 1;
    }
    assert!(heartbeats >= 2, "{heartbeats} heartbeats");

    sim.inject(Fault::Resume);
    assert!(client.next_spot(REPLY_TIMEOUT).await.is_some(), "spots resume");
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_stall_auth_once() {
    let sim = start(test_config()).await;
    let mut stalled = connect(&sim).await;
    sim.inject(Fault::StallAuth);
    let request = pb::ProtoOaApplicationAuthReq {
        client_id: tickgate::simulator::DEMO_CLIENT_ID.into(),
        client_secret: tickgate::simulator::DEMO_CLIENT_SECRET.into(),
        ..Default::default()
    };
    stalled.send(Message::ApplicationAuthReq(request)).await;
    assert_eq!(stalled.next_event(QUIET).await, None, "no auth reply");

    let mut next = connect(&sim).await;
    next.authorise(&sim).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_malformed_and_oversized_frames() {
    let sim = start(test_config()).await;
    let mut malformed = connect(&sim).await;
    sim.inject(Fault::MalformedFrame);
    let frame = malformed.read_frame(REPLY_TIMEOUT).await.expect("a frame");
    assert!(matches!(frame, Err(FrameError::Protobuf(_))), "{frame:?}");

    let mut oversized = connect(&sim).await;
    sim.inject(Fault::OversizedLength);
    let frame = oversized.read_frame(REPLY_TIMEOUT).await.expect("a frame");
    assert!(matches!(frame, Err(FrameError::Oversized { len: 4_294_967_295, .. })), "{frame:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_refuse_tls_until_resume() {
    let sim = start(test_config()).await;
    sim.inject(Fault::RefuseTls);

    let tcp = TcpStream::connect(sim.addr()).await.expect("tcp is still accepted");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let handshake = timeout(QUIET, connector(&sim).connect(name, tcp)).await;
    assert!(handshake.is_err(), "the handshake must not complete");

    sim.inject(Fault::Resume);
    let mut client = connect(&sim).await;
    client.app_auth().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_error_next_subscribe() {
    let sim = start(test_config()).await;
    let mut client = connect(&sim).await;
    client.authorise(&sim).await;

    sim.inject(Fault::ErrorNextSubscribe { code: "CH_SERVER_NOT_REACHABLE".into() });
    let error = ApiError::from_message(&client.subscribe(vec![1]).await).expect("an error");
    assert_eq!(error.code, "CH_SERVER_NOT_REACHABLE");
    assert!(matches!(client.subscribe(vec![1]).await, Message::SubscribeSpotsRes(_)));
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_disconnect_event_then_close() {
    let sim = start(test_config()).await;
    let mut client = connect(&sim).await;
    sim.inject(Fault::DisconnectEvent { reason: "blocked by administrator".into() });

    let message = client.next_event(REPLY_TIMEOUT).await.expect("the disconnect event");
    let Message::ClientDisconnectEvent(event) = message else { panic!("expected ClientDisconnectEvent, got {message:?}") };
    assert_eq!(event.reason.as_deref(), Some("blocked by administrator"));
    assert_eq!(client.closed(REPLY_TIMEOUT).await, Ok(()));
    sim.shutdown().await;
}

// ---- Control endpoint ----

#[tokio::test]
async fn control_endpoint_faults_and_stats() {
    let sim = start(SimulatorConfig { control: Some("127.0.0.1:0".parse().unwrap()), ..test_config() }).await;
    let mut client = connect(&sim).await;
    client.authorise(&sim).await;

    let (status, body) = http(&sim, "GET", "/stats", "").await;
    assert_eq!(status, 200, "{body}");
    let stats: Stats = serde_json::from_str(&body).expect("stats JSON");
    assert_eq!(stats.connections_current, 1);
    assert_eq!(stats.requests_by_type.get("ProtoOAAccountAuthReq"), Some(&1));

    let (status, body) = http(&sim, "POST", "/fault", r#"{"kind": "drop"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(client.closed(REPLY_TIMEOUT).await, Ok(()));

    let (status, _) = http(&sim, "POST", "/fault", r#"{"kind": "explode"}"#).await;
    assert!((400..500).contains(&status), "unknown fault kind gives a client error, got {status}");

    let (status, body) = http(&sim, "GET", "/symbols", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"XAUUSD.P\""), "{body}");
    assert_eq!(sim.stats().faults_injected, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn replay_streams_recorded_quotes() {
    let path = std::path::Path::new("/work/shared/data/ticks/USDJPY-2013-01-01-truefx.csv");
    if !path.exists() {
        panic!("tick sample {} is missing", path.display());
    }
    let sim = start(SimulatorConfig { replay: Some(path.into()), speed: 1_000.0, tick_rate: 0.0, ..test_config() }).await;
    let mut client = connect(&sim).await;
    client.authorise(&sim).await;
    assert!(matches!(client.subscribe(vec![4]).await, Message::SubscribeSpotsRes(_)));

    // USD/JPY traded near 86.8 on 2013-01-01, far from the random walk's start of 149.5.
    for _ in 0..5 {
        let event = client.next_spot(REPLY_TIMEOUT).await.expect("a replayed quote");
        let price = event.bid.or(event.ask).unwrap();
        assert!((8_500_000..8_800_000).contains(&price), "price {price} is not from the file");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn certificate_covers_loopback_address() {
    let sim = start(test_config()).await;
    let tcp = TcpStream::connect(sim.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector(&sim).connect(name, tcp).await;
    assert!(tls.is_ok(), "handshake against the IP address failed: {:?}", tls.err());

    // A name the certificate does not cover is rejected by the client.
    let tcp = TcpStream::connect(sim.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("demo.ctraderapi.com").unwrap();
    assert!(connector(&sim).connect(name, tcp).await.is_err());
    sim.shutdown().await;
}
