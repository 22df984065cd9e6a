//! The desired set against the connection: subscribe and unsubscribe commands, the restore after
//! every connect, and the paced queue that sends the requests.

use std::sync::Arc;

use crate::fsm::Input;
use crate::protocol::message::Message;
use crate::protocol::pb;
use crate::session::handle::SessionEvent;
use crate::session::subscriptions::Job;
use crate::session::symbols::normalise;

use super::{Driver, Link, Pending};

/// Attempts per symbol at a subscribe that fails with an error other than unknown symbol or rate
/// limit, before the symbol is reported as failed.
const MAX_SUBSCRIBE_ATTEMPTS: u32 = 3;

impl Driver {
    pub(super) fn subscribe(&mut self, names: Vec<String>) {
        let names = names.iter().map(|name| normalise(name)).filter(|name| !name.is_empty()).map(Arc::from);
        let added = self.subscriptions.want(names);
        if added.is_empty() {
            return;
        }
        tracing::info!(symbols = ?added, "subscribe requested");
        if self.restored {
            self.queue_symbols(added);
        }
        self.subscriptions_changed();
    }

    pub(super) fn unsubscribe(&mut self, names: Vec<String>) {
        let names = names.iter().map(|name| normalise(name)).map(Arc::from);
        let removed = self.subscriptions.unwant(names);
        if removed.is_empty() {
            return;
        }
        tracing::info!(symbols = ?removed, "unsubscribe requested");
        let mut ids = Vec::new();
        for name in &removed {
            self.queue.cancel_subscribe(name);
            self.subscribe_attempts.remove(name);
            if let Some(id) = self.subscriptions.release(name) {
                self.book.forget(id);
                self.awaiting_snapshot.remove(&id);
                ids.push(id);
            }
        }
        if !ids.is_empty() {
            self.queue.push(Job::Unsubscribe(ids));
        }
        self.subscriptions_changed();
    }

    /// Re-sends the whole desired set on a fresh connection: details first for symbols not yet
    /// cached, then one subscribe per symbol.
    pub(super) fn restore_subscriptions(&mut self) {
        // The machine also restores after re-authorising on an open connection, when the server
        // has dropped the old session's subscriptions, so nothing confirmed earlier counts.
        self.restored = true;
        self.subscriptions.clear_upstream();
        self.awaiting_snapshot.clear();
        let desired: Vec<Arc<str>> = self.subscriptions.desired().to_vec();
        tracing::info!(count = desired.len(), "restoring subscriptions");
        self.queue_symbols(desired);
    }

    /// Queues subscribes for `names` in order, after one batched details request for the symbols
    /// whose digits are not cached yet. Names missing from the symbol list fail at once.
    fn queue_symbols(&mut self, names: Vec<Arc<str>>) {
        let mut failed = Vec::new();
        let mut missing_details = Vec::new();
        let mut jobs = Vec::new();
        for name in names {
            match self.symbols.get(&name) {
                Some(entry) => {
                    if !self.details.contains_key(&entry.id) {
                        missing_details.push(entry.id);
                    }
                    jobs.push(Job::Subscribe { name, id: entry.id });
                }
                None => failed.push(name),
            }
        }

        for batch in missing_details.chunks(self.config.details_batch) {
            self.queue.push(Job::Details(batch.to_vec()));
        }
        for job in jobs {
            if let Job::Subscribe { name, .. } = &job {
                self.queue.cancel_subscribe(name);
            }
            self.queue.push(job);
        }
        for name in failed {
            self.fail_symbol(&name, "SYMBOL_NOT_FOUND", "not in the broker's symbol list");
        }
    }

    pub(super) fn refetch_details(&mut self, ids: &[i64]) {
        for id in ids {
            self.details.remove(id);
        }
        let subscribed: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| self.symbols.name_of(*id).is_some_and(|name| self.subscriptions.is_wanted(name)))
            .collect();
        if !subscribed.is_empty() && self.restored {
            tracing::info!(ids = ?subscribed, "symbol details changed, refetching");
            self.queue.push(Job::Details(subscribed));
        }
    }

    pub(super) fn on_subscribed(&mut self, job: Job) {
        let Job::Subscribe { name, id } = job else { return };
        self.subscribe_attempts.remove(&name);
        if self.subscriptions.is_wanted(&name) {
            tracing::debug!(symbol = %name, id, "subscribed");
            self.awaiting_snapshot.insert(id);
            self.subscriptions.confirm(name, id);
        } else {
            // Unsubscribed while the request was in flight: undo it upstream.
            self.queue.push(Job::Unsubscribe(vec![id]));
        }
        self.publish_status();
    }

    pub(super) fn retry_subscribe(&mut self, name: Arc<str>, id: i64, code: &str, description: &str) {
        let attempts = self.subscribe_attempts.entry(name.clone()).or_insert(0);
        *attempts += 1;
        if *attempts >= MAX_SUBSCRIBE_ATTEMPTS {
            let message = format!("{description} (after {MAX_SUBSCRIBE_ATTEMPTS} attempts)");
            self.fail_symbol(&name, code, &message);
            return;
        }
        tracing::info!(symbol = %name, attempt = *attempts, code, "retrying subscribe");
        self.queue.push(Job::Subscribe { name, id });
        self.queue.pause_until(self.clock.now() + self.config.rate_limit_pause.as_millis() as u64);
    }

    /// Reports a symbol that cannot be subscribed and removes it from the desired set, so it is
    /// not retried on every reconnect.
    pub(super) fn fail_symbol(&mut self, name: &Arc<str>, code: &str, message: &str) {
        tracing::warn!(symbol = %name, code, message, "subscription failed");
        self.queue.cancel_subscribe(name);
        self.subscribe_attempts.remove(name);
        self.subscriptions.unwant([name.clone()]);
        let _ = self.events.send(SessionEvent::SubscriptionFailed {
            symbol: name.to_string(),
            code: code.to_string(),
            message: message.to_string(),
        });
        self.subscriptions_changed();
    }

    pub(super) fn subscriptions_changed(&mut self) {
        self.inputs.push_back(Input::SubscriptionsChanged { count: self.subscriptions.desired_len() });
        self.publish_status();
    }

    /// Sends every queued job the pacing allows now.
    pub(super) fn pump_queue(&mut self) {
        if !matches!(self.link, Link::Open(_)) {
            return;
        }
        let now = self.clock.now();
        let account = self.config.account_id;
        while let Some(job) = self.queue.pop_ready(now) {
            let message = match &job {
                Job::Details(ids) => Message::SymbolByIdReq(pb::ProtoOaSymbolByIdReq {
                    ctid_trader_account_id: account,
                    symbol_id: ids.clone(),
                    ..Default::default()
                }),
                Job::Subscribe { name, id } => {
                    if !self.subscriptions.is_wanted(name) || self.subscriptions.is_upstream(name) {
                        self.queue.finish(&job);
                        continue;
                    }
                    if !self.details.contains_key(id) {
                        self.queue.finish(&job);
                        let name = name.clone();
                        self.fail_symbol(&name, "SYMBOL_DETAILS_MISSING", "the server returned no digits for this symbol");
                        continue;
                    }
                    Message::SubscribeSpotsReq(pb::ProtoOaSubscribeSpotsReq {
                        ctid_trader_account_id: account,
                        symbol_id: vec![*id],
                        subscribe_to_spot_timestamp: Some(true),
                        ..Default::default()
                    })
                }
                Job::Unsubscribe(ids) => Message::UnsubscribeSpotsReq(pb::ProtoOaUnsubscribeSpotsReq {
                    ctid_trader_account_id: account,
                    symbol_id: ids.clone(),
                    ..Default::default()
                }),
            };
            self.send_tracked(Pending::Job(job), message, now);
        }
    }
}
