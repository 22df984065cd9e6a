//! One client connection: the request handlers, spot streaming, heartbeats, idle and
//! duplicate-session timers, rate limits and the faults that act on open connections.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio::time::{sleep_until, MissedTickBehavior};
use tokio_rustls::server::TlsStream;
use tokio_util::codec::Framed;
use tracing::{debug, info};

use super::faults::ConnectionFault;
use super::market::{max_trendbar_span_ms, now_ms, Quote};
use super::state::Shared;
use super::symbols::{normalise, spec, SYMBOLS};
use crate::protocol::pb::{self, ProtoOaTrendbarPeriod as Period};
use crate::protocol::{tickdata, trendbar, FrameCodec, FrameError, Message};

/// Largest `to_timestamp` the protocol accepts in history requests (Unix ms).
const MAX_HISTORY_TIMESTAMP_MS: i64 = 2_147_483_646_000;

/// Largest span of one `GetTickDataReq`: one week.
const MAX_TICK_SPAN_MS: i64 = 604_800_000;

/// Bars and ticks per history response before `hasMore` is set.
const MAX_BARS_PER_RESPONSE: usize = 5_000;
const MAX_TICKS_PER_RESPONSE: usize = 10_000;

/// How long a clean close may take before the socket is dropped anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

type Transport = Framed<TlsStream<TcpStream>, FrameCodec>;

/// The kind of close that ends a connection.
enum Close {
    /// TLS close_notify, then TCP FIN.
    Clean(String),
    /// TCP RST.
    Reset,
    /// The peer went away or the socket failed; nothing more can be sent.
    Gone(String),
}

/// The next step of the connection loop after an input.
enum Flow {
    Continue,
    Close(Close),
}

/// An accepted-request counter over the last second.
struct RateWindow {
    limit: u32,
    accepted: VecDeque<Instant>,
}

impl RateWindow {
    fn new(limit: u32) -> Self {
        Self { limit, accepted: VecDeque::new() }
    }

    /// Records a request and returns true, or returns false when the limit is reached.
    fn try_accept(&mut self, now: Instant) -> bool {
        while self.accepted.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
            self.accepted.pop_front();
        }
        if self.accepted.len() >= self.limit as usize {
            return false;
        }
        self.accepted.push_back(now);
        true
    }
}

/// One spot subscription on this connection.
struct Subscription {
    with_timestamp: bool,
    /// Book sequence of the last quote applied; older quotes still queued are skipped.
    sequence: u64,
    /// Sides last sent, so later events carry only the side that changed.
    last_bid: Option<u64>,
    last_ask: Option<u64>,
    /// Live trendbar periods, sent inside spot events.
    periods: BTreeSet<i32>,
}

/// An authorised account session and the token that opened it.
struct AccountSession {
    account_id: i64,
    access_token: String,
}

struct Connection {
    id: u64,
    peer: SocketAddr,
    shared: Arc<Shared>,
    transport: Transport,
    app_authorised: bool,
    session: Option<AccountSession>,
    subscriptions: HashMap<i64, Subscription>,
    ordinary_rate: RateWindow,
    historical_rate: RateWindow,
    last_received: Instant,
    duplicate_deadline: Option<Instant>,
}

/// Serves one TLS connection until it closes, then releases its sessions and subscriptions.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
    id: u64,
    faults: broadcast::Receiver<ConnectionFault>,
    shutdown: watch::Receiver<bool>,
) {
    let config = &shared.config;
    let mut connection = Connection {
        id,
        peer,
        transport: Framed::new(stream, FrameCodec::default()),
        app_authorised: false,
        session: None,
        subscriptions: HashMap::new(),
        ordinary_rate: RateWindow::new(config.rate_limit_per_s),
        historical_rate: RateWindow::new(config.historical_rate_limit_per_s),
        last_received: Instant::now(),
        duplicate_deadline: None,
        shared: shared.clone(),
    };

    let close = connection.run(faults, shutdown).await;
    connection.end_session();
    connection.unsubscribe_all();

    match close {
        Close::Clean(reason) => {
            info!(connection = id, %peer, %reason, "closing connection");
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.transport.get_mut().shutdown()).await;
        }
        Close::Reset => {
            info!(connection = id, %peer, "resetting connection");
            let tcp = connection.transport.get_ref().get_ref().0;
            if let Err(error) = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO)) {
                debug!(connection = id, %error, "failed to set SO_LINGER 0; the close may be clean instead of a reset");
            }
        }
        Close::Gone(reason) => info!(connection = id, %peer, %reason, "connection ended"),
    }
    shared.connection_closed(id);
}

impl Connection {
    async fn run(&mut self, mut faults: broadcast::Receiver<ConnectionFault>, mut shutdown: watch::Receiver<bool>) -> Close {
        let config = self.shared.config.clone();
        let mut silence = self.shared.faults.silence.subscribe();
        let mut quotes = self.shared.market.subscribe_quotes();
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + config.heartbeat_interval, config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let far_future = Instant::now() + Duration::from_secs(86_400 * 365);

        loop {
            let silenced = *silence.borrow_and_update();
            let idle_deadline = self.last_received + config.idle_timeout;
            let duplicate_deadline = self.duplicate_deadline;

            let flow = tokio::select! {
                _ = shutdown.changed() => Flow::Close(Close::Clean("simulator shutting down".into())),

                changed = silence.changed() => {
                    if changed.is_ok() && !*silence.borrow() {
                        // Time spent silenced does not count against the client, and quotes
                        // queued meanwhile are old, so streaming restarts from the next change.
                        self.last_received = Instant::now();
                        heartbeat.reset();
                        quotes = quotes.resubscribe();
                    }
                    Flow::Continue
                }

                fault = faults.recv() => match fault {
                    Ok(fault) => self.apply_fault(fault).await,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        debug!(connection = self.id, missed, "connection missed fault notifications");
                        Flow::Continue
                    }
                    Err(broadcast::error::RecvError::Closed) => Flow::Close(Close::Clean("simulator stopped".into())),
                },

                frame = self.transport.next(), if !silenced => self.on_frame(frame).await,

                quote = quotes.recv(), if !silenced && !self.subscriptions.is_empty() => match quote {
                    Ok(quote) => self.on_quote(quote).await,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        debug!(connection = self.id, missed, "connection fell behind the price feed; skipped quotes");
                        Flow::Continue
                    }
                    Err(broadcast::error::RecvError::Closed) => Flow::Continue,
                },

                _ = heartbeat.tick(), if !silenced => self.send(Message::Heartbeat, None).await,

                _ = sleep_until(idle_deadline.into()), if !silenced => {
                    Flow::Close(Close::Clean(format!("client sent nothing for {:?}", config.idle_timeout)))
                }

                _ = sleep_until(duplicate_deadline.unwrap_or(far_future).into()), if duplicate_deadline.is_some() && !silenced => {
                    Flow::Close(Close::Clean("another connection holds a session for the same account".into()))
                }
            };

            if let Flow::Close(close) = flow {
                return close;
            }
        }
    }

    // ---- Sending ----

    async fn send(&mut self, message: Message, client_msg_id: Option<String>) -> Flow {
        match self.transport.send(message.encode(client_msg_id)).await {
            Ok(()) => Flow::Continue,
            Err(error) => Flow::Close(Close::Gone(format!("failed to send {}: {error}", message.name()))),
        }
    }

    async fn send_oa_error(&mut self, code: &str, description: String, client_msg_id: Option<String>) -> Flow {
        debug!(connection = self.id, code, %description, "sending error response");
        let error = pb::ProtoOaErrorRes {
            ctid_trader_account_id: self.session.as_ref().map(|s| s.account_id),
            error_code: code.to_string(),
            description: Some(description),
            ..Default::default()
        };
        self.send(Message::OaErrorRes(error), client_msg_id).await
    }

    async fn send_common_error(&mut self, code: &str, description: String, client_msg_id: Option<String>) -> Flow {
        debug!(connection = self.id, code, %description, "sending error response");
        let error = pb::ProtoErrorRes { error_code: code.to_string(), description: Some(description), ..Default::default() };
        self.send(Message::ErrorRes(error), client_msg_id).await
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> Flow {
        let stream = self.transport.get_mut();
        let result = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        }
        .await;
        match result {
            Ok(()) => Flow::Continue,
            Err(error) => Flow::Close(Close::Gone(format!("failed to send raw bytes: {error}"))),
        }
    }

    // ---- Faults ----

    async fn apply_fault(&mut self, fault: ConnectionFault) -> Flow {
        match fault {
            ConnectionFault::Drop => Flow::Close(Close::Clean("drop fault".into())),
            ConnectionFault::Reset => Flow::Close(Close::Reset),
            ConnectionFault::MalformedFrame => {
                // A 5-byte body of 0xFF is not a protobuf message: wire type 7 does not exist.
                self.send_raw(&[0, 0, 0, 5, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]).await
            }
            ConnectionFault::OversizedLength => self.send_raw(&[0xFF, 0xFF, 0xFF, 0xFF, 0x08, 0x33]).await,
            ConnectionFault::DisconnectEvent { reason } => {
                let event = pb::ProtoOaClientDisconnectEvent { reason: Some(reason), ..Default::default() };
                if let Flow::Close(close) = self.send(Message::ClientDisconnectEvent(event), None).await {
                    return Flow::Close(close);
                }
                Flow::Close(Close::Clean("disconnect_event fault".into()))
            }
            ConnectionFault::TokenRefreshed { old_token } => {
                let Some(session) = self.session.as_ref().filter(|s| s.access_token == old_token) else {
                    return Flow::Continue;
                };
                let account_id = session.account_id;
                info!(connection = self.id, account = account_id, "account session ended because its access token was refreshed");
                self.end_session();
                self.unsubscribe_all();
                let event = pb::ProtoOaAccountsTokenInvalidatedEvent {
                    ctid_trader_account_ids: vec![account_id],
                    reason: Some("Access token was refreshed".into()),
                    ..Default::default()
                };
                self.send(Message::AccountsTokenInvalidatedEvent(event), None).await
            }
        }
    }

    // ---- Spot events ----

    async fn on_quote(&mut self, quote: Quote) -> Flow {
        let Some(subscription) = self.subscriptions.get_mut(&quote.symbol_id) else { return Flow::Continue };
        if quote.sequence <= subscription.sequence {
            return Flow::Continue;
        }
        subscription.sequence = quote.sequence;

        // Stalled quotes are consumed unsent, so the first event after resume is a current price.
        if self.shared.faults.ticks_stalled() {
            return Flow::Continue;
        }

        // cTrader sends only the side that changed.
        let bid = (subscription.last_bid != Some(quote.bid)).then_some(quote.bid);
        let ask = (subscription.last_ask != Some(quote.ask)).then_some(quote.ask);
        if bid.is_none() && ask.is_none() {
            return Flow::Continue;
        }
        self.send_spot(quote.symbol_id, bid, ask).await
    }

    /// Sends a spot event with the given sides and records them as the last sent.
    async fn send_spot(&mut self, symbol_id: i64, bid: Option<u64>, ask: Option<u64>) -> Flow {
        let Some(account_id) = self.session.as_ref().map(|s| s.account_id) else { return Flow::Continue };
        let Some(subscription) = self.subscriptions.get_mut(&symbol_id) else { return Flow::Continue };
        if bid.is_some() {
            subscription.last_bid = bid;
        }
        if ask.is_some() {
            subscription.last_ask = ask;
        }

        let mut trendbars = Vec::new();
        for &period in &subscription.periods {
            let Ok(period) = Period::try_from(period) else { continue };
            if let Some(bar) = self.shared.market.forming_bar(symbol_id, period) {
                trendbars.extend(trendbar::encode(&bar, period).ok());
            }
        }

        let event = pb::ProtoOaSpotEvent {
            ctid_trader_account_id: account_id,
            symbol_id,
            bid,
            ask,
            trendbar: trendbars,
            timestamp: subscription.with_timestamp.then(now_ms),
            ..Default::default()
        };
        tracing::trace!(connection = self.id, symbol_id, ?bid, ?ask, "spot event");
        self.shared.spot_events_sent.fetch_add(1, Ordering::Relaxed);
        self.send(Message::SpotEvent(event), None).await
    }

    // ---- Requests ----

    async fn on_frame(&mut self, frame: Option<Result<pb::ProtoMessage, FrameError>>) -> Flow {
        let frame = match frame {
            None => return Flow::Close(Close::Gone("client closed the connection".into())),
            Some(Err(FrameError::Oversized { len, max })) => {
                self.send_common_error("FRAME_TOO_LONG", format!("frame of {len} bytes exceeds the maximum of {max} bytes"), None).await;
                return Flow::Close(Close::Clean(format!("client sent a frame of {len} bytes")));
            }
            Some(Err(FrameError::Protobuf(error))) => {
                self.send_common_error("INVALID_REQUEST", format!("frame is not a valid ProtoMessage: {error}"), None).await;
                return Flow::Close(Close::Clean(format!("client sent an invalid frame: {error}")));
            }
            Some(Err(FrameError::Io(error))) => return Flow::Close(Close::Gone(format!("read failed: {error}"))),
            Some(Ok(frame)) => frame,
        };
        self.last_received = Instant::now();

        let client_msg_id = frame.client_msg_id.clone();
        let message = match Message::decode(&frame) {
            Ok(message) => message,
            Err(error) => {
                self.shared.count_request("invalid");
                return self.send_common_error("INVALID_REQUEST", error.to_string(), client_msg_id).await;
            }
        };
        self.shared.count_request(message.name());

        if matches!(message, Message::Heartbeat) {
            return Flow::Continue;
        }

        // Rate limits are per connection: one budget for history requests, one for the rest.
        let historical = matches!(message, Message::GetTrendbarsReq(_) | Message::GetTickDataReq(_));
        let now = Instant::now();
        let accepted = if historical { self.historical_rate.try_accept(now) } else { self.ordinary_rate.try_accept(now) };
        if !accepted {
            let limit = if historical { self.historical_rate.limit } else { self.ordinary_rate.limit };
            return self
                .send_oa_error("REQUEST_FREQUENCY_EXCEEDED", format!("You have reached the rate limit of {limit} requests per second"), client_msg_id)
                .await;
        }

        if !self.app_authorised && !matches!(message, Message::ApplicationAuthReq(_)) {
            return self
                .send_oa_error("CH_CLIENT_NOT_AUTHENTICATED", format!("{} sent before ProtoOAApplicationAuthReq", message.name()), client_msg_id)
                .await;
        }

        self.dispatch(message, client_msg_id).await
    }

    async fn dispatch(&mut self, message: Message, id: Option<String>) -> Flow {
        match message {
            Message::ApplicationAuthReq(request) => self.application_auth(request, id).await,
            Message::VersionReq => {
                let version = pb::ProtoOaVersionRes { version: format!("tickgate-simulator {}", env!("CARGO_PKG_VERSION")), ..Default::default() };
                self.send(Message::VersionRes(version), id).await
            }
            Message::GetAccountListReq(request) => self.account_list(request, id).await,
            Message::RefreshTokenReq(request) => self.refresh_token(request, id).await,
            Message::AccountAuthReq(request) => self.account_auth(request, id).await,
            Message::SymbolsListReq(request) => self.symbols_list(request, id).await,
            Message::SymbolByIdReq(request) => self.symbol_by_id(request, id).await,
            Message::SubscribeSpotsReq(request) => self.subscribe_spots(request, id).await,
            Message::UnsubscribeSpotsReq(request) => self.unsubscribe_spots(request, id).await,
            Message::SubscribeLiveTrendbarReq(request) => {
                self.live_trendbar(request.ctid_trader_account_id, request.symbol_id, request.period, true, id).await
            }
            Message::UnsubscribeLiveTrendbarReq(request) => {
                self.live_trendbar(request.ctid_trader_account_id, request.symbol_id, request.period, false, id).await
            }
            Message::GetTrendbarsReq(request) => self.trendbars(request, id).await,
            Message::GetTickDataReq(request) => self.tick_data(request, id).await,
            other => {
                let description = format!("payload type {} ({}) is not a request this server handles", other.payload_type(), other.name());
                self.send_common_error("UNSUPPORTED_MESSAGE", description, id).await
            }
        }
    }

    async fn application_auth(&mut self, request: pb::ProtoOaApplicationAuthReq, id: Option<String>) -> Flow {
        if self.shared.faults.take_stall_auth() {
            info!(connection = self.id, "withholding the application auth reply (stall_auth fault)");
            return Flow::Continue;
        }
        if self.app_authorised {
            return self.send_oa_error("CH_CLIENT_ALREADY_AUTHENTICATED", "Open API application is already authorized".into(), id).await;
        }

        let config = &self.shared.config;
        if request.client_id != config.client_id || request.client_secret != config.client_secret {
            info!(connection = self.id, peer = %self.peer, result = "CH_CLIENT_AUTH_FAILURE", "application auth rejected");
            return self.send_oa_error("CH_CLIENT_AUTH_FAILURE", "clientId or clientSecret is incorrect".into(), id).await;
        }

        self.app_authorised = true;
        info!(connection = self.id, peer = %self.peer, result = "ok", "application authorised");
        self.send(Message::ApplicationAuthRes, id).await
    }

    async fn account_list(&mut self, request: pb::ProtoOaGetAccountListByAccessTokenReq, id: Option<String>) -> Flow {
        if let Err(problem) = self.shared.check_access_token(&request.access_token) {
            return self.send_oa_error("CH_ACCESS_TOKEN_INVALID", problem.description().into(), id).await;
        }
        let account = pb::ProtoOaCtidTraderAccount {
            ctid_trader_account_id: self.shared.config.account_id as u64,
            is_live: Some(false),
            trader_login: Some(5_100_000 + self.shared.config.account_id.rem_euclid(100_000)),
            last_closing_deal_timestamp: None,
            last_balance_update_timestamp: Some(now_ms() - 86_400_000),
            broker_title_short: Some("Tickgate Demo".into()),
        };
        let response = pb::ProtoOaGetAccountListByAccessTokenRes {
            access_token: request.access_token,
            permission_scope: Some(pb::ProtoOaClientPermissionScope::ScopeTrade as i32),
            ctid_trader_account: vec![account],
            ..Default::default()
        };
        self.send(Message::GetAccountListRes(response), id).await
    }

    async fn refresh_token(&mut self, request: pb::ProtoOaRefreshTokenReq, id: Option<String>) -> Flow {
        let Some((access_token, refresh_token, expires_in, old_access)) = self.shared.refresh_tokens(&request.refresh_token) else {
            info!(connection = self.id, result = "CH_ACCESS_TOKEN_INVALID", "token refresh rejected");
            return self.send_oa_error("CH_ACCESS_TOKEN_INVALID", "Invalid or already used refresh token".into(), id).await;
        };
        info!(connection = self.id, expires_in, "access token refreshed");

        // Sessions opened with the old token end, as cTrader ends them after a refresh.
        let _ = self.shared.faults.connections.send(ConnectionFault::TokenRefreshed { old_token: old_access });

        let response = pb::ProtoOaRefreshTokenRes { access_token, token_type: "bearer".into(), expires_in, refresh_token, ..Default::default() };
        self.send(Message::RefreshTokenRes(response), id).await
    }

    async fn account_auth(&mut self, request: pb::ProtoOaAccountAuthReq, id: Option<String>) -> Flow {
        if self.shared.faults.take_stall_auth() {
            info!(connection = self.id, "withholding the account auth reply (stall_auth fault)");
            return Flow::Continue;
        }
        let account_id = request.ctid_trader_account_id;

        if let Err(problem) = self.shared.check_access_token(&request.access_token) {
            info!(connection = self.id, account = account_id, result = "CH_ACCESS_TOKEN_INVALID", reason = problem.description(), "account auth rejected");
            return self.send_oa_error("CH_ACCESS_TOKEN_INVALID", problem.description().into(), id).await;
        }
        if account_id != self.shared.config.account_id {
            info!(connection = self.id, account = account_id, result = "CH_CTID_TRADER_ACCOUNT_NOT_FOUND", "account auth rejected");
            return self.send_oa_error("CH_CTID_TRADER_ACCOUNT_NOT_FOUND", format!("Trading account {account_id} not found for this access token"), id).await;
        }
        if self.session.as_ref().is_some_and(|s| s.account_id == account_id) {
            return self.send_oa_error("ALREADY_LOGGED_IN", format!("Trading account {account_id} is already authorized"), id).await;
        }

        self.session = Some(AccountSession { account_id, access_token: request.access_token });
        let sessions = self.shared.session_opened(account_id, self.id);
        info!(connection = self.id, account = account_id, sessions, result = "ok", "account authorised");
        if sessions > 1 {
            let after = self.shared.config.duplicate_close_after;
            info!(connection = self.id, account = account_id, ?after, "duplicate session for the account; this connection will be closed");
            self.duplicate_deadline = Some(Instant::now() + after);
        }

        let response = pb::ProtoOaAccountAuthRes { ctid_trader_account_id: account_id, ..Default::default() };
        self.send(Message::AccountAuthRes(response), id).await
    }

    /// Returns the error to send when `account_id` has no session on this connection.
    fn account_error(&self, account_id: i64) -> Option<(&'static str, String)> {
        match &self.session {
            Some(session) if session.account_id == account_id => None,
            _ => Some(("ACCOUNT_NOT_AUTHORIZED", format!("Trading account {account_id} is not authorized on this connection"))),
        }
    }

    async fn symbols_list(&mut self, request: pb::ProtoOaSymbolsListReq, id: Option<String>) -> Flow {
        if let Some((code, description)) = self.account_error(request.ctid_trader_account_id) {
            return self.send_oa_error(code, description, id).await;
        }
        let response = pb::ProtoOaSymbolsListRes {
            ctid_trader_account_id: request.ctid_trader_account_id,
            symbol: SYMBOLS.iter().map(|s| s.light()).collect(),
            ..Default::default()
        };
        self.send(Message::SymbolsListRes(response), id).await
    }

    async fn symbol_by_id(&mut self, request: pb::ProtoOaSymbolByIdReq, id: Option<String>) -> Flow {
        if let Some((code, description)) = self.account_error(request.ctid_trader_account_id) {
            return self.send_oa_error(code, description, id).await;
        }
        let missing: Vec<i64> = request.symbol_id.iter().copied().filter(|s| spec(*s).is_none()).collect();
        if !missing.is_empty() {
            return self.send_oa_error("SYMBOL_NOT_FOUND", format!("Symbols not found: {missing:?}"), id).await;
        }
        let response = pb::ProtoOaSymbolByIdRes {
            ctid_trader_account_id: request.ctid_trader_account_id,
            symbol: request.symbol_id.iter().filter_map(|s| spec(*s)).map(|s| s.full()).collect(),
            ..Default::default()
        };
        self.send(Message::SymbolByIdRes(response), id).await
    }

    async fn subscribe_spots(&mut self, request: pb::ProtoOaSubscribeSpotsReq, id: Option<String>) -> Flow {
        let account_id = request.ctid_trader_account_id;
        if let Some((code, description)) = self.account_error(account_id) {
            return self.send_oa_error(code, description, id).await;
        }
        if let Some(code) = self.shared.faults.take_error_next_subscribe() {
            info!(connection = self.id, %code, "failing this subscription (error_next_subscribe fault)");
            return self.send_oa_error(&code, format!("Subscription failed with injected error {code}"), id).await;
        }
        if let Some(unknown) = request.symbol_id.iter().find(|s| spec(**s).is_none()) {
            return self.send_oa_error("SYMBOL_NOT_FOUND", format!("Symbol {unknown} not found"), id).await;
        }
        if let Some(already) = request.symbol_id.iter().find(|s| self.subscriptions.contains_key(s)) {
            return self.send_oa_error("ALREADY_SUBSCRIBED", format!("Already subscribed to spots for symbol {already}"), id).await;
        }

        let with_timestamp = request.subscribe_to_spot_timestamp.unwrap_or(false);
        let mut symbol_ids: Vec<i64> = request.symbol_id.clone();
        symbol_ids.dedup();
        for &symbol_id in &symbol_ids {
            let subscription = Subscription { with_timestamp, sequence: 0, last_bid: None, last_ask: None, periods: BTreeSet::new() };
            self.subscriptions.insert(symbol_id, subscription);
            self.shared.market.add_subscriber(symbol_id);
        }
        let names: Vec<String> = symbol_ids.iter().filter_map(|s| spec(*s)).map(|s| normalise(s.broker_name)).collect();
        info!(connection = self.id, account = account_id, symbols = ?names, "subscribed to spots");

        let response = pb::ProtoOaSubscribeSpotsRes { ctid_trader_account_id: account_id, ..Default::default() };
        if let Flow::Close(close) = self.send(Message::SubscribeSpotsRes(response), id).await {
            return Flow::Close(close);
        }

        // After the response cTrader sends the current price with both sides, even when the
        // market is closed.
        for symbol_id in symbol_ids {
            let Some(quote) = self.shared.market.current(symbol_id) else { continue };
            if let Some(subscription) = self.subscriptions.get_mut(&symbol_id) {
                subscription.sequence = quote.sequence;
            }
            if let Flow::Close(close) = self.send_spot(symbol_id, Some(quote.bid), Some(quote.ask)).await {
                return Flow::Close(close);
            }
        }
        Flow::Continue
    }

    async fn unsubscribe_spots(&mut self, request: pb::ProtoOaUnsubscribeSpotsReq, id: Option<String>) -> Flow {
        let account_id = request.ctid_trader_account_id;
        if let Some((code, description)) = self.account_error(account_id) {
            return self.send_oa_error(code, description, id).await;
        }
        if let Some(missing) = request.symbol_id.iter().find(|s| !self.subscriptions.contains_key(s)) {
            return self.send_oa_error("NOT_SUBSCRIBED_TO_SPOTS", format!("Not subscribed to spots for symbol {missing}"), id).await;
        }
        for symbol_id in &request.symbol_id {
            if self.subscriptions.remove(symbol_id).is_some() {
                self.shared.market.remove_subscriber(*symbol_id);
            }
        }
        info!(connection = self.id, account = account_id, symbols = ?request.symbol_id, "unsubscribed from spots");
        let response = pb::ProtoOaUnsubscribeSpotsRes { ctid_trader_account_id: account_id, ..Default::default() };
        self.send(Message::UnsubscribeSpotsRes(response), id).await
    }

    async fn live_trendbar(&mut self, account_id: i64, symbol_id: i64, period: i32, subscribe: bool, id: Option<String>) -> Flow {
        if let Some((code, description)) = self.account_error(account_id) {
            return self.send_oa_error(code, description, id).await;
        }
        if Period::try_from(period).is_err() {
            return self.send_oa_error("INVALID_REQUEST", format!("Unknown trendbar period {period}"), id).await;
        }
        if spec(symbol_id).is_none() {
            return self.send_oa_error("SYMBOL_NOT_FOUND", format!("Symbol {symbol_id} not found"), id).await;
        }
        let Some(subscription) = self.subscriptions.get_mut(&symbol_id) else {
            return self.send_oa_error("NOT_SUBSCRIBED_TO_SPOTS", format!("Subscribe to spots for symbol {symbol_id} before live trendbars"), id).await;
        };

        if subscribe {
            subscription.periods.insert(period);
            info!(connection = self.id, symbol_id, period, "subscribed to live trendbars");
            let response = pb::ProtoOaSubscribeLiveTrendbarRes { ctid_trader_account_id: account_id, ..Default::default() };
            self.send(Message::SubscribeLiveTrendbarRes(response), id).await
        } else {
            subscription.periods.remove(&period);
            info!(connection = self.id, symbol_id, period, "unsubscribed from live trendbars");
            let response = pb::ProtoOaUnsubscribeLiveTrendbarRes { ctid_trader_account_id: account_id, ..Default::default() };
            self.send(Message::UnsubscribeLiveTrendbarRes(response), id).await
        }
    }

    async fn trendbars(&mut self, request: pb::ProtoOaGetTrendbarsReq, id: Option<String>) -> Flow {
        let account_id = request.ctid_trader_account_id;
        if let Some((code, description)) = self.account_error(account_id) {
            return self.send_oa_error(code, description, id).await;
        }
        let Ok(period) = Period::try_from(request.period) else {
            return self.send_oa_error("INVALID_REQUEST", format!("Unknown trendbar period {}", request.period), id).await;
        };
        if spec(request.symbol_id).is_none() {
            return self.send_oa_error("SYMBOL_NOT_FOUND", format!("Symbol {} not found", request.symbol_id), id).await;
        }

        // A request with only `count` reaches back the largest span the period allows.
        let max_span = max_trendbar_span_ms(period);
        let to = request.to_timestamp.unwrap_or_else(now_ms);
        let from = request.from_timestamp.unwrap_or(to - max_span);
        if from < 0 || to > MAX_HISTORY_TIMESTAMP_MS || from > to {
            return self.send_oa_error("INCORRECT_BOUNDARIES", format!("Invalid range from {from} to {to}"), id).await;
        }
        if to - from > max_span {
            let description = format!("Range of {} ms exceeds the maximum of {max_span} ms for period {}", to - from, period.as_str_name());
            return self.send_oa_error("INCORRECT_BOUNDARIES", description, id).await;
        }

        let mut bars = self.shared.market.bars(request.symbol_id, period, from, to);
        if let Some(count) = request.count {
            let keep = count as usize;
            if bars.len() > keep {
                bars.drain(..bars.len() - keep);
            }
        }
        let has_more = bars.len() > MAX_BARS_PER_RESPONSE;
        if has_more {
            bars.drain(..bars.len() - MAX_BARS_PER_RESPONSE);
        }

        let response = pb::ProtoOaGetTrendbarsRes {
            ctid_trader_account_id: account_id,
            period: period as i32,
            trendbar: bars.iter().filter_map(|bar| trendbar::encode(bar, period).ok()).collect(),
            symbol_id: Some(request.symbol_id),
            has_more: Some(has_more),
            ..Default::default()
        };
        self.send(Message::GetTrendbarsRes(response), id).await
    }

    async fn tick_data(&mut self, request: pb::ProtoOaGetTickDataReq, id: Option<String>) -> Flow {
        let account_id = request.ctid_trader_account_id;
        if let Some((code, description)) = self.account_error(account_id) {
            return self.send_oa_error(code, description, id).await;
        }
        let Ok(side) = pb::ProtoOaQuoteType::try_from(request.r#type) else {
            return self.send_oa_error("INVALID_REQUEST", format!("Unknown quote type {}; use BID (1) or ASK (2)", request.r#type), id).await;
        };
        if spec(request.symbol_id).is_none() {
            return self.send_oa_error("SYMBOL_NOT_FOUND", format!("Symbol {} not found", request.symbol_id), id).await;
        }

        let to = request.to_timestamp.unwrap_or_else(now_ms);
        let from = request.from_timestamp.unwrap_or(to - MAX_TICK_SPAN_MS);
        if from < 0 || from > to || to - from > MAX_TICK_SPAN_MS {
            return self.send_oa_error("INCORRECT_BOUNDARIES", format!("Invalid tick range from {from} to {to}; at most one week"), id).await;
        }

        let mut ticks = self.shared.market.ticks(request.symbol_id, side == pb::ProtoOaQuoteType::Ask, from, to);
        let has_more = ticks.len() > MAX_TICKS_PER_RESPONSE;
        ticks.truncate(MAX_TICKS_PER_RESPONSE);

        let response = pb::ProtoOaGetTickDataRes {
            ctid_trader_account_id: account_id,
            tick_data: tickdata::encode(&ticks),
            has_more,
            ..Default::default()
        };
        self.send(Message::GetTickDataRes(response), id).await
    }

    // ---- Cleanup ----

    fn end_session(&mut self) {
        if let Some(session) = self.session.take() {
            self.shared.session_closed(session.account_id, self.id);
        }
        self.duplicate_deadline = None;
    }

    fn unsubscribe_all(&mut self) {
        for (symbol_id, _) in self.subscriptions.drain() {
            self.shared.market.remove_subscriber(symbol_id);
        }
    }
}
