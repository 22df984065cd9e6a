//! Request/response correlation by `clientMsgId`, with a deadline per request.
//!
//! cTrader copies a request's `clientMsgId` into its response, error responses included, and sends
//! pushed events (spots, heartbeats, disconnect events) without one. This table hands out ids,
//! remembers what each id was for, and reports the requests whose deadline passed. It is pure:
//! the caller passes the time, so the same table works under a real or a virtual clock.

use std::collections::{BTreeSet, HashMap};

/// Outstanding requests keyed by `clientMsgId`, each carrying the caller's context `T`.
#[derive(Debug)]
pub struct Correlator<T> {
    prefix: String,
    next_sequence: u64,
    pending: HashMap<String, Entry<T>>,
    /// (deadline, id) pairs in deadline order, so the earliest deadline is the first element.
    deadlines: BTreeSet<(u64, String)>,
}

#[derive(Debug)]
struct Entry<T> {
    context: T,
    deadline: u64,
}

impl<T> Correlator<T> {
    /// Creates an empty table whose ids start with `prefix`, so ids from different connections
    /// never collide and a late response to an old connection's request is not misattributed.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), next_sequence: 0, pending: HashMap::new(), deadlines: BTreeSet::new() }
    }

    /// Records a request whose response is due by `deadline` and returns its `clientMsgId`.
    pub fn register(&mut self, context: T, deadline: u64) -> String {
        self.next_sequence += 1;
        let id = format!("{}-{}", self.prefix, self.next_sequence);
        self.deadlines.insert((deadline, id.clone()));
        self.pending.insert(id.clone(), Entry { context, deadline });
        id
    }

    /// Removes and returns the request with this `client_msg_id`, if it is still outstanding.
    pub fn resolve(&mut self, client_msg_id: &str) -> Option<T> {
        let entry = self.pending.remove(client_msg_id)?;
        self.deadlines.remove(&(entry.deadline, client_msg_id.to_string()));
        Some(entry.context)
    }

    /// Removes and returns every request whose deadline is at or before `now`, earliest first.
    pub fn expire(&mut self, now: u64) -> Vec<(String, T)> {
        let mut expired = Vec::new();
        while let Some((deadline, _)) = self.deadlines.first() {
            if *deadline > now {
                break;
            }
            let (_, id) = self.deadlines.pop_first().expect("first() returned an element");
            if let Some(entry) = self.pending.remove(&id) {
                expired.push((id, entry.context));
            }
        }
        expired
    }

    /// Returns the earliest deadline of any outstanding request.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// Forgets every outstanding request (the connection they were sent on is gone) and starts
    /// handing out ids with a new prefix.
    pub fn reset(&mut self, prefix: impl Into<String>) -> Vec<T> {
        self.prefix = prefix.into();
        self.deadlines.clear();
        self.pending.drain().map(|(_, entry)| entry.context).collect()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck_macros::quickcheck;

    #[test]
    fn resolve_returns_context_once() {
        let mut table = Correlator::new("c1");
        let id = table.register("auth", 100);

        assert_eq!(table.resolve(&id), Some("auth"));
        assert_eq!(table.resolve(&id), None);
        assert!(table.is_empty());
        assert_eq!(table.next_deadline(), None);
    }

    #[test]
    fn unknown_id_resolves_to_nothing() {
        let mut table: Correlator<&str> = Correlator::new("c1");
        table.register("auth", 100);

        assert_eq!(table.resolve("c0-1"), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn expire_returns_due_requests_in_deadline_order() {
        let mut table = Correlator::new("c1");
        table.register("late", 300);
        table.register("early", 100);
        table.register("middle", 200);

        let expired: Vec<_> = table.expire(200).into_iter().map(|(_, context)| context).collect();

        assert_eq!(expired, vec!["early", "middle"]);
        assert_eq!(table.next_deadline(), Some(300));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn reset_changes_prefix_and_drops_pending() {
        let mut table = Correlator::new("c1");
        let old = table.register("auth", 100);

        let dropped = table.reset("c2");
        let new = table.register("auth", 100);

        assert_eq!(dropped, vec!["auth"]);
        assert_ne!(old, new);
        assert!(new.starts_with("c2-"));
        assert_eq!(table.resolve(&old), None);
    }

    #[quickcheck]
    fn every_request_ends_exactly_once(deadlines: Vec<u16>, resolve_mask: Vec<bool>, now: u16) -> bool {
        let mut table = Correlator::new("q");
        let ids: Vec<String> = deadlines.iter().map(|d| table.register(*d, u64::from(*d))).collect();

        let mut ended = 0;
        for (id, resolve) in ids.iter().zip(resolve_mask.iter().chain(std::iter::repeat(&false))) {
            if *resolve && table.resolve(id).is_some() {
                ended += 1;
            }
        }
        let expired = table.expire(u64::from(now));
        let all_due = expired.iter().all(|(_, d)| *d <= now);
        let none_left_due = table.next_deadline().is_none_or(|d| d > u64::from(now));
        ended += expired.len() + table.reset("r").len();

        all_due && none_left_due && ended == deadlines.len()
    }
}
