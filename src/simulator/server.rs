//! The TLS listener: accepts TCP, applies the `refuse_tls` and `silence` faults before the
//! handshake, and hands each connection to its own task.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use super::connection;
use super::state::Shared;

/// Time allowed for a TLS handshake before the socket is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` turns true, then waits for every connection task.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, acceptor: TlsAcceptor, mut shutdown: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
            // Reap finished tasks so the set does not grow with every connection ever made.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                debug!(%error, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let id = shared.next_connection_id();
        info!(connection = id, %peer, "tcp connection accepted");
        tasks.spawn(handle(shared.clone(), acceptor.clone(), tcp, peer, id, shutdown.clone()));
    }

    info!(connections = tasks.len(), "listener stopped; waiting for connections to close");
    while tasks.join_next().await.is_some() {}
}

async fn handle(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: TcpStream, peer: std::net::SocketAddr, id: u64, mut shutdown: watch::Receiver<bool>) {
    // refuse_tls: keep the TCP socket open without reading or handshaking until resume.
    // NOTE: a held socket is released only on resume or shutdown, even if the client gives up
    // earlier, because detecting its close would mean reading the ClientHello.
    let mut refuse = shared.faults.refuse_tls.subscribe();
    if *refuse.borrow_and_update() {
        info!(connection = id, %peer, "holding connection without a TLS handshake (refuse_tls fault)");
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                changed = refuse.changed() => if changed.is_err() || !*refuse.borrow() { break },
            }
        }
        info!(connection = id, %peer, "closing connection held by refuse_tls");
        return;
    }

    // Subscribe before the handshake: a client may see its handshake finish before the server
    // does, and a fault injected in that gap must still reach this connection.
    let faults = shared.faults.connections.subscribe();

    // silence: the handshake waits until resume, because nothing may be read or written.
    let mut silence = shared.faults.silence.subscribe();
    while *silence.borrow_and_update() {
        tokio::select! {
            _ = shutdown.changed() => return,
            changed = silence.changed() => if changed.is_err() { return },
        }
    }

    let handshake = tokio::select! {
        _ = shutdown.changed() => return,
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => handshake,
    };
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            info!(connection = id, %peer, %error, "tls handshake failed");
            return;
        }
        Err(_) => {
            info!(connection = id, %peer, timeout = ?HANDSHAKE_TIMEOUT, "tls handshake timed out");
            return;
        }
    };
    info!(connection = id, %peer, "tls handshake complete");

    shared.connection_opened();
    connection::serve(shared, stream, peer, id, faults, shutdown).await;
}
