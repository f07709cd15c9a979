//! A TCP relay that can fall silent, for tests of a dependency that stops answering
//! without closing anything: a server that is stopped (SIGSTOP) or behind a black hole.
//! Its clients' connections stay open and nothing comes back, which refused or reset
//! connections (a crash, a restart) do not show. The relay is the test's own, so a
//! database server shared with other tests keeps serving them.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Relays 127.0.0.1:[`SilentRelay::port`] to an upstream address until dropped.
#[derive(Debug)]
pub struct SilentRelay {
    pub port: u16,
    silent: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SilentRelay {
    /// Starts relaying to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let (silent, quiet) = watch::channel(false);
        let task = tokio::spawn(async move {
            // Dropped with the accept loop: every relayed connection ends with it.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(relay(client, upstream, quiet.clone()));
            }
        });
        Self { port, silent, task }
    }

    /// Goes silent: nothing is forwarded either way, new connections are accepted and
    /// left unanswered, and every connection stays open.
    pub fn go_silent(&self) {
        self.silent.send_replace(true);
    }

    /// Forwards again, what was held back included.
    pub fn resume(&self) {
        self.silent.send_replace(false);
    }

    /// `url` (`scheme://user@host:port/path`) with its host and port replaced by the
    /// relay's.
    pub fn url_through(&self, url: &str) -> String {
        let (before, after) = url.split_once('@').expect("a URL with user@host");
        let path = after.find('/').map_or("", |at| &after[at..]);
        format!("{before}@127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for SilentRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits while the relay is silent.
async fn while_silent(quiet: &mut watch::Receiver<bool>) {
    // An error means the relay is gone, and its task with this one.
    let _ = quiet.wait_for(|silent| !silent).await;
}

async fn relay(client: TcpStream, upstream: SocketAddr, mut quiet: watch::Receiver<bool>) {
    while_silent(&mut quiet).await;
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = pipe(client_read, server_write, quiet.clone()) => {}
        () = pipe(server_read, client_write, quiet) => {}
    }
}

/// Copies `from` to `to`, holding each chunk back while the relay is silent.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut quiet: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        while_silent(&mut quiet).await;
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while_silent(&mut quiet).await;
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
