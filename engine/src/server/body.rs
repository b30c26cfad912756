//! The request-body gate in front of the domain services: a request's message is received in
//! full, within a time limit and a memory budget, before tonic sees a byte of it.
//!
//! Why: tonic reserves the buffer a gRPC frame's 5-byte header announces. A peer that sends
//! headers announcing 1 MiB messages and nothing else made the server commit ~1.15 MiB per
//! stream (600 streams: 716 MiB). Here memory follows the bytes that really arrived, counted
//! against one budget for the whole server; a body that does not arrive within `body_timeout`
//! (a trickling stream) is answered DEADLINE_EXCEEDED and its stream freed. A JSON call
//! (`/v1/…`, see [`super::json`]) is held to the same limits and the same budget, and refused in
//! JSON. Every domain call sends one message (Subscribe too: its request is one message, its answer a stream), so
//! nothing is lost by reading the message whole; the streaming services (health watch,
//! reflection) are passed through.
//!
//! The gate also marks each call in progress on its connection ([`Conns::call_started`]) until
//! the response's body has ended, not merely until its headers are sent: a quiet `Subscribe`
//! stream is a call in progress, and the connection's idle timeout must not cut it.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use tonic::Status;

use super::net::Conns;

/// Memory and time limits on request bodies.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Largest message (the 5-byte frame header included).
    pub max_message: usize,
    /// Largest catalog import (`AdminService.ImportCatalogs`), header included.
    pub max_import: usize,
    /// Bytes held for unfinished requests, the whole server together.
    pub budget: usize,
    /// A request's body must have arrived within this.
    pub body_timeout: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        // The services' own decoding limit, and the 5-byte frame header before the message.
        BodyLimits {
            max_message: super::MAX_MESSAGE + 5,
            max_import: super::MAX_IMPORT + 5,
            budget: 256 * 1024 * 1024,
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// The layer.
#[derive(Clone)]
pub struct Gate {
    limits: Arc<BodyLimits>,
    budget: Arc<tokio::sync::Semaphore>,
    conns: Arc<Conns>,
    held: prometheus::IntGauge,
    calls: prometheus::HistogramVec,
}

impl Gate {
    /// Over the server's connections (to mark calls in progress); `held` shows the bytes held,
    /// `calls` how long each domain call took, by method.
    pub fn new(
        limits: BodyLimits,
        conns: Arc<Conns>,
        held: prometheus::IntGauge,
        calls: prometheus::HistogramVec,
    ) -> Gate {
        let budget = Arc::new(tokio::sync::Semaphore::new(limits.budget.min(tokio::sync::Semaphore::MAX_PERMITS)));
        Gate { limits: Arc::new(limits), budget, conns, held, calls }
    }
}

/// The method label of a call to `path` answered `response`: the path itself, or `unknown`
/// for one no service has — a caller must not be able to add label values at will.
fn method_label<'a>(path: &'a str, response: &http::Response<tonic::body::Body>) -> &'a str {
    let unimplemented = response.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == b"12");
    let missing = matches!(response.status(), http::StatusCode::NOT_FOUND | http::StatusCode::NOT_IMPLEMENTED);
    if unimplemented || missing {
        "unknown"
    } else {
        path
    }
}

/// Bytes of the budget a request holds, shown in the gauge until released.
struct Held {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    gauge: prometheus::IntGauge,
}

impl Held {
    fn add(&mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        self.gauge.add(i64::try_from(permit.num_permits()).unwrap_or(i64::MAX));
        match &mut self.permit {
            Some(p) => p.merge(permit),
            None => self.permit = Some(permit),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(p) = &self.permit {
            self.gauge.sub(i64::try_from(p.num_permits()).unwrap_or(i64::MAX));
        }
    }
}

impl<S> tower::Layer<S> for Gate {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> GateService<S> {
        GateService { gate: self.clone(), inner }
    }
}

/// The service the layer makes.
#[derive(Clone)]
pub struct GateService<S> {
    gate: Gate,
    inner: S,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// A response body that keeps its call marked in progress until it ends or is dropped.
struct Guarded {
    body: tonic::body::Body,
    _call: super::net::CallGuard,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn guarded(
    response: http::Response<tonic::body::Body>,
    call: super::net::CallGuard,
) -> http::Response<tonic::body::Body> {
    response.map(|body| tonic::body::Body::new(Guarded { body, _call: call }))
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for GateService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The inner service was made ready for this call; keep a fresh clone for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        Box::pin(async move {
            use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
            let extensions = request.extensions();
            let info = extensions
                .get::<TcpConnectInfo>()
                .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().map(|t| t.get_ref()));
            let addr = info.and_then(TcpConnectInfo::remote_addr);
            let call = gate.conns.call_started(addr);
            let path = request.uri().path();
            let json = path.starts_with("/v1/");
            if !json && !path.starts_with("/shenguan.v1.") {
                return inner.call(request).await.map(|r| guarded(r, call));
            }
            let limit = if path == super::IMPORT_PATH || path == super::json::IMPORT_PATH {
                gate.limits.max_import
            } else {
                gate.limits.max_message
            };
            // A refusal in the caller's own dialect.
            let refuse = |status: Status| {
                if json {
                    super::json::refusal(&status).map(tonic::body::Body::new)
                } else {
                    status.into_http()
                }
            };
            let (parts, body) = request.into_parts();
            let received = tokio::time::timeout(gate.limits.body_timeout, receive(body, &gate, limit)).await;
            let (bytes, _held) = match received {
                Ok(Ok(v)) => v,
                Ok(Err(status)) => return Ok(refuse(status)),
                Err(_) => {
                    let secs = gate.limits.body_timeout.as_secs();
                    return Ok(refuse(Status::deadline_exceeded(format!(
                        "the request message did not arrive within {secs} s"
                    ))));
                }
            };
            let body = tonic::body::Body::new(http_body_util::Full::new(bytes));
            let (started, path) = (std::time::Instant::now(), parts.uri.path().to_owned());
            let response = inner.call(http::Request::from_parts(parts, body)).await;
            if let Ok(r) = &response {
                // To the response's head: for a unary call, the whole of its handling.
                gate.calls.with_label_values(&[method_label(&path, r)]).observe(started.elapsed().as_secs_f64());
            }
            response.map(|r| guarded(r, call))
        })
    }
}

/// The whole body, and the budget it holds until the call ends.
async fn receive(mut body: tonic::body::Body, gate: &Gate, limit: usize) -> Result<(bytes::Bytes, Held), Status> {
    let mut buf = bytes::BytesMut::new();
    let mut held = Held { permit: None, gauge: gate.held.clone() };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::cancelled(format!("the request body failed: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() + data.len() > limit {
            return Err(Status::resource_exhausted(format!("the request message is larger than {} bytes", limit - 5)));
        }
        let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let permit = gate.budget.clone().try_acquire_many_owned(n).map_err(|_| {
            Status::resource_exhausted("the server is holding its limit of unfinished requests; retry later")
        })?;
        held.add(permit);
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), held))
}
