//! The demo's stand-ins for the other systems: one HTTP server on loopback with a path per
//! receiver (`/supervision`, `/sms`, `/credit`), which checks each message's signature, counts
//! it and keeps the first of each kind to show — what a real receiver does, minus the work.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use http_body_util::BodyExt;

/// What one receiver got.
#[derive(Debug, Clone, Default)]
pub(crate) struct Received {
    /// Messages received (retries included).
    pub(crate) messages: usize,
    /// Distinct keys: what a receiver that deduplicates processes.
    pub(crate) keys: std::collections::BTreeSet<String>,
    /// Messages whose signature did not verify.
    pub(crate) bad_signatures: usize,
    /// The first body, for the tour to show.
    pub(crate) first: Option<serde_json::Value>,
    /// Distinct keys per record type (`type` of the body): what the receiver can dispatch on.
    pub(crate) types: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// The first body of each record type.
    pub(crate) first_of: BTreeMap<String, serde_json::Value>,
}

/// The receivers, by path.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    secret: Vec<u8>,
    by_path: Mutex<BTreeMap<String, Received>>,
}

impl Inbox {
    /// What each path received so far.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, Received> {
        self.by_path.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Starts the receivers; answers where they listen.
pub(crate) async fn start(secret: &[u8]) -> Result<(SocketAddr, Arc<Inbox>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let inbox = Arc::new(Inbox { secret: secret.to_vec(), by_path: Mutex::default() });
    let shared = inbox.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let inbox = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| receive(inbox.clone(), req));
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    Ok((addr, inbox))
}

async fn receive(
    inbox: Arc<Inbox>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, hyper::Error> {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (key, timestamp, signature) = (
        header(shenguan::outbound::sign::KEY_HEADER),
        header(shenguan::outbound::sign::TIMESTAMP_HEADER),
        header(shenguan::outbound::sign::SIGNATURE_HEADER),
    );
    let body = req.into_body().collect().await?.to_bytes();
    // The SMS gateway is not signed in the demo's configuration; the others are.
    let signed_ok = signature.is_empty()
        || shenguan::outbound::sign::verify(
            &inbox.secret,
            &timestamp,
            &signature,
            &body,
            chrono::Utc::now().timestamp(),
            shenguan::outbound::sign::DEFAULT_TOLERANCE_SECS,
        )
        .is_ok();
    {
        let mut all = inbox.by_path.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = all.entry(path).or_default();
        r.messages += 1;
        r.keys.insert(key.clone());
        r.bad_signatures += usize::from(!signed_ok);
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let kind = json.as_ref().and_then(|j| j["type"].as_str()).unwrap_or("(untyped)").to_owned();
        r.types.entry(kind.clone()).or_default().insert(key);
        if let Some(j) = &json {
            r.first_of.entry(kind).or_insert_with(|| j.clone());
        }
        if r.first.is_none() {
            r.first = json;
        }
    }
    let answer: &'static [u8] = if signed_ok { br#"{"code":"OK","message_id":"demo"}"# } else { b"bad signature" };
    let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(answer)));
    if !signed_ok {
        *response.status_mut() = hyper::StatusCode::UNAUTHORIZED;
    }
    Ok(response)
}
