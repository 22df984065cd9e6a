//! tickgate keeps one live connection to the cTrader Open API, streams forex ticks from it and
//! fans them out to WebSocket clients, and reports the feed's health truthfully at every step.
//!
//! Data flows one way: simulator or cTrader → [`protocol`] → [`session`] (driving [`fsm`]) →
//! [`gateway`] → clients.

pub mod commands;
pub mod fsm;
pub mod gateway;
pub mod protocol;
pub mod session;
pub mod simulator;
pub mod logging;
