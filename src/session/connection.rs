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

    /// Lets the writer send what is queued and close TLS with close_notify, then waits for the
    /// server to end its side. Returns a task that ends within twice [`CLOSE_TIMEOUT`].
    ///
    /// Waiting for the server's end means it has let go of this session before the next
    /// connection authenticates, so a server that counts sessions per account never sees two.
    pub fn close(self) -> JoinHandle<()> {
        drop(self.writer);
        let writer_task = self.writer_task;
        let mut reader = self.reader;
        let generation = self.generation;
        tokio::spawn(async move {
            let _ = writer_task.await;
            let drain = async { while let Some(Ok(_)) = reader.next().await {} };
            if tokio::time::timeout(CLOSE_TIMEOUT, drain).await.is_err() {
                tracing::debug!(generation, "server did not end the connection after close_notify");
            }
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::Message;
    use crate::session::transport::{self, test_pki::test_pki};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// The server reads everything the client sends. In rustls a clean end (close_notify)
    /// reads as `Ok(0)`, and a TCP close without close_notify is an `UnexpectedEof` error.
    #[tokio::test]
    async fn close_flushes_queue_then_sends_close_notify() {
        let pki = test_pki();
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &pki.ca_pem).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server_config = pki.server_config.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = tokio_rustls::TlsAcceptor::from(server_config).accept(tcp).await.unwrap();
            let mut received = Vec::new();
            let end = tls.read_to_end(&mut received).await;
            (received, end)
        });

        let tls = transport::tls_config(Some(&ca_path)).unwrap();
        let stream = transport::connect("127.0.0.1", port, "localhost", tls).await.unwrap();
        let (failures, _failures_rx) = mpsc::unbounded_channel();
        let connection = Connection::start(stream, 1, 1024, failures);
        connection.send(Message::Heartbeat.encode(None));
        connection.close().await.unwrap();

        let (received, end) = server.await.unwrap();
        assert!(end.is_ok(), "server saw an unclean end: {end:?}");
        // One heartbeat frame: length 4, payloadType 51, empty payload.
        assert_eq!(received, vec![0, 0, 0, 4, 0x08, 0x33, 0x12, 0x00]);
    }
}
