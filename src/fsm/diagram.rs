//! The state diagram, derived from the machine itself rather than drawn by hand.
//!
//! [`explore`] walks the machine breadth first from Disconnected. At every distinct situation
//! (see `Machine::shape`) it applies every input kind with representative payloads, and fires
//! every armed timer at its deadline, and records each transition as a (from, to, input kind)
//! edge. It explores once without and once with a refresh token, so both auth paths appear.
//! The renderings sort states and edges, so the output is byte-for-byte stable.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fmt::Write as _;

use serde::Serialize;

use super::{Action, AuthStep, Config, Input, Machine, Millis, StateName, Timer};

/// The explored diagram: every state and every observed transition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagram {
    pub states: Vec<StateName>,
    pub edges: Vec<Edge>,
}

/// One transition: in `from`, an input of kind `input` (see [`Input::kind`]) leads to `to`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Edge {
    pub from: StateName,
    pub to: StateName,
    pub input: String,
}

/// Maximum fires of one timer per explored situation. An early fire is re-scheduled, so a
/// timer may need a few fires to reach its real deadline.
const MAX_FIRES_PER_TIMER: usize = 4;

/// Explores the machine and returns its diagram.
pub fn explore() -> Diagram {
    let mut edges = BTreeSet::new();
    for has_refresh_token in [false, true] {
        let config = Config { has_refresh_token, ..Config::default() };
        explore_from(Machine::new(config), &mut edges);
    }
    Diagram { states: StateName::ALL.to_vec(), edges: edges.into_iter().collect() }
}

fn explore_from(start: Machine, edges: &mut BTreeSet<Edge>) {
    // Start well away from 0 so that deadlines never saturate.
    let mut queue = VecDeque::from([(start, 1_000_000 as Millis)]);
    let mut seen = HashSet::new();
    let mut out = Vec::new();

    while let Some((machine, now)) = queue.pop_front() {
        if !seen.insert(machine.shape()) {
            continue;
        }

        for input in representative_inputs() {
            let mut next = machine.clone();
            out.clear();
            next.handle(now, input.clone(), &mut out);
            record(&input, &out, edges);
            queue.push_back((next, now));
        }

        for timer in Timer::ALL {
            let mut next = machine.clone();
            let mut at = now;
            for _ in 0..MAX_FIRES_PER_TIMER {
                let Some(deadline) = next.timer_deadline(timer) else { break };
                at = at.max(deadline);
                out.clear();
                next.handle(at, Input::TimerFired(timer), &mut out);
                record(&Input::TimerFired(timer), &out, edges);
                let transitioned = out.iter().any(|action| matches!(action, Action::Broadcast(_)));
                if transitioned || next.timer_deadline(timer).is_none_or(|again| again <= deadline) {
                    break;
                }
            }
            queue.push_back((next, at));
        }
    }
}

fn record(input: &Input, actions: &[Action], edges: &mut BTreeSet<Edge>) {
    for action in actions {
        if let Action::Broadcast(change) = action {
            edges.insert(Edge { from: change.from, to: change.to, input: input.kind().to_string() });
        }
    }
}

/// Returns one input of every kind except `TimerFired`, with payloads that reach every
/// branch. Each auth step is rejected once with an expired-token code and once with another
/// code, and subscription counts are zero and one.
fn representative_inputs() -> Vec<Input> {
    let mut inputs = vec![
        Input::Start,
        Input::Stop { reason: "operator".to_string() },
        Input::ForceReconnect { reason: "operator".to_string() },
        Input::TransportUp,
        Input::TransportFailed { error: "connection refused".to_string() },
        Input::SocketClosed { reason: "eof".to_string() },
        Input::SocketError { error: "connection reset".to_string() },
        Input::AppAuthOk,
        Input::AccountAuthOk,
        Input::TokenRefreshed,
        Input::SymbolsLoaded { count: 3 },
        Input::Tick,
        Input::Frame,
        Input::SubscriptionsChanged { count: 0 },
        Input::SubscriptionsChanged { count: 1 },
        Input::ServerDisconnect { reason: "maintenance".to_string() },
        Input::TokenInvalidated { reason: "revoked".to_string() },
    ];
    for step in [AuthStep::Application, AuthStep::Account, AuthStep::TokenRefresh, AuthStep::SymbolsList] {
        for code in ["OA_AUTH_TOKEN_EXPIRED", "CH_CLIENT_AUTH_FAILURE"] {
            inputs.push(Input::AuthRejected { step, code: code.to_string(), description: "rejected".to_string() });
        }
    }
    inputs
}

impl Diagram {
    /// Renders a Mermaid `stateDiagram-v2`, one line per edge.
    pub fn to_mermaid(&self) -> String {
        let mut text = String::from("stateDiagram-v2\n");
        let _ = writeln!(text, "    [*] --> {}", StateName::Disconnected);
        for edge in &self.edges {
            let _ = writeln!(text, "    {} --> {}: {}", edge.from, edge.to, edge.input);
        }
        text
    }

    /// Renders a Graphviz digraph, one edge per input kind.
    pub fn to_dot(&self) -> String {
        let mut text = String::from("digraph connection {\n");
        text.push_str("    rankdir=LR;\n");
        text.push_str("    node [shape=box, style=rounded];\n");
        text.push_str("    start [shape=point];\n");
        for state in &self.states {
            let _ = writeln!(text, "    {state};");
        }
        let _ = writeln!(text, "    start -> {};", StateName::Disconnected);
        for edge in &self.edges {
            let _ = writeln!(text, "    {} -> {} [label=\"{}\"];", edge.from, edge.to, edge.input);
        }
        text.push_str("}\n");
        text
    }

    /// Renders `{"states": [...], "edges": [{"from", "to", "input"}]}`, pretty-printed.
    pub fn to_json(&self) -> String {
        // serde_json fails only on maps with non-string keys and on failing Serialize impls,
        // and the diagram has neither; the fallback still keeps the output valid JSON.
        let mut text = serde_json::to_string_pretty(self)
            .unwrap_or_else(|error| serde_json::json!({ "error": error.to_string() }).to_string());
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(diagram: &Diagram, from: StateName, to: StateName, input: &str) -> bool {
        diagram.edges.iter().any(|edge| edge.from == from && edge.to == to && edge.input == input)
    }

    #[test]
    fn exploration_finds_named_transitions() {
        let diagram = explore();
        let expected = [
            (StateName::Disconnected, StateName::Connecting, "Start"),
            (StateName::Connecting, StateName::Authenticating, "TransportUp"),
            (StateName::Connecting, StateName::Backoff, "TransportFailed"),
            (StateName::Connecting, StateName::Backoff, "TimerFired(ConnectDeadline)"),
            (StateName::Authenticating, StateName::Streaming, "SymbolsLoaded"),
            (StateName::Authenticating, StateName::Backoff, "AuthRejected"),
            (StateName::Streaming, StateName::Stale, "TimerFired(Stale)"),
            (StateName::Streaming, StateName::Backoff, "TimerFired(Liveness)"),
            (StateName::Streaming, StateName::Authenticating, "TokenInvalidated"),
            (StateName::Stale, StateName::Streaming, "Tick"),
            (StateName::Stale, StateName::Streaming, "SubscriptionsChanged"),
            (StateName::Stale, StateName::Connecting, "TimerFired(Stale)"),
            (StateName::Backoff, StateName::Connecting, "TimerFired(Backoff)"),
            (StateName::Backoff, StateName::Disconnected, "Stop"),
        ];
        for (from, to, input) in expected {
            assert!(has(&diagram, from, to, input), "missing edge {from} -> {to} on {input}");
        }
    }

    #[test]
    fn exploration_finds_no_impossible_transitions() {
        let diagram = explore();
        assert!(!has(&diagram, StateName::Disconnected, StateName::Streaming, "Tick"));
        assert!(diagram.edges.iter().all(|edge| edge.from != StateName::Disconnected || edge.to == StateName::Connecting));
        assert!(diagram.edges.iter().all(|edge| edge.to != StateName::Stale || edge.from == StateName::Streaming));
    }

    #[test]
    fn renderings_are_deterministic() {
        assert_eq!(explore().to_mermaid(), explore().to_mermaid());
        assert_eq!(explore().to_dot(), explore().to_dot());
        let json: serde_json::Value = serde_json::from_str(&explore().to_json()).expect("valid JSON");
        assert_eq!(json["states"].as_array().map(Vec::len), Some(6));
        assert_eq!(json["edges"][0]["from"], "Disconnected");
    }
}
