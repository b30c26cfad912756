//! Connections: the accept loop and what each connection may hold.
//!
//! - The accept loop backs off (10 ms doubling to 1 s) and logs when `accept` fails — at the
//!   file-descriptor limit it fails at once, every time, and a loop without back-off spins a
//!   core.
//! - At most `max_connections` open, and `per_peer` from one IP address; beyond them a new
//!   connection is closed at once (logged, counted).
//! - A connection that sends nothing for `handshake` after it opens, or has no call running
//!   and sends nothing for `idle`, is closed: an idle peer cannot hold a descriptor forever.
//!   A call in progress (counted by [`Conns::call_started`]) keeps its connection open.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::telemetry::Metrics;

/// Connection limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once. Keep it below the process's file-descriptor limit (the
    /// shipped systemd unit sets `LimitNOFILE=65536`).
    pub max_connections: usize,
    /// Connections from one IP address.
    pub per_peer: usize,
    /// A new connection must send its first bytes within this.
    pub handshake: Duration,
    /// A connection with no call running is closed after this long without a byte from it.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            per_peer: 512,
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(300),
        }
    }
}

/// One connection's count of calls in progress.
#[derive(Default)]
struct State {
    calls: AtomicUsize,
}

/// The open connections, shared by the accept loop, each connection and the call layer.
pub struct Conns {
    limits: Limits,
    by_addr: Mutex<HashMap<SocketAddr, Arc<State>>>,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    /// `connections_open` is the count of open connections the limit is checked against.
    metrics: Arc<Metrics>,
    last_warning: Mutex<Option<Instant>>,
}

/// Marks a call in progress on its connection until dropped.
pub struct CallGuard(Option<Arc<State>>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.calls.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Conns {
    /// No connections yet.
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Conns> {
        Arc::new(Conns {
            limits,
            by_addr: Mutex::default(),
            by_ip: Mutex::default(),
            metrics,
            last_warning: Mutex::new(None),
        })
    }

    /// A call started on the connection from `addr` (its end: dropping the guard).
    pub fn call_started(&self, addr: Option<SocketAddr>) -> CallGuard {
        let state = addr.and_then(|a| self.by_addr.lock().unwrap_or_else(|p| p.into_inner()).get(&a).cloned());
        if let Some(s) = &state {
            s.calls.fetch_add(1, Ordering::AcqRel);
        }
        CallGuard(state)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        usize::try_from(self.metrics.connections_open.get()).unwrap_or(0)
    }

    /// Logs at most once a second, so that a flood is visible without flooding the log.
    fn warn(&self, reason: &'static str, detail: &dyn std::fmt::Display) {
        self.metrics.connections_refused.with_label_values(&[reason]).inc();
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(reason, %detail, "connection refused or closed by a limit");
        }
    }

    fn admit(self: &Arc<Self>, stream: TcpStream, addr: SocketAddr) -> Option<Conn> {
        if self.open() >= self.limits.max_connections {
            self.warn("total", &format_args!("{addr}: {} connections open", self.limits.max_connections));
            return None;
        }
        {
            let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = by_ip.entry(addr.ip()).or_insert(0);
            if *n >= self.limits.per_peer {
                drop(by_ip);
                self.warn("per_peer", &format_args!("{addr}: {} connections from this address", self.limits.per_peer));
                return None;
            }
            *n += 1;
        }
        let state = Arc::new(State::default());
        self.by_addr.lock().unwrap_or_else(|p| p.into_inner()).insert(addr, state.clone());
        self.metrics.connections_open.inc();
        // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to every small
        // request/response pair on loopback.
        let _ = stream.set_nodelay(true);
        let deadline = Box::pin(tokio::time::sleep(self.limits.handshake));
        Some(Conn { stream, addr, conns: self.clone(), state, deadline, heard: false })
    }

    fn closed(&self, addr: SocketAddr) {
        self.by_addr.lock().unwrap_or_else(|p| p.into_inner()).remove(&addr);
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_ip.get_mut(&addr.ip()) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&addr.ip());
            }
        }
        self.metrics.connections_open.dec();
    }
}

/// Accepts connections for as long as the receiver listens.
pub async fn accept_loop(listener: TcpListener, conns: Arc<Conns>, tx: tokio::sync::mpsc::Sender<io::Result<Conn>>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                backoff = Duration::from_millis(10);
                if let Some(conn) = conns.admit(stream, addr) {
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                // EMFILE/ENFILE (no descriptor for the new socket) leave the connection in the
                // backlog: accept would fail again at once. Wait for descriptors to free up.
                conns.warn("accept_error", &format_args!("accept failed: {e}; retrying in {backoff:?}"));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// An accepted connection: a TCP stream that closes itself when idle.
pub struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    conns: Arc<Conns>,
    state: Arc<State>,
    deadline: Pin<Box<Sleep>>,
    heard: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.conns.closed(self.addr);
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.heard = true;
                    let idle = this.conns.limits.idle;
                    this.deadline.as_mut().reset(tokio::time::Instant::now() + idle);
                }
                Poll::Ready(r)
            }
            Poll::Pending => loop {
                if this.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if this.heard && this.state.calls.load(Ordering::Acquire) > 0 {
                    // A call is running (its answer may take a while): not idle.
                    let idle = this.conns.limits.idle;
                    this.deadline.as_mut().reset(tokio::time::Instant::now() + idle);
                    continue;
                }
                let reason = if this.heard { "idle" } else { "handshake" };
                this.conns.warn(reason, &this.addr);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connection {reason} timeout"),
                )));
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
