//! A real HTTP receiver on loopback, standing in for a webhook endpoint, an SMS gateway or the
//! credit platform: it records every request and answers as a script says — 200, any status,
//! never (the sender times out), or by dropping the connection without an answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::BodyExt;
use tokio::sync::watch;

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 with a small JSON body.
    Ok,
    /// This status.
    Status(u16),
    /// Never: the sender's timeout ends it.
    Hang,
    /// Close the connection without an answer.
    Drop,
}

/// A request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The Idempotency-Key header.
    pub key: String,
    /// The X-Shenguan-Timestamp header.
    pub timestamp: String,
    /// The X-Shenguan-Signature header.
    pub signature: String,
    /// The raw body.
    pub body: Vec<u8>,
    /// How it was answered.
    pub answer: Answer,
    /// When it arrived.
    pub at: Instant,
    /// When it arrived, wall-clock Unix ms (to compare with the engine's commit times).
    pub received_ms: i64,
}

impl Received {
    /// The body as JSON (Null if it is not): parsed when asked, so that a receiver under load
    /// costs its sender's machine as little as a real one elsewhere would.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What the receiver does with a request: the request, and how many times this key was
/// received before (0 the first time).
pub type Script = Box<dyn FnMut(&Received, usize) -> Answer + Send>;

struct State {
    received: Mutex<Vec<Received>>,
    seen: Mutex<HashMap<String, usize>>,
    script: Mutex<Script>,
    count: watch::Sender<usize>,
}

/// A running receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
    tls: bool,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Receiver {
    /// A receiver on a free loopback port.
    pub async fn start(script: impl FnMut(&Received, usize) -> Answer + Send + 'static) -> Result<Receiver> {
        Self::start_on("127.0.0.1:0".parse()?, Box::new(script)).await
    }

    /// A receiver speaking HTTPS with the certificate chain and key given (PEM).
    pub async fn start_tls(
        cert_pem: &str,
        key_pem: &str,
        script: impl FnMut(&Received, usize) -> Answer + Send + 'static,
    ) -> Result<Receiver> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .context("certificate PEM")?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("key PEM")?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        Self::serve(
            tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            Box::new(script),
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
    }

    /// A receiver on `addr` (a port a stopped receiver had: the destination comes back).
    pub async fn start_on(addr: SocketAddr, script: Script) -> Result<Receiver> {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
        Self::serve(listener, script, None)
    }

    fn serve(
        listener: tokio::net::TcpListener,
        script: Script,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<Receiver> {
        let addr = listener.local_addr()?;
        let tls_on = tls.is_some();
        let state = Arc::new(State {
            received: Mutex::new(Vec::new()),
            seen: Mutex::new(HashMap::new()),
            script: Mutex::new(script),
            count: watch::Sender::new(0),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    // An Err from the service (Answer::Drop) closes the connection unanswered.
                    match tls {
                        None => {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                            }
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Receiver { addr, state, task, tls: tls_on })
    }

    /// The URL to configure (`https://localhost:…` for a TLS receiver, whose certificate
    /// names localhost).
    pub fn url(&self) -> String {
        format!("{}://{}/hook", self.scheme(), self.host())
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    fn host(&self) -> String {
        if self.tls {
            format!("localhost:{}", self.addr.port())
        } else {
            self.addr.to_string()
        }
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }

    /// The requests answered 200, in arrival order.
    pub fn accepted(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.answer == Answer::Ok).collect()
    }

    /// Replaces the script.
    pub fn set_script(&self, script: impl FnMut(&Received, usize) -> Answer + Send + 'static) {
        *lock(&self.state.script) = Box::new(script);
    }

    /// Waits until `done` holds for the requests received, at most `limit` (then an error
    /// saying what was received): synchronisation on arrivals, not a sleep.
    pub async fn wait_until(
        &self,
        limit: Duration,
        mut done: impl FnMut(&[Received]) -> bool,
    ) -> Result<Vec<Received>> {
        let mut rx = self.state.count.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            {
                let all = lock(&self.state.received);
                if done(&all) {
                    return Ok(all.clone());
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                let all = self.received();
                let accepted = all.iter().filter(|r| r.answer == Answer::Ok).count();
                let mut per_key: std::collections::BTreeMap<&str, Vec<Answer>> = Default::default();
                for r in &all {
                    per_key.entry(r.key.as_str()).or_default().push(r.answer);
                }
                bail!("gave up after {limit:?}: {} requests received, {accepted} accepted: {per_key:?}", all.len());
            }
        }
    }

    /// Waits until `n` distinct keys have been accepted; answers the accepted requests.
    pub async fn wait_accepted(&self, n: usize, limit: Duration) -> Result<Vec<Received>> {
        self.wait_until(limit, |all| {
            let keys: std::collections::HashSet<&str> =
                all.iter().filter(|r| r.answer == Answer::Ok).map(|r| r.key.as_str()).collect();
            keys.len() >= n
        })
        .await
        .map(|all| all.into_iter().filter(|r| r.answer == Answer::Ok).collect())
    }

    /// Stops listening (the port is closed: connections are refused).
    pub async fn stop(mut self) -> SocketAddr {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.addr
    }
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dropped by the script")
    }
}

impl std::error::Error for Dropped {}

async fn handle(
    state: Arc<State>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, Dropped> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (key, timestamp, signature) =
        (header("idempotency-key"), header("x-shenguan-timestamp"), header("x-shenguan-signature"));
    let body = req.into_body().collect().await.map_err(|_| Dropped)?.to_bytes().to_vec();
    let mut r = Received {
        key: key.clone(),
        timestamp,
        signature,
        body,
        answer: Answer::Ok,
        at: Instant::now(),
        received_ms: chrono::Utc::now().timestamp_millis(),
    };
    let before = {
        let mut seen = lock(&state.seen);
        let n = seen.entry(key).or_insert(0);
        *n += 1;
        *n - 1
    };
    r.answer = (lock(&state.script))(&r, before);
    let answer = r.answer;
    lock(&state.received).push(r);
    state.count.send_modify(|n| *n += 1);
    match answer {
        Answer::Ok => Ok(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"code":"OK","message_id":"gw-1"}"#,
        )))),
        Answer::Status(code) => {
            let mut response =
                hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"scripted failure")));
            *response.status_mut() =
                hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
            Ok(response)
        }
        Answer::Hang => {
            std::future::pending::<()>().await;
            Err(Dropped)
        }
        Answer::Drop => Err(Dropped),
    }
}
