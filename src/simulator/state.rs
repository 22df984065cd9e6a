//! State shared by every connection: tokens, account sessions and counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::faults::FaultState;
use super::market::Market;
use super::symbols::spec;
use super::SimulatorConfig;

/// Lifetime cTrader gives an access token when none is configured: 2 628 000 s (about 30 days).
pub(crate) const DEFAULT_TOKEN_LIFETIME_S: i64 = 2_628_000;

/// Counters served by `GET /stats` and [`super::SimulatorHandle::stats`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub connections_current: usize,
    pub connections_total: u64,
    /// Connections with an authorised session per account, now.
    pub concurrent_per_account: BTreeMap<i64, usize>,
    /// Highest value of `concurrent_per_account` ever seen.
    pub max_concurrent_per_account: BTreeMap<i64, usize>,
    /// Received messages by protocol name, such as `ProtoOASubscribeSpotsReq`.
    pub requests_by_type: BTreeMap<String, u64>,
    pub spot_events_sent: u64,
    /// Normalised symbol name to live subscriptions across connections.
    pub subscriptions: BTreeMap<String, usize>,
    pub faults_injected: u64,
}

/// The one valid token pair. Refreshing replaces both and spends the old refresh token.
pub(crate) struct Tokens {
    pub access: String,
    pub refresh: String,
    issued_at: Instant,
    expired: bool,
}

/// The reason a token was rejected. Both cases are `CH_ACCESS_TOKEN_INVALID` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenProblem {
    Invalid,
    Expired,
}

impl TokenProblem {
    pub fn description(self) -> &'static str {
        match self {
            TokenProblem::Invalid => "Invalid access token",
            TokenProblem::Expired => "Access token expired",
        }
    }
}

pub(crate) struct Shared {
    pub config: SimulatorConfig,
    pub market: Arc<Market>,
    pub faults: FaultState,
    pub tokens: Mutex<Tokens>,
    counters: Mutex<Counters>,
    pub spot_events_sent: AtomicU64,
    next_connection_id: AtomicU64,
}

#[derive(Default)]
struct Counters {
    connections_current: usize,
    connections_total: u64,
    /// Account id to the connection ids with an authorised session for it.
    sessions: HashMap<i64, Vec<u64>>,
    max_concurrent_per_account: BTreeMap<i64, usize>,
    requests_by_type: BTreeMap<String, u64>,
    faults_injected: u64,
}

fn random_token(prefix: &str) -> String {
    let mut rng = rand::thread_rng();
    let suffix: String = (0..32).map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)])).collect();
    format!("{prefix}-{suffix}")
}

impl Shared {
    pub fn new(config: SimulatorConfig, market: Arc<Market>) -> Self {
        let tokens = Tokens {
            access: config.access_token.clone(),
            refresh: config.refresh_token.clone(),
            issued_at: Instant::now(),
            expired: false,
        };
        Self {
            config,
            market,
            faults: FaultState::new(),
            tokens: Mutex::new(tokens),
            counters: Mutex::new(Counters::default()),
            spot_events_sent: AtomicU64::new(0),
            next_connection_id: AtomicU64::new(1),
        }
    }

    /// Checks an access token against the current one, its expiry flag and its lifetime.
    pub fn check_access_token(&self, token: &str) -> Result<(), TokenProblem> {
        let tokens = self.tokens.lock().expect("token lock");
        if token != tokens.access {
            return Err(TokenProblem::Invalid);
        }
        let outlived = self.config.access_token_ttl.is_some_and(|ttl| tokens.issued_at.elapsed() >= ttl);
        if tokens.expired || outlived {
            return Err(TokenProblem::Expired);
        }
        Ok(())
    }

    pub fn expire_token(&self) {
        self.tokens.lock().expect("token lock").expired = true;
    }

    /// Exchanges a refresh token for a new pair. Returns the new access token, refresh token,
    /// lifetime in seconds and the access token it replaces, or `None` for a wrong token.
    pub fn refresh_tokens(&self, refresh_token: &str) -> Option<(String, String, i64, String)> {
        let mut tokens = self.tokens.lock().expect("token lock");
        if refresh_token != tokens.refresh {
            return None;
        }
        let old_access = std::mem::replace(&mut tokens.access, random_token("access"));
        tokens.refresh = random_token("refresh");
        tokens.issued_at = Instant::now();
        tokens.expired = false;
        let lifetime = self.config.access_token_ttl.map_or(DEFAULT_TOKEN_LIFETIME_S, |ttl| ttl.as_secs() as i64);
        Some((tokens.access.clone(), tokens.refresh.clone(), lifetime, old_access))
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn connection_opened(&self) {
        let mut counters = self.counters.lock().expect("stats lock");
        counters.connections_current += 1;
        counters.connections_total += 1;
    }

    pub fn connection_closed(&self, connection_id: u64) {
        let mut counters = self.counters.lock().expect("stats lock");
        counters.connections_current = counters.connections_current.saturating_sub(1);
        for sessions in counters.sessions.values_mut() {
            sessions.retain(|id| *id != connection_id);
        }
        counters.sessions.retain(|_, sessions| !sessions.is_empty());
    }

    /// Records an authorised account session and returns how many connections now hold one
    /// for that account, this one included.
    pub fn session_opened(&self, account_id: i64, connection_id: u64) -> usize {
        let mut counters = self.counters.lock().expect("stats lock");
        let sessions = counters.sessions.entry(account_id).or_default();
        if !sessions.contains(&connection_id) {
            sessions.push(connection_id);
        }
        let count = sessions.len();
        let max = counters.max_concurrent_per_account.entry(account_id).or_default();
        *max = (*max).max(count);
        count
    }

    pub fn session_closed(&self, account_id: i64, connection_id: u64) {
        let mut counters = self.counters.lock().expect("stats lock");
        if let Some(sessions) = counters.sessions.get_mut(&account_id) {
            sessions.retain(|id| *id != connection_id);
            if sessions.is_empty() {
                counters.sessions.remove(&account_id);
            }
        }
    }

    pub fn count_request(&self, name: &str) {
        let mut counters = self.counters.lock().expect("stats lock");
        *counters.requests_by_type.entry(name.to_string()).or_default() += 1;
    }

    pub fn count_fault(&self) {
        self.counters.lock().expect("stats lock").faults_injected += 1;
    }

    pub fn stats(&self) -> Stats {
        let counters = self.counters.lock().expect("stats lock");
        let mut subscriptions = BTreeMap::new();
        for (symbol_id, count) in self.market.subscriber_counts() {
            if let Some(spec) = spec(symbol_id) {
                *subscriptions.entry(super::symbols::normalise(spec.broker_name)).or_default() += count;
            }
        }
        Stats {
            connections_current: counters.connections_current,
            connections_total: counters.connections_total,
            concurrent_per_account: counters.sessions.iter().map(|(account, ids)| (*account, ids.len())).collect(),
            max_concurrent_per_account: counters.max_concurrent_per_account.clone(),
            requests_by_type: counters.requests_by_type.clone(),
            spot_events_sent: self.spot_events_sent.load(Ordering::Relaxed),
            subscriptions,
            faults_injected: counters.faults_injected,
        }
    }
}
