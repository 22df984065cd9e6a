//! One open connection: the framed read half, polled by the driver, and a writer task that owns
//! the write half. All writes go through the writer's queue, so frames never interleave.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::protocol::codec::{FrameCodec, FrameError};
use crate::protocol::pb;

use super::transport::Stream;

/// How long a closing connection may take to send TLS close_notify and flush.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A write failure on connection `generation`.
#[derive(Debug)]
pub struct WriteFailed {
    pub generation: u64,
    pub error: String,
}

/// The driver's end of an open connection.
pub struct Connection {
    pub generation: u64,
    reader: FramedRead<ReadHalf<Stream>, FrameCodec>,
    writer: mpsc::UnboundedSender<pb::ProtoMessage>,
    writer_task: JoinHandle<()>,
}

impl Connection {
    /// Splits `stream` and starts its writer task. Write errors are reported on `failures`.
    pub fn start(
        stream: Stream,
        generation: u64,
        max_frame_len: usize,
        failures: mpsc::UnboundedSender<WriteFailed>,
    ) -> Self {
        let (read_half, write_half) = tokio::io::split(stream);
        let reader = FramedRead::new(read_half, FrameCodec::new(max_frame_len));
        let sink = FramedWrite::new(write_half, FrameCodec::new(max_frame_len));
        let (writer, queue) = mpsc::unbounded_channel();
        let writer_task = tokio::spawn(write_frames(sink, queue, generation, failures));
        Self { generation, reader, writer, writer_task }
    }

    /// Queues a frame for the writer. A closed queue means the writer already failed and
    /// reported it, so the frame is dropped.
    pub fn send(&self, frame: pb::ProtoMessage) {
        let _ = self.writer.send(frame);
    }

    /// Waits for the next inbound frame; `None` means the server closed the connection.
    pub async fn next_frame(&mut self) -> Option<Result<pb::ProtoMessage, FrameError>> {
        self.reader.next().await
    }

    /// Stops reading and lets the writer send what is queued, then close TLS with close_notify.
    /// Returns the writer task, which ends within [`CLOSE_TIMEOUT`] of draining its queue.
    pub fn close(self) -> JoinHandle<()> {
        drop(self.reader);
        drop(self.writer);
        self.writer_task
    }
}

async fn write_frames(
    mut sink: FramedWrite<WriteHalf<Stream>, FrameCodec>,
    mut queue: mpsc::UnboundedReceiver<pb::ProtoMessage>,
    generation: u64,
    failures: mpsc::UnboundedSender<WriteFailed>,
) {
    while let Some(frame) = queue.recv().await {
        // Batch whatever else is already queued into one flush.
        let mut result = sink.feed(frame).await;
        while result.is_ok() {
            match queue.try_recv() {
                Ok(next) => result = sink.feed(next).await,
                Err(_) => break,
            }
        }
        if result.is_ok() {
            result = sink.flush().await;
        }
        if let Err(error) = result {
            let _ = failures.send(WriteFailed { generation, error: format!("write failed: {error}") });
            return;
        }
    }

    // The driver dropped the queue: close the TLS session properly so the server sees a clean end.
    match tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await {
        Ok(Ok(())) => tracing::debug!(generation, "connection closed with close_notify"),
        Ok(Err(error)) => tracing::debug!(generation, %error, "connection close failed"),
        Err(_) => tracing::debug!(generation, "connection close timed out"),
    }
}
