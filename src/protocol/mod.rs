//! The cTrader Open API wire protocol: framing, typed messages, prices.

pub mod correlation;
pub mod price;
pub mod tick;

pub use price::Price;
pub use tick::Tick;

/// Message types generated from `proto/` at build time.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}
