//! Framing of the cTrader TCP stream: a 4-byte big-endian length, then one serialized
//! [`pb::ProtoMessage`] of exactly that many bytes. The length does not count itself.
//!
//! cTrader documents no maximum frame size, so the decoder enforces one of its own: a length
//! prefix above the limit is an error raised before any buffer of that size is reserved.

use bytes::{Buf, BufMut, BytesMut};
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder};

use super::pb;

/// Default maximum frame length: 16 MiB. A client-side choice, close to the 15 000 000 bytes
/// that Spotware's Python SDK (OpenApiPy) accepts.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Size of the big-endian length prefix in bytes.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Decodes and encodes length-prefixed `ProtoMessage` frames.
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max_frame_len: usize,
}

/// A frame that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more bytes than the configured maximum.
    #[error("frame length {len} bytes exceeds the maximum of {max} bytes; raise the maximum frame length if the peer is trusted")]
    Oversized { len: usize, max: usize },

    /// The frame body is not a valid `ProtoMessage` envelope.
    #[error("frame is not a valid ProtoMessage envelope: {0}")]
    Protobuf(#[from] prost::DecodeError),

    /// Reading or writing the socket failed; the message is the operating system's.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl FrameCodec {
    /// Creates a codec that rejects frames longer than `max_frame_len` bytes in either direction.
    pub fn new(max_frame_len: usize) -> Self {
        // The prefix is a u32, so no frame can be longer than u32::MAX whatever the caller requests.
        let max_frame_len = max_frame_len.min(u32::MAX as usize);
        Self { max_frame_len }
    }

    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl Decoder for FrameCodec {
    type Item = pb::ProtoMessage;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        loop {
            if src.len() < LENGTH_PREFIX_LEN {
                return Ok(None);
            }

            // 1. Read the prefix without consuming it, so a partial frame stays buffered whole.
            let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
            if len > self.max_frame_len {
                return Err(FrameError::Oversized { len, max: self.max_frame_len });
            }

            // 2. A zero-length frame carries no envelope, and Spotware's .NET client skips it too.
            if len == 0 {
                src.advance(LENGTH_PREFIX_LEN);
                continue;
            }

            // 3. Wait for the whole body. Reserving is safe here because len is within the limit.
            let frame_len = LENGTH_PREFIX_LEN + len;
            if src.len() < frame_len {
                src.reserve(frame_len - src.len());
                return Ok(None);
            }

            // 4. Consume the frame before decoding, so a bad body does not block the next frame.
            src.advance(LENGTH_PREFIX_LEN);
            let body = src.split_to(len);
            return Ok(Some(pb::ProtoMessage::decode(body.freeze())?));
        }
    }
}

impl Encoder<pb::ProtoMessage> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: pb::ProtoMessage, dst: &mut BytesMut) -> Result<(), Self::Error> {
        let len = item.encoded_len();
        if len > self.max_frame_len {
            return Err(FrameError::Oversized { len, max: self.max_frame_len });
        }

        dst.reserve(LENGTH_PREFIX_LEN + len);
        dst.put_u32(len as u32);
        item.encode(dst).map_err(|error| std::io::Error::other(error.to_string()))?;
        Ok(())
    }
}
