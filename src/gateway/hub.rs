//! The fan-out hub: one task that reads session events and routes frames to clients.
//!
//! The hub owns every subscription list, so subscribe, unsubscribe and disconnect are applied in
//! one order and the coalescing is exact: `session.subscribe` when a symbol gets its first
//! subscriber, `session.unsubscribe` when it loses its last. The hub never waits on a client. It
//! puts frames into each client's bounded queue with `try_send`, and a client whose queue is full
//! is closed with 4002. A tick is serialised once and the bytes are shared by every subscriber.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, trace};

use crate::fsm::StateName;
use crate::protocol::Tick;
use crate::session::{SessionEvent, SessionHandle, SessionStatus};

use super::metrics::Metrics;
use super::protocol::{self, ClientError, ErrorCode, TransitionView};

/// Capacity of the queue of requests from client tasks and HTTP handlers to the hub.
pub(crate) const REQUEST_CAPACITY: usize = 4096;

/// WebSocket close code for a client that did not keep up with its queue.
pub const CLOSE_SLOW_CLIENT: u16 = 4002;

pub(crate) type ClientId = u64;

/// A frame waiting in a client's queue.
#[derive(Debug)]
pub(crate) enum Outbound {
    Frame(Utf8Bytes),
    /// A tick frame, with the tick's timestamp for the latency histogram.
    Tick { frame: Utf8Bytes, timestamp_ms: i64 },
}

/// The hub's order to close a client, with the close code and reason.
#[derive(Debug)]
pub(crate) struct Eviction {
    pub code: u16,
    pub reason: String,
}

/// A request to the hub.
#[derive(Debug)]
pub(crate) enum HubRequest {
    /// Adds a client. The hub queues its first `status` (and `ready`) frames before any other.
    Register { id: ClientId, queue: mpsc::Sender<Outbound>, evict: oneshot::Sender<Eviction> },
    /// Symbols are already normalised; the hub checks them against the available list.
    Subscribe { id: ClientId, symbols: Vec<String> },
    Unsubscribe { id: ClientId, symbols: Vec<String> },
    /// Removes a client that disconnected, with all its subscriptions.
    Deregister { id: ClientId },
    Health { reply: oneshot::Sender<HubHealth> },
}

/// The hub's part of `GET /health`.
#[derive(Debug, Default)]
pub(crate) struct HubHealth {
    /// Every symbol with at least one subscriber, with the age of its last tick in milliseconds.
    pub last_tick_age_ms: Vec<(String, Option<i64>)>,
}

/// Limits the hub enforces.
#[derive(Clone, Debug)]
pub(crate) struct HubLimits {
    pub max_subscriptions_per_client: usize,
    pub heartbeat_interval: Duration,
    pub transition_history: usize,
}

struct ClientEntry {
    queue: mpsc::Sender<Outbound>,
    symbols: BTreeSet<Arc<str>>,
    evict: Option<oneshot::Sender<Eviction>>,
}

#[derive(Default)]
struct SymbolEntry {
    subscribers: HashMap<ClientId, mpsc::Sender<Outbound>>,
    /// Local receive time of the last tick, Unix milliseconds.
    last_tick_ms: Option<i64>,
}

pub(crate) struct Hub {
    session: SessionHandle,
    events: broadcast::Receiver<SessionEvent>,
    requests: mpsc::Receiver<HubRequest>,
    metrics: Arc<Metrics>,
    transitions: Arc<Mutex<VecDeque<TransitionView>>>,
    limits: HubLimits,
    /// The latest status seen on the event stream, for clients that connect later.
    status: SessionStatus,
    available: HashSet<String>,
    clients: HashMap<ClientId, ClientEntry>,
    symbols: HashMap<Arc<str>, SymbolEntry>,
}

impl Hub {
    /// Creates the hub. It subscribes to session events here, before any await, so no event
    /// sent after `serve` starts is missed.
    pub(crate) fn new(
        session: SessionHandle,
        events: broadcast::Receiver<SessionEvent>,
        requests: mpsc::Receiver<HubRequest>,
        metrics: Arc<Metrics>,
        transitions: Arc<Mutex<VecDeque<TransitionView>>>,
        limits: HubLimits,
    ) -> Self {
        let status = session.status().borrow().clone();
        let available = status.available_symbols.iter().cloned().collect();
        Self {
            session,
            events,
            requests,
            metrics,
            transitions,
            limits,
            status,
            available,
            clients: HashMap::new(),
            symbols: HashMap::new(),
        }
    }

    /// Runs until `shutdown` turns true or every request sender is gone.
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let period = self.limits.heartbeat_interval.max(Duration::from_millis(10));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut events_open = true;

        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => break,

                request = self.requests.recv() => match request {
                    Some(request) => self.handle_request(request).await,
                    None => break,
                },

                event = self.events.recv(), if events_open => match event {
                    Ok(event) => self.handle_event(event).await,
                    Err(broadcast::error::RecvError::Lagged(lost)) => {
                        self.metrics.hub_lagged_events.fetch_add(lost, Ordering::Relaxed);
                        debug!(lost, "fan-out hub fell behind the session events");
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        info!("session event stream closed");
                        events_open = false;
                    }
                },

                _ = heartbeat.tick() => {
                    let frame = protocol::heartbeat_frame(now_ms(), self.status.state);
                    self.broadcast(frame).await;
                }
            }
        }

        debug!(clients = self.clients.len(), "fan-out hub stopped");
    }

    async fn handle_request(&mut self, request: HubRequest) {
        match request {
            HubRequest::Register { id, queue, evict } => self.register(id, queue, evict),
            HubRequest::Subscribe { id, symbols } => self.subscribe(id, symbols).await,
            HubRequest::Unsubscribe { id, symbols } => self.unsubscribe(id, symbols).await,
            HubRequest::Deregister { id } => self.remove_client(id).await,
            HubRequest::Health { reply } => {
                let _ = reply.send(self.health());
            }
        }
    }

    async fn handle_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Tick(tick) => self.route_tick(tick).await,

            SessionEvent::Status(status) => {
                self.set_available(&status.available_symbols);
                let frame = protocol::status_frame(&status);
                self.status = status;
                self.broadcast(frame).await;
            }

            SessionEvent::Ready { symbols } => {
                self.set_available(&symbols);
                self.status.available_symbols = symbols;
                let frame = protocol::ready_frame(&self.status.available_symbols);
                self.broadcast(frame).await;
            }

            SessionEvent::Transition(record) => {
                self.metrics.record_transition(record.from, record.to);
                let view = TransitionView::from(&record);
                let frame = protocol::transition_frame(&view);
                {
                    let mut history = self.transitions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    history.push_back(view);
                    while history.len() > self.limits.transition_history {
                        history.pop_front();
                    }
                }
                self.broadcast(frame).await;
            }

            SessionEvent::SubscriptionFailed { symbol, code, message } => {
                self.fail_subscription(symbol, code, message).await;
            }
        }
    }

    fn set_available(&mut self, symbols: &Arc<[String]>) {
        if Arc::ptr_eq(symbols, &self.status.available_symbols) && self.available.len() == symbols.len() {
            return;
        }
        self.available = symbols.iter().cloned().collect();
    }

    fn register(&mut self, id: ClientId, queue: mpsc::Sender<Outbound>, evict: oneshot::Sender<Eviction>) {
        // The queue is new and has room for at least four frames, so these sends cannot fail
        // for a full queue. A closed queue means the client already left.
        let _ = queue.try_send(Outbound::Frame(protocol::status_frame(&self.status)));
        if self.status.state == StateName::Streaming {
            let _ = queue.try_send(Outbound::Frame(protocol::ready_frame(&self.status.available_symbols)));
        }
        self.clients.insert(id, ClientEntry { queue, symbols: BTreeSet::new(), evict: Some(evict) });
    }

    async fn subscribe(&mut self, id: ClientId, symbols: Vec<String>) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        let mut accepted: Vec<String> = Vec::with_capacity(symbols.len());
        let mut errors: Vec<ClientError> = Vec::new();
        let mut first_subscribers: Vec<String> = Vec::new();

        for symbol in symbols {
            // NOTE: the available set is empty until the first symbol list arrives, and until
            // then every well-formed symbol is accepted. The session keeps it and reports an
            // upstream rejection later as SubscriptionFailed.
            if !self.available.is_empty() && !self.available.contains(&symbol) {
                errors.push(ClientError::for_symbol(
                    ErrorCode::SymbolNotFound,
                    symbol.as_str(),
                    format!(
                        "symbol {symbol:?} is not in availableSymbols ({} symbols); use a name from the list in the status frame",
                        self.available.len()
                    ),
                ));
                continue;
            }
            if client.symbols.contains(symbol.as_str()) {
                accepted.push(symbol);
                continue;
            }
            if client.symbols.len() >= self.limits.max_subscriptions_per_client {
                errors.push(ClientError::for_symbol(
                    ErrorCode::TooManySubscriptions,
                    symbol.as_str(),
                    format!(
                        "cannot subscribe to {symbol:?}: this connection already has {} subscriptions, the limit; unsubscribe from a symbol first",
                        client.symbols.len()
                    ),
                ));
                continue;
            }

            let key = match self.symbols.get_key_value(symbol.as_str()) {
                Some((key, _)) => key.clone(),
                None => Arc::from(symbol.as_str()),
            };
            let entry = self.symbols.entry(key.clone()).or_default();
            if entry.subscribers.is_empty() {
                first_subscribers.push(symbol.clone());
            }
            entry.subscribers.insert(id, client.queue.clone());
            client.symbols.insert(key);
            accepted.push(symbol);
        }

        if !first_subscribers.is_empty() {
            debug!(symbols = ?first_subscribers, "subscribing upstream");
            // NOTE: this waits while the session's command queue is full, and fan-out to
            // every client pauses until the driver takes the command.
            if self.session.subscribe(first_subscribers.clone()).await.is_err() {
                // The driver has stopped and no ticks will come, so undo the subscriptions and report it.
                for symbol in &first_subscribers {
                    self.symbols.remove(symbol.as_str());
                    client.symbols.remove(symbol.as_str());
                    errors.push(ClientError::for_symbol(
                        ErrorCode::SubscriptionFailed,
                        symbol.as_str(),
                        format!("cannot subscribe to {symbol:?}: the session has stopped; reconnect once the server is back"),
                    ));
                }
                accepted.retain(|symbol| !first_subscribers.contains(symbol));
            }
        }

        let subscriptions: Vec<String> = client.symbols.iter().map(|symbol| symbol.to_string()).collect();
        let queue = client.queue.clone();
        let mut frames: Vec<Utf8Bytes> = Vec::with_capacity(errors.len() + 1);
        for error in &errors {
            self.metrics.record_client_error(error.code);
            frames.push(protocol::error_frame(error));
        }
        frames.push(protocol::subscribe_response_frame(&accepted, &subscriptions));
        self.send_frames(id, &queue, frames).await;
    }

    async fn unsubscribe(&mut self, id: ClientId, symbols: Vec<String>) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        let mut removed: Vec<String> = Vec::with_capacity(symbols.len());
        let mut last_subscribers: Vec<String> = Vec::new();

        // Symbols the client is not subscribed to are skipped: unsubscribing is idempotent.
        for symbol in symbols {
            if !client.symbols.remove(symbol.as_str()) {
                continue;
            }
            if remove_subscriber(&mut self.symbols, &symbol, id) {
                last_subscribers.push(symbol.clone());
            }
            removed.push(symbol);
        }

        let subscriptions: Vec<String> = client.symbols.iter().map(|symbol| symbol.to_string()).collect();
        let queue = client.queue.clone();
        self.unsubscribe_upstream(last_subscribers).await;

        let frame = protocol::unsubscribe_response_frame(&removed, &subscriptions);
        self.send_frames(id, &queue, vec![frame]).await;
    }

    /// Queues frames for one client, closing it as slow when its queue is full.
    async fn send_frames(&mut self, id: ClientId, queue: &mpsc::Sender<Outbound>, frames: Vec<Utf8Bytes>) {
        for frame in frames {
            if let Err(TrySendError::Full(_)) = queue.try_send(Outbound::Frame(frame)) {
                self.evict_slow(id).await;
                return;
            }
        }
    }

    async fn route_tick(&mut self, tick: Tick) {
        self.metrics.ticks_received.fetch_add(1, Ordering::Relaxed);
        let Some(entry) = self.symbols.get_mut(&*tick.symbol) else {
            trace!(symbol = %tick.symbol, "tick for a symbol without subscribers");
            return;
        };
        entry.last_tick_ms = Some(tick.received_at_ms);

        let frame = protocol::tick_frame(&tick);
        let timestamp_ms = tick.timestamp_ms();
        let mut slow: Vec<ClientId> = Vec::new();
        for (id, queue) in &entry.subscribers {
            let outbound = Outbound::Tick { frame: frame.clone(), timestamp_ms };
            if let Err(TrySendError::Full(_)) = queue.try_send(outbound) {
                slow.push(*id);
            }
        }
        trace!(symbol = %tick.symbol, subscribers = entry.subscribers.len(), "tick routed");

        for id in slow {
            self.evict_slow(id).await;
        }
    }

    /// Queues one frame for every client.
    async fn broadcast(&mut self, frame: Utf8Bytes) {
        let mut slow: Vec<ClientId> = Vec::new();
        for (id, client) in &self.clients {
            if let Err(TrySendError::Full(_)) = client.queue.try_send(Outbound::Frame(frame.clone())) {
                slow.push(*id);
            }
        }
        for id in slow {
            self.evict_slow(id).await;
        }
    }

    /// Reports an upstream rejection to the symbol's subscribers and drops their subscriptions,
    /// because the session does not retry it.
    async fn fail_subscription(&mut self, symbol: String, code: String, message: String) {
        debug!(%symbol, %code, %message, "upstream rejected a subscription");
        let Some(entry) = self.symbols.remove(symbol.as_str()) else { return };

        let error = ClientError::for_symbol(
            ErrorCode::SubscriptionFailed,
            symbol.as_str(),
            format!("upstream rejected the subscription to {symbol:?} ({code}: {message}); it is not retried, so subscribe again later or pick another symbol"),
        );
        let frame = protocol::error_frame(&error);
        let mut slow: Vec<ClientId> = Vec::new();
        for (id, queue) in &entry.subscribers {
            if let Some(client) = self.clients.get_mut(id) {
                client.symbols.remove(symbol.as_str());
            }
            self.metrics.record_client_error(ErrorCode::SubscriptionFailed);
            if let Err(TrySendError::Full(_)) = queue.try_send(Outbound::Frame(frame.clone())) {
                slow.push(*id);
            }
        }

        // Keeps the session's desired set equal to the symbols clients hold.
        self.unsubscribe_upstream(vec![symbol]).await;
        for id in slow {
            self.evict_slow(id).await;
        }
    }

    /// Removes a client that could not keep up and sends its task the order to close with 4002.
    async fn evict_slow(&mut self, id: ClientId) {
        let Some(mut client) = self.clients.remove(&id) else { return };
        self.metrics.slow_client_disconnects.fetch_add(1, Ordering::Relaxed);
        info!(client = id, queued = client.queue.max_capacity(), "closing slow client: send queue full");

        if let Some(evict) = client.evict.take() {
            let reason = format!("send queue full ({} frames); read frames faster or subscribe to fewer symbols", client.queue.max_capacity());
            let _ = evict.send(Eviction { code: CLOSE_SLOW_CLIENT, reason });
        }
        self.drop_subscriptions(id, client).await;
    }

    async fn remove_client(&mut self, id: ClientId) {
        if let Some(client) = self.clients.remove(&id) {
            self.drop_subscriptions(id, client).await;
        }
    }

    async fn drop_subscriptions(&mut self, id: ClientId, client: ClientEntry) {
        let mut last_subscribers = Vec::new();
        for symbol in &client.symbols {
            if remove_subscriber(&mut self.symbols, symbol, id) {
                last_subscribers.push(symbol.to_string());
            }
        }
        self.unsubscribe_upstream(last_subscribers).await;
    }

    async fn unsubscribe_upstream(&self, symbols: Vec<String>) {
        if symbols.is_empty() {
            return;
        }
        debug!(?symbols, "unsubscribing upstream: no subscribers left");
        if self.session.unsubscribe(symbols).await.is_err() {
            debug!("session stopped before the unsubscribe reached it");
        }
    }

    fn health(&self) -> HubHealth {
        let now = now_ms();
        let mut last_tick_age_ms: Vec<(String, Option<i64>)> = self
            .symbols
            .iter()
            .map(|(symbol, entry)| (symbol.to_string(), entry.last_tick_ms.map(|at| (now - at).max(0))))
            .collect();
        last_tick_age_ms.sort();
        HubHealth { last_tick_age_ms }
    }
}

/// Removes one subscriber; returns true when the symbol has none left.
fn remove_subscriber(symbols: &mut HashMap<Arc<str>, SymbolEntry>, symbol: &str, id: ClientId) -> bool {
    let Some(entry) = symbols.get_mut(symbol) else { return false };
    entry.subscribers.remove(&id);
    if entry.subscribers.is_empty() {
        symbols.remove(symbol);
        return true;
    }
    false
}

/// Completes when the shutdown flag turns true or its sender is gone.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Returns the system clock as Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
