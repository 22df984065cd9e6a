//! Fault injection: what can go wrong with a cTrader connection, on demand.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

/// A fault to inject. Faults marked "current" act on the connections open now; the others
/// change the server's behaviour until `resume` or until used once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Current: closes each connection cleanly (TLS close_notify, then TCP FIN).
    Drop,
    /// Current: aborts each connection with a TCP RST.
    Reset,
    /// Current and new: the socket stays open but nothing is read or written until `resume`.
    Silence,
    /// Spot events stop on every connection until `resume`; heartbeats continue.
    StallTicks,
    /// Ends `silence`, `stall_ticks` and `refuse_tls`, and cancels an unused `stall_auth`.
    Resume,
    /// The next application or account auth request gets no reply.
    StallAuth,
    /// Current: sends a frame whose body is not a valid ProtoMessage.
    MalformedFrame,
    /// Current: sends a length prefix of 0xFFFFFFFF bytes.
    OversizedLength,
    /// New connections are accepted over TCP but never get a TLS handshake, until `resume`.
    RefuseTls,
    /// The next spot subscription, on any connection, fails with this error code.
    ErrorNextSubscribe { code: String },
    /// Current: sends ProtoOAClientDisconnectEvent with this reason, then closes.
    DisconnectEvent { reason: String },
    /// The current access token becomes expired; account auth with it then fails.
    ExpireToken,
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Drop => "drop",
            Fault::Reset => "reset",
            Fault::Silence => "silence",
            Fault::StallTicks => "stall_ticks",
            Fault::Resume => "resume",
            Fault::StallAuth => "stall_auth",
            Fault::MalformedFrame => "malformed_frame",
            Fault::OversizedLength => "oversized_length",
            Fault::RefuseTls => "refuse_tls",
            Fault::ErrorNextSubscribe { .. } => "error_next_subscribe",
            Fault::DisconnectEvent { .. } => "disconnect_event",
            Fault::ExpireToken => "expire_token",
        }
    }
}

/// A fault that each open connection acts on by itself.
#[derive(Clone, Debug)]
pub(crate) enum ConnectionFault {
    Drop,
    Reset,
    MalformedFrame,
    OversizedLength,
    DisconnectEvent { reason: String },
    /// The access token was refreshed; sessions authorised with `old_token` end.
    TokenRefreshed { old_token: String },
}

/// Fault switches shared by the listener and every connection.
pub(crate) struct FaultState {
    pub silence: watch::Sender<bool>,
    pub refuse_tls: watch::Sender<bool>,
    stall_ticks: AtomicBool,
    stall_auth: AtomicBool,
    error_next_subscribe: Mutex<Option<String>>,
    pub connections: broadcast::Sender<ConnectionFault>,
}

impl FaultState {
    pub fn new() -> Self {
        let (connections, _) = broadcast::channel(64);
        Self {
            silence: watch::Sender::new(false),
            refuse_tls: watch::Sender::new(false),
            stall_ticks: AtomicBool::new(false),
            stall_auth: AtomicBool::new(false),
            error_next_subscribe: Mutex::new(None),
            connections,
        }
    }

    /// Applies a fault. Token expiry is the caller's job because tokens live elsewhere.
    pub fn apply(&self, fault: &Fault) {
        let send = |fault: ConnectionFault| {
            // No receiver means no open connection, so there is nothing to act on.
            let _ = self.connections.send(fault);
        };
        match fault {
            Fault::Drop => send(ConnectionFault::Drop),
            Fault::Reset => send(ConnectionFault::Reset),
            Fault::Silence => {
                self.silence.send_replace(true);
            }
            Fault::StallTicks => self.stall_ticks.store(true, Ordering::SeqCst),
            Fault::Resume => {
                self.silence.send_replace(false);
                self.refuse_tls.send_replace(false);
                self.stall_ticks.store(false, Ordering::SeqCst);
                self.stall_auth.store(false, Ordering::SeqCst);
            }
            Fault::StallAuth => self.stall_auth.store(true, Ordering::SeqCst),
            Fault::MalformedFrame => send(ConnectionFault::MalformedFrame),
            Fault::OversizedLength => send(ConnectionFault::OversizedLength),
            Fault::RefuseTls => {
                self.refuse_tls.send_replace(true);
            }
            Fault::ErrorNextSubscribe { code } => *self.error_next_subscribe.lock().expect("fault lock") = Some(code.clone()),
            Fault::DisconnectEvent { reason } => send(ConnectionFault::DisconnectEvent { reason: reason.clone() }),
            Fault::ExpireToken => {}
        }
    }

    pub fn ticks_stalled(&self) -> bool {
        self.stall_ticks.load(Ordering::SeqCst)
    }

    /// Returns true once after `stall_auth`: the caller must then not reply.
    pub fn take_stall_auth(&self) -> bool {
        self.stall_auth.swap(false, Ordering::SeqCst)
    }

    pub fn take_error_next_subscribe(&self) -> Option<String> {
        self.error_next_subscribe.lock().expect("fault lock").take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_json_uses_kind_tag() {
        let fault: Fault = serde_json::from_str(r#"{"kind":"error_next_subscribe","code":"SYMBOL_NOT_FOUND"}"#).unwrap();
        assert_eq!(fault, Fault::ErrorNextSubscribe { code: "SYMBOL_NOT_FOUND".into() });
        assert_eq!(serde_json::to_string(&Fault::RefuseTls).unwrap(), r#"{"kind":"refuse_tls"}"#);
        assert_eq!(fault.kind(), "error_next_subscribe");
    }

    #[test]
    fn one_shot_faults_fire_once() {
        let state = FaultState::new();
        state.apply(&Fault::StallAuth);
        assert!(state.take_stall_auth());
        assert!(!state.take_stall_auth());

        state.apply(&Fault::ErrorNextSubscribe { code: "X".into() });
        assert_eq!(state.take_error_next_subscribe().as_deref(), Some("X"));
        assert_eq!(state.take_error_next_subscribe(), None);
    }

    #[test]
    fn resume_clears_switches() {
        let state = FaultState::new();
        state.apply(&Fault::Silence);
        state.apply(&Fault::StallTicks);
        state.apply(&Fault::RefuseTls);
        state.apply(&Fault::Resume);
        assert!(!*state.silence.borrow());
        assert!(!*state.refuse_tls.borrow());
        assert!(!state.ticks_stalled());
    }
}
