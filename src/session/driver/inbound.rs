//! Inbound frames: responses matched to their requests, pushed events, and spot events.

use crate::fsm::{AuthStep, Input};
use crate::protocol::codec::FrameError;
use crate::protocol::error::ApiError;
use crate::protocol::message::Message;
use crate::protocol::pb;
use crate::session::handle::SessionEvent;
use crate::session::spot::SpotUpdate;
use crate::session::subscriptions::Job;
use crate::session::symbols::{SymbolDetails, SymbolTable};
use crate::session::timers::unix_ms;
use crate::session::tokens::Tokens;

use super::{api_error, Driver, Pending};

impl Driver {
    pub(super) fn on_frame(&mut self, frame: Option<Result<pb::ProtoMessage, FrameError>>) {
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                let error = error.to_string();
                tracing::warn!(state = %self.machine.state(), attempt = self.machine.attempt(), %error, "invalid frame, closing connection");
                self.connection_lost(Input::SocketError { error });
                return;
            }
            None => {
                tracing::info!(state = %self.machine.state(), attempt = self.machine.attempt(), "server closed the connection");
                self.connection_lost(Input::SocketClosed { reason: "connection closed by the server".into() });
                return;
            }
        };

        let message = match Message::decode(&frame) {
            Ok(message) => message,
            Err(error) => {
                let error = error.to_string();
                tracing::warn!(state = %self.machine.state(), attempt = self.machine.attempt(), %error, "malformed message, closing connection");
                self.connection_lost(Input::SocketError { error });
                return;
            }
        };

        if let Some(id) = frame.client_msg_id.as_deref() {
            if let Some(pending) = self.requests.resolve(id) {
                self.inputs.push_back(Input::Frame);
                self.on_reply(pending, message);
                return;
            }
        }
        self.on_event(message);
    }

    /// Handles a frame that matches no outstanding request: pushed events and late replies.
    pub(super) fn on_event(&mut self, message: Message) {
        let account = self.config.account_id;
        match message {
            Message::SpotEvent(event) => self.on_spot(event),
            Message::ClientDisconnectEvent(event) => {
                let reason = event.reason.unwrap_or_else(|| "no reason given".into());
                tracing::warn!(state = %self.machine.state(), %reason, "server is disconnecting the application");
                self.inputs.push_back(Input::Frame);
                self.inputs.push_back(Input::ServerDisconnect { reason });
            }
            Message::AccountsTokenInvalidatedEvent(event) => {
                self.inputs.push_back(Input::Frame);
                let ours = event.ctid_trader_account_ids.is_empty() || event.ctid_trader_account_ids.contains(&account);
                if ours && self.expect_invalidation {
                    // Our own refresh ended the session opened with the old token; the machine
                    // is already authorising again with the new one.
                    self.expect_invalidation = false;
                    tracing::info!(state = %self.machine.state(), "session with the replaced token ended after the refresh");
                } else if ours {
                    let reason = event.reason.unwrap_or_else(|| "no reason given".into());
                    tracing::warn!(state = %self.machine.state(), %reason, "access token invalidated");
                    self.inputs.push_back(Input::TokenInvalidated { reason });
                }
            }
            Message::AccountDisconnectEvent(event) => {
                self.inputs.push_back(Input::Frame);
                if event.ctid_trader_account_id == account {
                    let reason = "the server ended the account session".to_string();
                    tracing::warn!(state = %self.machine.state(), account, "{reason}");
                    self.inputs.push_back(Input::ServerDisconnect { reason });
                }
            }
            Message::SymbolChangedEvent(event) => {
                self.inputs.push_back(Input::Frame);
                self.refetch_details(&event.symbol_id);
            }
            Message::ErrorRes(_) | Message::OaErrorRes(_) => {
                self.inputs.push_back(Input::Frame);
                if let Some(error) = api_error(&message) {
                    tracing::warn!(state = %self.machine.state(), code = %error.code, description = %error.description, "error response to no pending request");
                }
            }
            Message::Unknown { payload_type } => {
                self.inputs.push_back(Input::Frame);
                if self.unknown_payload_types.insert(payload_type) {
                    tracing::debug!(payload_type, "skipping message of unknown payload type");
                }
            }
            other => {
                self.inputs.push_back(Input::Frame);
                tracing::debug!(payload_type = other.payload_type(), "response to no pending request, ignored");
            }
        }
    }

    pub(super) fn on_spot(&mut self, event: pb::ProtoOaSpotEvent) {
        let received_at_ms = unix_ms();
        let symbol_id = event.symbol_id;
        let name = match self.symbols.name_of(symbol_id) {
            Some(name) if self.subscriptions.is_wanted(name) => name.clone(),
            // Late events for an unsubscribed or unknown symbol still prove the socket is alive.
            _ => {
                self.inputs.push_back(Input::Frame);
                return;
            }
        };
        let Some(details) = self.details.get(&symbol_id).copied() else {
            tracing::debug!(symbol = %name, "spot event before symbol details, skipped");
            self.inputs.push_back(Input::Frame);
            return;
        };

        let update = SpotUpdate { symbol_id, bid: event.bid, ask: event.ask, timestamp_ms: event.timestamp };
        match self.book.apply(update, &name, details.digits, received_at_ms) {
            Ok(tick) => {
                tracing::trace!(symbol = %tick.symbol, bid = %tick.bid, ask = %tick.ask, "tick");
                let _ = self.events.send(SessionEvent::Tick(tick));
                let snapshot = self.awaiting_snapshot.remove(&symbol_id);
                self.inputs.push_back(if snapshot { Input::Frame } else { Input::Tick });
            }
            Err(_) => {
                self.awaiting_snapshot.remove(&symbol_id);
                self.inputs.push_back(Input::Frame);
            }
        }
    }

    pub(super) fn on_reply(&mut self, pending: Pending, message: Message) {
        if let Some(error) = api_error(&message) {
            self.on_request_error(pending, error);
            return;
        }

        match (pending, message) {
            (Pending::AppAuth, Message::ApplicationAuthRes) => self.inputs.push_back(Input::AppAuthOk),
            (Pending::AccountAuth, Message::AccountAuthRes(_)) => {
                self.account_authorised = true;
                self.inputs.push_back(Input::AccountAuthOk);
            }
            (Pending::RefreshToken, Message::RefreshTokenRes(response)) => self.on_token_refreshed(response),
            (Pending::SymbolsList, Message::SymbolsListRes(response)) => {
                self.symbols = SymbolTable::from_light_symbols(&response.symbol);
                self.status.available_symbols = self.symbols.names();
                tracing::info!(count = self.symbols.len(), "symbol list loaded");
                self.publish_status();
                self.inputs.push_back(Input::SymbolsLoaded { count: self.symbols.len() });
            }
            (Pending::Job(job @ Job::Details(_)), Message::SymbolByIdRes(response)) => {
                self.queue.finish(&job);
                for symbol in &response.symbol {
                    match SymbolDetails::from_symbol(symbol) {
                        Ok(details) => {
                            self.details.insert(symbol.symbol_id, details);
                        }
                        Err(error) => tracing::warn!(%error, "symbol details rejected"),
                    }
                }
            }
            (Pending::Job(job @ Job::Subscribe { .. }), Message::SubscribeSpotsRes(_)) => {
                self.queue.finish(&job);
                self.on_subscribed(job);
            }
            (Pending::Job(job @ Job::Unsubscribe(_)), Message::UnsubscribeSpotsRes(_)) => {
                self.queue.finish(&job);
            }
            (pending, message) => {
                let error = format!(
                    "unexpected response with payload type {} to {pending:?}",
                    message.payload_type()
                );
                tracing::warn!(state = %self.machine.state(), %error, "protocol error, closing connection");
                if let Pending::Job(job) = &pending {
                    self.queue.finish(job);
                }
                self.inputs.push_back(Input::SocketError { error });
            }
        }
    }

    pub(super) fn on_request_error(&mut self, pending: Pending, error: ApiError) {
        let state = self.machine.state();
        let attempt = self.machine.attempt();
        tracing::warn!(%state, attempt, request = ?pending, code = %error.code, description = %error.description, "request failed");

        let step = match &pending {
            Pending::AppAuth => Some(AuthStep::Application),
            Pending::AccountAuth => Some(AuthStep::Account),
            Pending::RefreshToken => Some(AuthStep::TokenRefresh),
            Pending::SymbolsList => Some(AuthStep::SymbolsList),
            Pending::Job(_) => None,
        };
        if let Some(step) = step {
            self.inputs.push_back(Input::AuthRejected { step, code: error.code, description: error.description });
            return;
        }
        let Pending::Job(job) = pending else { return };
        self.queue.finish(&job);

        if error.is_rate_limited() {
            let pause_ms = error
                .retry_after_s
                .map(|s| s.saturating_mul(1_000))
                .unwrap_or(self.config.rate_limit_pause.as_millis() as u64);
            tracing::info!(pause_ms, "rate limited, pausing subscription requests");
            self.queue.retry_first(job);
            self.queue.pause_until(self.clock.now() + pause_ms);
            return;
        }

        match job {
            Job::Subscribe { name, id } => {
                if error.is_already_subscribed() {
                    self.on_subscribed(Job::Subscribe { name, id });
                } else if error.is_unknown_symbol() {
                    self.fail_symbol(&name, &error.code, &error.description);
                } else {
                    self.retry_subscribe(name, id, &error.code, &error.description);
                }
            }
            Job::Details(ids) => {
                // Without digits no price can be shown. The subscribes waiting on these ids report
                // their symbols as failed when their turn comes.
                tracing::warn!(?ids, code = %error.code, "symbol details request failed");
            }
            Job::Unsubscribe(ids) => {
                tracing::debug!(?ids, code = %error.code, "unsubscribe failed");
            }
        }
    }

    pub(super) fn on_token_refreshed(&mut self, response: pb::ProtoOaRefreshTokenRes) {
        self.tokens = Tokens { access_token: response.access_token, refresh_token: response.refresh_token };
        // cTrader ends sessions opened with the replaced token and says so with an
        // AccountsTokenInvalidatedEvent, which must not trigger another refresh.
        self.expect_invalidation = self.account_authorised;
        self.account_authorised = false;
        self.has_refresh_token = !self.tokens.refresh_token.is_empty();
        match &self.token_file {
            Some(file) => match file.persist(&self.tokens) {
                Ok(()) => tracing::info!(path = %file.path().display(), "refreshed tokens saved"),
                // The refresh token is single-use, so losing the new one means authorising again by hand.
                Err(error) => tracing::error!(path = %file.path().display(), %error, "saving refreshed tokens failed, so they are kept in memory only; fix the token file before a restart"),
            },
            None => tracing::warn!("tokens refreshed but no token file is configured, so they are kept in memory only; set --token-file"),
        }
        self.inputs.push_back(Input::TokenRefreshed);
    }
}
