//! The cTrader Open API wire protocol: framing, typed messages, prices.

pub mod codec;
pub mod correlation;
pub mod error;
pub mod message;
pub mod price;
pub mod symbol_name;
pub mod tick;
pub mod tickdata;
pub mod trendbar;

pub use codec::{FrameCodec, FrameError, DEFAULT_MAX_FRAME_LEN};
pub use error::ApiError;
pub use message::{Message, MessageError};
pub use price::Price;
pub use tick::Tick;
pub use trendbar::Bar;

/// Message types generated from `proto/` at build time.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}
