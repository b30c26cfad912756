//! The interceptor in front of every domain service: it proves who is calling and puts a
//! [`Caller`] into the request's extensions for the handlers to authorise.
//!
//! Order: a bearer token (`authorization: Bearer …`) if sent, else a client certificate pinned
//! in the service-account file (mTLS), else UNAUTHENTICATED. Then `x-shenguan-on-behalf-of`
//! (only with the on-behalf right), then the rate limit per principal. `x-shenguan-actor` is
//! ignored: nobody names themselves.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::Clock as _;

use serde::Deserialize;
use tonic::{Request, Status};

use super::verify::Verifier;
use super::{Principal, Right, Role, Via};
use crate::telemetry::Metrics;

/// Who is calling, as the handlers see it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The proved principal.
    pub principal: Arc<Principal>,
    /// The person a service account acts for, or empty.
    pub on_behalf_of: String,
    /// The caller's `x-request-id`, or one made here (history names every act's request).
    pub request_id: String,
}

/// How callers are proved.
pub enum Mode {
    /// Nobody is asked: every caller is [`Principal::open`]. Benchmarks and embedding only.
    Open,
    /// Bearer JWTs (and pinned client certificates).
    Verify(Arc<Verifier>),
}

/// A service account proved by its client certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// SHA-256 of the certificate (DER), hex, colons allowed
    /// (`openssl x509 -noout -fingerprint -sha256`).
    pub fingerprint: String,
    /// The principal's subject.
    pub subject: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// Region code.
    #[serde(default)]
    pub region: String,
    /// Department.
    #[serde(default)]
    pub department: String,
    /// Office.
    #[serde(default)]
    pub office: String,
    /// May name another person as the one acting.
    #[serde(default)]
    pub on_behalf: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsFile {
    #[serde(default)]
    account: Vec<Account>,
}

/// Certificate fingerprint → principal.
#[derive(Debug, Default, Clone)]
pub struct Accounts {
    by_fingerprint: HashMap<String, Arc<Principal>>,
}

impl Accounts {
    /// Reads the service-account file (TOML, `[[account]]` tables).
    pub fn load(path: &Path) -> Result<Accounts, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: AccountsFile = toml::from_str(&text).map_err(|e| {
            // One line, FILE:LINE: message, like every other file error.
            let line = e.span().map_or(1, |span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            format!("{}:{line}: {}", path.display(), e.message().trim())
        })?;
        let mut by_fingerprint = HashMap::new();
        for a in file.account {
            let fingerprint = normal_fingerprint(&a.fingerprint)
                .ok_or_else(|| format!("{}: {:?} is not a SHA-256 fingerprint", path.display(), a.fingerprint))?;
            let mut roles = Vec::new();
            for r in &a.roles {
                roles.push(Role::parse(r).ok_or_else(|| format!("{}: unknown role {r:?}", path.display()))?);
            }
            let p = Principal {
                subject: a.subject,
                roles,
                region: a.region,
                department: a.department,
                office: a.office,
                on_behalf: a.on_behalf,
                via: Via::Certificate,
            };
            by_fingerprint.insert(fingerprint, Arc::new(p));
        }
        Ok(Accounts { by_fingerprint })
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_fingerprint.is_empty()
    }
}

fn normal_fingerprint(text: &str) -> Option<String> {
    let hex: String = text.trim().trim_start_matches("sha256:").chars().filter(|c| *c != ':').collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_ascii_lowercase())
}

/// The SHA-256 fingerprint of a DER certificate, lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(der))
}

/// `governor`'s keyed limiter, telling after each check how many cells are left.
type Cells = governor::RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    governor::clock::DefaultClock,
    governor::middleware::StateInformationMiddleware,
>;

/// Calls per second per key (a principal, an address), in bursts of twice that: `governor`'s
/// keyed GCRA; 0: no limit.
struct Limiter {
    rate: u32,
    cells: Option<Cells>,
}

impl Limiter {
    fn new(rate: u32) -> Limiter {
        let cells = std::num::NonZeroU32::new(rate).map(|r| {
            let burst = r.saturating_mul(std::num::NonZeroU32::new(2).unwrap_or(std::num::NonZeroU32::MIN));
            governor::RateLimiter::keyed(governor::Quota::per_second(r).allow_burst(burst))
                .with_middleware::<governor::middleware::StateInformationMiddleware>()
        });
        Limiter { rate, cells }
    }

    /// Takes a cell of `who`'s: how many are left after it, or how long until the next.
    fn take(&self, who: &str) -> Result<u32, Duration> {
        let Some(cells) = &self.cells else { return Ok(u32::MAX) };
        // Keys whose state is back to a fresh key's are dropped, so that the map stays as
        // large as the keys of the last few seconds.
        if cells.len() > 100_000 {
            cells.retain_recent();
        }
        match cells.check_key(&who.to_owned()) {
            Ok(left) => Ok(left.remaining_burst_capacity()),
            Err(not_until) => Err(not_until.wait_time_from(cells.clock().now())),
        }
    }

    fn allow(&self, who: &str) -> bool {
        self.take(who).is_ok()
    }
}

/// The limit on failed token checks per address. Also knows, without taking a cell, whether
/// an address is out of them, which is what lets it be refused before its next token's
/// signature is checked (governor has no look without a take).
struct Failures {
    cells: Limiter,
    /// Addresses found out of cells, until when: a take would fail until then.
    out: Mutex<HashMap<String, Instant>>,
}

impl Failures {
    fn new(rate: u32) -> Failures {
        Failures { cells: Limiter::new(rate), out: Mutex::new(HashMap::new()) }
    }

    /// Whether `who` has a cell left, without taking it.
    fn has(&self, who: &str) -> bool {
        let out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.get(who).is_none_or(|until| Instant::now() >= *until)
    }

    /// Counts a failure of `who`'s; false if it had no cell left for it.
    fn record(&self, who: &str) -> bool {
        let now = Instant::now();
        let (had, out_until) = match self.cells.take(who) {
            Ok(0) => (true, Some(now + Duration::from_secs(1) / self.cells.rate)),
            Ok(_) => (true, None),
            Err(wait) => (false, Some(now + wait)),
        };
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if out.len() > 100_000 {
            out.retain(|_, until| *until > now);
        }
        match out_until {
            Some(until) => out.insert(who.to_owned(), until),
            None => out.remove(who),
        };
        had
    }
}

/// The interceptor (cheap to clone: one per service).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    mode: Mode,
    accounts: Accounts,
    limiter: Limiter,
    failures: Failures,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    /// `rate`: calls per second per principal (bursts of twice that); `failures`: failed
    /// authentications per second per IP address before the address is refused outright
    /// (bursts of twice that); 0: no limit.
    pub fn new(mode: Mode, accounts: Accounts, rate: u32, failures: u32, metrics: Arc<Metrics>) -> Self {
        let (limiter, failures) = (Limiter::new(rate), Failures::new(failures));
        Authenticator { inner: Arc::new(Inner { mode, accounts, limiter, failures, metrics }) }
    }

    fn refuse(&self, status: Status, reason: &str) -> Status {
        let code = match status.code() {
            tonic::Code::Unauthenticated => "unauthenticated",
            tonic::Code::PermissionDenied => "permission_denied",
            tonic::Code::ResourceExhausted => "resource_exhausted",
            _ => "invalid_argument",
        };
        self.inner.metrics.calls_refused.with_label_values(&[code, reason]).inc();
        tracing::info!(code, reason, message = status.message(), "call refused");
        status
    }

    fn principal<T>(&self, request: &Request<T>) -> Result<Arc<Principal>, Status> {
        let verifier = match &self.inner.mode {
            Mode::Open => return Ok(Arc::new(Principal::open())),
            Mode::Verify(v) => v,
        };
        if let Some(value) = request.metadata().get("authorization") {
            let text = value.to_str().map_err(|_| {
                self.refuse(Status::unauthenticated("the authorization header is not ASCII"), "malformed")
            })?;
            let Some(token) = text.strip_prefix("Bearer ").or_else(|| text.strip_prefix("bearer ")) else {
                return Err(self
                    .refuse(Status::unauthenticated("the authorization header must be `Bearer <JWT>`"), "malformed"));
            };
            if token.len() > 8 * 1024 {
                return Err(self.refuse(Status::unauthenticated("the bearer token is longer than 8 KiB"), "malformed"));
            }
            // A token verified before costs nothing to accept: the limit below must cost an
            // attacker, not a neighbour behind the same NAT or proxy whose token is good.
            let token = token.trim();
            if let Some(principal) = verifier.cached(token) {
                return Ok(principal);
            }
            // A signature check costs ~0.2 ms of CPU and a token that fails is not cached: an
            // address that keeps failing is refused before its new tokens are checked.
            let peer = request.remote_addr().map(|a| a.ip().to_string()).unwrap_or_default();
            if !self.inner.failures.has(&peer) {
                return Err(self.refuse(
                    Status::resource_exhausted("too many failed authentications from this address; retry later"),
                    "failures",
                ));
            }
            return verifier.verify(token).map_err(|e| {
                self.inner.failures.record(&peer);
                let reason = format!("{e:?}").split('(').next().unwrap_or("token").to_ascii_lowercase();
                self.refuse(Status::unauthenticated(e.to_string()), &reason)
            });
        }
        if let Some(certs) = request.peer_certs() {
            if let Some(cert) = certs.first() {
                let fp = fingerprint(cert.as_ref());
                return match self.inner.accounts.by_fingerprint.get(&fp) {
                    Some(p) => Ok(p.clone()),
                    None => Err(self.refuse(
                        Status::unauthenticated(format!(
                            "the client certificate (sha256 {fp}) is not a known service account"
                        )),
                        "certificate",
                    )),
                };
            }
        }
        Err(self.refuse(
            Status::unauthenticated("no credentials: send `authorization: Bearer <JWT>` (or a client certificate)"),
            "missing",
        ))
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = self.principal(&request)?;
        let text = |name: &str| -> Result<String, Status> {
            match request.metadata().get(name) {
                None => Ok(String::new()),
                Some(v) => {
                    let s = v.to_str().map_err(|_| Status::invalid_argument(format!("{name}: must be ASCII")))?;
                    crate::domain::check_text(s, 128).map_err(|e| Status::invalid_argument(format!("{name}: {e}")))?;
                    Ok(s.to_owned())
                }
            }
        };
        let on_behalf_of = text("x-shenguan-on-behalf-of").map_err(|s| self.refuse(s, "header"))?;
        if !on_behalf_of.is_empty() {
            principal.authorize(Right::ActOnBehalf).map_err(|e| {
                self.refuse(Status::permission_denied(format!("x-shenguan-on-behalf-of: {e}")), "on_behalf")
            })?;
        }
        if !self.inner.limiter.allow(&principal.subject) {
            return Err(self.refuse(
                Status::resource_exhausted(format!(
                    "{} is over its rate limit of {} calls per second; retry later",
                    principal.subject, self.inner.limiter.rate
                )),
                "rate_limit",
            ));
        }
        let request_id = match text("x-request-id").map_err(|s| self.refuse(s, "header"))? {
            id if !id.is_empty() => id,
            _ => format!("srv-{:016x}", rand::random::<u64>()),
        };
        // The call's span (logs, and traces when exported) names who called and under which id,
        // the one made here included.
        let span = tracing::Span::current();
        span.record("principal", principal.subject.as_str());
        span.record("request_id", request_id.as_str());
        request.extensions_mut().insert(Caller { principal, on_behalf_of, request_id });
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_has_a_burst_of_twice_its_rate_then_is_out_and_others_are_not() {
        let failures = Failures::new(2);
        for i in 0..4 {
            assert!(failures.has("10.0.0.1"), "cell {i}");
            assert!(failures.record("10.0.0.1"), "cell {i}");
        }
        // The burst is spent: known without taking a cell, and refused when one is asked for.
        assert!(!failures.has("10.0.0.1"));
        assert!(!failures.record("10.0.0.1"));
        assert!(!failures.has("10.0.0.1"));
        assert!(failures.has("10.0.0.2") && failures.record("10.0.0.2"));

        let principals = Limiter::new(2);
        assert!((0..4).all(|_| principals.allow("p")));
        assert!(!principals.allow("p"));
        assert!(principals.allow("q"));
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let limiter = Limiter::new(0);
        assert!((0..10_000).all(|_| limiter.allow("p")));
        let failures = Failures::new(0);
        assert!((0..10_000).all(|_| failures.record("p")));
        assert!(failures.has("p"));
    }
}
