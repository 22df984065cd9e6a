//! The desired set (symbols users want), the upstream set (symbols cTrader confirmed), and the
//! paced request queue that brings the two together after every (re)connect.
//!
//! The desired set survives disconnects: a subscribe or unsubscribe while disconnected changes it
//! in order and is applied on the next connect, so nothing requested is lost. The upstream set is
//! per connection and empties whenever the transport closes, because cTrader keeps no
//! subscriptions across connections.
//!
//! cTrader allows 50 ordinary requests per second per connection. The queue sends at most
//! `concurrency` requests at once and at least `spacing` apart, and a rate-limit error pauses it.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

/// Milliseconds on the driver's clock, the same unit the state machine uses.
type Millis = u64;

/// The desired and upstream subscription sets.
#[derive(Debug, Default)]
pub struct Subscriptions {
    /// Normalised names in the order they were first requested.
    desired: Vec<Arc<str>>,
    desired_lookup: HashSet<Arc<str>>,
    /// Confirmed on the current connection: name → symbol id.
    upstream: BTreeMap<Arc<str>, i64>,
}

impl Subscriptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds names to the desired set, returning those that were not already in it.
    pub fn want(&mut self, names: impl IntoIterator<Item = Arc<str>>) -> Vec<Arc<str>> {
        let mut added = Vec::new();
        for name in names {
            if self.desired_lookup.insert(name.clone()) {
                self.desired.push(name.clone());
                added.push(name);
            }
        }
        added
    }

    /// Removes names from the desired set, returning those that were in it.
    pub fn unwant(&mut self, names: impl IntoIterator<Item = Arc<str>>) -> Vec<Arc<str>> {
        let mut removed = Vec::new();
        for name in names {
            if self.desired_lookup.remove(&name) {
                removed.push(name);
            }
        }
        if !removed.is_empty() {
            self.desired.retain(|name| self.desired_lookup.contains(name));
        }
        removed
    }

    pub fn is_wanted(&self, name: &str) -> bool {
        self.desired_lookup.contains(name)
    }

    /// The desired set in request order.
    pub fn desired(&self) -> &[Arc<str>] {
        &self.desired
    }

    pub fn desired_len(&self) -> usize {
        self.desired.len()
    }

    /// Records that cTrader confirmed `name` (symbol `id`) on this connection.
    pub fn confirm(&mut self, name: Arc<str>, id: i64) {
        self.upstream.insert(name, id);
    }

    /// Forgets an upstream subscription, returning its symbol id if it was confirmed.
    pub fn release(&mut self, name: &str) -> Option<i64> {
        self.upstream.remove(name)
    }

    pub fn is_upstream(&self, name: &str) -> bool {
        self.upstream.contains_key(name)
    }

    /// Symbol ids confirmed on this connection.
    pub fn upstream_ids(&self) -> Vec<i64> {
        self.upstream.values().copied().collect()
    }

    pub fn upstream_len(&self) -> usize {
        self.upstream.len()
    }

    /// Empties the upstream set because the connection it belonged to is gone.
    pub fn clear_upstream(&mut self) {
        self.upstream.clear();
    }
}

/// A request waiting for its turn in the [`RequestQueue`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// Fetch digits and pip position for these symbol ids.
    Details(Vec<i64>),
    /// Subscribe spots for one symbol; one symbol per request so an error names one symbol.
    Subscribe { name: Arc<str>, id: i64 },
    /// Unsubscribe spots for these symbol ids.
    Unsubscribe(Vec<i64>),
}

/// Paces subscription-related requests: bounded concurrency, minimum spacing, pause on rate limit.
/// A subscribe waits while symbol details are still being fetched, because ticks need digits.
#[derive(Debug)]
pub struct RequestQueue {
    queue: VecDeque<Job>,
    concurrency: usize,
    spacing_ms: u64,
    in_flight: usize,
    details_in_flight: usize,
    next_send_at: Millis,
}

impl RequestQueue {
    /// `concurrency` is clamped to at least 1.
    pub fn new(concurrency: usize, spacing_ms: u64) -> Self {
        Self {
            queue: VecDeque::new(),
            concurrency: concurrency.max(1),
            spacing_ms,
            in_flight: 0,
            details_in_flight: 0,
            next_send_at: 0,
        }
    }

    pub fn push(&mut self, job: Job) {
        self.queue.push_back(job);
    }

    /// Puts a job back at the front, for example after a rate-limit error.
    pub fn retry_first(&mut self, job: Job) {
        self.queue.push_front(job);
    }

    /// Holds every send until `until`.
    pub fn pause_until(&mut self, until: Millis) {
        self.next_send_at = self.next_send_at.max(until);
    }

    /// Drops queued subscribes for `name` (it was unsubscribed before its turn came).
    pub fn cancel_subscribe(&mut self, name: &str) {
        self.queue.retain(|job| !matches!(job, Job::Subscribe { name: queued, .. } if &**queued == name));
    }

    /// Returns the next job if one may be sent at `now`, counting it as in flight.
    pub fn pop_ready(&mut self, now: Millis) -> Option<Job> {
        if self.in_flight >= self.concurrency || now < self.next_send_at {
            return None;
        }
        if matches!(self.queue.front(), Some(Job::Subscribe { .. })) && self.details_in_flight > 0 {
            return None;
        }
        let job = self.queue.pop_front()?;
        self.in_flight += 1;
        if matches!(job, Job::Details(_)) {
            self.details_in_flight += 1;
        }
        self.next_send_at = now + self.spacing_ms;
        Some(job)
    }

    /// Marks one in-flight job of this kind as done: its response arrived or it timed out.
    pub fn finish(&mut self, job: &Job) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if matches!(job, Job::Details(_)) {
            self.details_in_flight = self.details_in_flight.saturating_sub(1);
        }
    }

    /// Returns when [`pop_ready`](Self::pop_ready) could next return a job, if a job is queued and
    /// a concurrency slot is free.
    pub fn next_deadline(&self) -> Option<Millis> {
        if self.queue.is_empty() || self.in_flight >= self.concurrency {
            return None;
        }
        if matches!(self.queue.front(), Some(Job::Subscribe { .. })) && self.details_in_flight > 0 {
            return None;
        }
        Some(self.next_send_at)
    }

    /// Forgets queued and in-flight jobs because the connection is gone.
    pub fn clear(&mut self) {
        self.queue.clear();
        self.in_flight = 0;
        self.details_in_flight = 0;
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|name| Arc::from(*name)).collect()
    }

    fn subscribe(name: &str, id: i64) -> Job {
        Job::Subscribe { name: Arc::from(name), id }
    }

    #[test]
    fn desired_set_keeps_request_order_and_changes_in_order() {
        let mut subs = Subscriptions::new();
        subs.want(names(&["EURUSD", "USDJPY"]));
        subs.unwant(names(&["EURUSD"]));
        let added = subs.want(names(&["GBPUSD", "EURUSD", "USDJPY"]));

        assert_eq!(added, names(&["GBPUSD", "EURUSD"]));
        assert_eq!(subs.desired(), &names(&["USDJPY", "GBPUSD", "EURUSD"])[..]);
        assert!(subs.is_wanted("EURUSD"));
    }

    #[test]
    fn unwant_reports_only_known_names() {
        let mut subs = Subscriptions::new();
        subs.want(names(&["EURUSD"]));

        assert_eq!(subs.unwant(names(&["USDJPY", "EURUSD"])), names(&["EURUSD"]));
        assert_eq!(subs.desired_len(), 0);
    }

    #[test]
    fn upstream_set_clears_on_disconnect() {
        let mut subs = Subscriptions::new();
        subs.want(names(&["EURUSD"]));
        subs.confirm(Arc::from("EURUSD"), 1);

        subs.clear_upstream();

        assert_eq!(subs.upstream_len(), 0);
        assert_eq!(subs.desired_len(), 1);
    }

    #[test]
    fn queue_respects_concurrency_and_spacing() {
        let mut queue = RequestQueue::new(2, 20);
        for id in 0..4 {
            queue.push(subscribe("S", id));
        }

        assert_eq!(queue.pop_ready(0), Some(subscribe("S", 0)));
        assert_eq!(queue.pop_ready(10), None, "spacing not yet elapsed");
        assert_eq!(queue.next_deadline(), Some(20));
        assert_eq!(queue.pop_ready(20), Some(subscribe("S", 1)));
        assert_eq!(queue.pop_ready(100), None, "two in flight");
        assert_eq!(queue.next_deadline(), None);

        queue.finish(&subscribe("S", 0));

        assert_eq!(queue.pop_ready(100), Some(subscribe("S", 2)));
    }

    #[test]
    fn subscribe_waits_for_details() {
        let mut queue = RequestQueue::new(4, 0);
        queue.push(Job::Details(vec![1, 2]));
        queue.push(subscribe("EURUSD", 1));

        let details = queue.pop_ready(0).unwrap();
        assert_eq!(queue.pop_ready(0), None);

        queue.finish(&details);

        assert_eq!(queue.pop_ready(0), Some(subscribe("EURUSD", 1)));
    }

    #[test]
    fn pause_delays_retry() {
        let mut queue = RequestQueue::new(1, 10);
        queue.push(subscribe("EURUSD", 1));
        let job = queue.pop_ready(0).unwrap();

        queue.finish(&job);
        queue.retry_first(job.clone());
        queue.pause_until(500);

        assert_eq!(queue.pop_ready(499), None);
        assert_eq!(queue.next_deadline(), Some(500));
        assert_eq!(queue.pop_ready(500), Some(job));
    }

    #[test]
    fn cancel_subscribe_drops_queued_job() {
        let mut queue = RequestQueue::new(1, 0);
        queue.push(subscribe("EURUSD", 1));
        queue.push(subscribe("USDJPY", 2));

        queue.cancel_subscribe("EURUSD");

        assert_eq!(queue.pop_ready(0), Some(subscribe("USDJPY", 2)));
        assert_eq!(queue.queued(), 0);
    }
}
