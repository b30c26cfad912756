//! The web console at `/console/`: a page, a script and a style sheet embedded in the binary
//! (`engine/console/`), served on the serve listener with a strict Content-Security-Policy.
//!
//! The console owns no data and no rule: it is a client of the JSON routes ([`super::json`]),
//! which call the same gRPC handlers, so every page shows what the caller's token may see and
//! nothing else. Its security rests on three choices made here and in the script:
//! - no inline script or style, no other origin (`Content-Security-Policy`), no framing;
//! - the token lives in the tab's `sessionStorage` and travels only in the `Authorization`
//!   header — never in a URL, never in a cookie, so a cross-site request carries no credential
//!   and CSRF has nothing to ride on;
//! - every value is put into the page as text (`textContent`), never as markup.
//!
//! In dev mode (no token keys) `GET /console/dev-token` hands the local engine-admin token to a
//! browser on this machine, so that `shenguan serve` and a browser are all a newcomer needs. It
//! answers only a loopback peer that named a loopback host (a DNS-rebinding page reaches the
//! server under its own host name and is refused); cross-origin pages cannot read the answer
//! (no CORS headers). With token keys configured it does not exist.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::{header, HeaderValue, StatusCode};

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/app.js");
const STYLE: &str = include_str!("../../console/app.css");

/// The policy every console answer carries: this origin's script, style and JSON only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the console routes need.
#[derive(Clone, Default)]
pub struct Console {
    /// The dev-mode engine-admin token, when the server runs in dev mode.
    dev_token: Option<String>,
}

impl Console {
    /// A console that offers `dev_token` to browsers on this machine (`None`: never).
    pub fn new(dev_token: Option<String>) -> Console {
        Console { dev_token }
    }

    /// `GET /console` (redirected), `/console/`, its two assets and the dev token.
    pub fn routes(self) -> axum::Router {
        axum::Router::new()
            .route("/console", axum::routing::get(|| async { Redirect::permanent("/console/") }))
            .route("/console/", axum::routing::get(|| async { asset(INDEX, "text/html; charset=utf-8") }))
            .route("/console/app.js", axum::routing::get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }))
            .route("/console/app.css", axum::routing::get(|| async { asset(STYLE, "text/css; charset=utf-8") }))
            .route("/console/dev-token", axum::routing::get(dev_token))
            .with_state(self)
    }
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    secure(headers);
    response
}

/// The headers every console answer carries.
fn secure(headers: &mut http::HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The assets change with the binary: a browser asks again rather than run an old script
    // against a new server.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// Whether the request came from this machine and named it: the dev token's only audience.
fn from_this_machine(request: &Request) -> bool {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let extensions = request.extensions();
    let peer: Option<SocketAddr> = extensions
        .get::<TcpConnectInfo>()
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().map(|t| t.get_ref()))
        .and_then(TcpConnectInfo::remote_addr);
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())
        .unwrap_or("");
    peer.is_some_and(|p| p.ip().is_loopback()) && loopback_host(host)
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn dev_token(State(console): State<Console>, request: Request) -> Response {
    let refuse = |status: StatusCode, text: &'static str| {
        let mut response = (status, text).into_response();
        secure(response.headers_mut());
        response
    };
    let Some(token) = console.dev_token else {
        return refuse(StatusCode::NOT_FOUND, "not in dev mode: sign in with a token from your administrator");
    };
    if !from_this_machine(&request) {
        return refuse(StatusCode::FORBIDDEN, "the dev token is offered only to a browser on the server's machine");
    }
    let mut response = token.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    secure(headers);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_apart_from_others() {
        for host in ["localhost", "localhost:50051", "127.0.0.1:8080", "127.9.9.9", "[::1]:50051", "[::1]", "LOCALHOST"]
        {
            assert!(loopback_host(host), "{host}");
        }
        for host in ["", "evil.example", "evil.example:50051", "10.0.0.1:50051", "localhost.evil.example", "[::2]:1"] {
            assert!(!loopback_host(host), "{host}");
        }
    }
}
