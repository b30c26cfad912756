//! Bearer JWT verification with `jsonwebtoken`: signature, `exp`, `nbf`, `iss` and `aud`, with a
//! small clock-skew allowance.
//!
//! Keys come from PEM public keys (RS256 or ES256; a file, or a directory of `*.pem` whose file
//! stems are the key ids) and/or a JWKS file; both are re-read when they change
//! ([`Verifier::reload_if_changed`], polled by the server). HS256 is accepted only with the
//! dev-mode key ([`DevKey`]), which a production server refuses to start with.
//!
//! Verified tokens are cached until they expire (bounded; emptied on every key change), so a
//! client that sends the same token on every call pays for the signature check once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{Principal, Role, Via};

/// Why a token is not accepted. The text is what the caller is told (UNAUTHENTICATED).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts with a JSON header.
    #[error("the bearer token is not a JWT")]
    Malformed,
    /// `alg` is one this server does not accept (`none`, HS256 outside dev mode, …).
    #[error("tokens signed with {0} are not accepted")]
    Algorithm(String),
    /// No configured key for the token's `kid` and `alg`.
    #[error("no key to verify this token (kid {0:?})")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    Signature,
    /// `exp` is past.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the token's issuer is not accepted")]
    Issuer,
    /// `aud` does not name this engine.
    #[error("the token's audience is not this engine")]
    Audience,
    /// A required claim is missing or not of the right type.
    #[error("the token's claims are invalid: {0}")]
    Claims(String),
}

/// Why keys could not be loaded (at start: the server does not start; on reload: the old keys
/// stay and this is logged).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not a key this server can use.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Nothing to verify with.
    #[error("no token keys configured: give --jwt-keys (PEM public keys) or --jwks")]
    None,
}

/// What a token may say about its bearer. Only `sub` is required by this engine; a role that
/// needs `region`, `department` or `office` refuses when they are missing.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Claims {
    /// The bearer.
    pub sub: String,
    /// Role names; unknown ones are ignored (the identity provider serves other systems too).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Region code.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    /// Department.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub department: String,
    /// Office.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub office: String,
    /// May name another person as the one acting (`x-shenguan-on-behalf-of`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_behalf: bool,
    /// Issuer.
    pub iss: String,
    /// Audience: one, or (RFC 7519 §4.1.3) several, of which this engine's must be one —
    /// `jsonwebtoken` checks that; several are kept space-separated.
    #[serde(deserialize_with = "one_or_many")]
    pub aud: String,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// Not before (Unix seconds).
    #[serde(default)]
    pub nbf: u64,
    /// Issued at (Unix seconds).
    #[serde(default)]
    pub iat: u64,
}

impl Claims {
    /// `sub` with `roles`, valid from a second ago for `ttl` (real time: tokens live in the real
    /// world, whatever the engine's clock); the other claims empty, for the caller to fill in.
    pub fn valid_for(sub: impl Into<String>, roles: Vec<String>, ttl: std::time::Duration) -> Claims {
        let now = jsonwebtoken::get_current_timestamp();
        Claims {
            sub: sub.into(),
            roles,
            exp: now + ttl.as_secs(),
            nbf: now.saturating_sub(1),
            iat: now,
            ..Claims::default()
        }
    }

    fn principal(&self, via: Via) -> Result<Principal, TokenError> {
        let text = |name: &str, v: &str, max: usize| {
            crate::domain::check_text(v, max).map_err(|e| TokenError::Claims(format!("{name} {e}")))
        };
        if self.sub.is_empty() {
            return Err(TokenError::Claims("sub is empty".into()));
        }
        text("sub", &self.sub, 128)?;
        for (name, v) in [("region", &self.region), ("department", &self.department), ("office", &self.office)] {
            if !v.is_empty() {
                text(name, v, 128)?;
            }
        }
        if self.roles.len() > 32 {
            return Err(TokenError::Claims("more than 32 roles".into()));
        }
        let mut roles: Vec<Role> = self.roles.iter().filter_map(|r| Role::parse(r)).collect();
        roles.sort();
        roles.dedup();
        Ok(Principal {
            subject: self.sub.clone(),
            roles,
            region: self.region.clone(),
            department: self.department.clone(),
            office: self.office.clone(),
            on_behalf: self.on_behalf,
            via,
        })
    }
}

/// Where the keys come from and what tokens must say.
#[derive(Debug, Clone)]
pub struct Config {
    /// PEM public keys: a file, or a directory whose `*.pem` files are read (key id: the
    /// file stem).
    pub pem: Option<PathBuf>,
    /// A JWKS (JSON Web Key Set) file.
    pub jwks: Option<PathBuf>,
    /// The required `iss`.
    pub issuer: String,
    /// The required `aud`.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway: u64,
    /// The dev-mode key (HS256). Never together with production.
    pub dev: Option<DevKey>,
}

impl Config {
    /// Dev mode: only `key` (HS256), the dev issuer and audience, 60 s of skew.
    pub fn dev(key: DevKey) -> Config {
        Config {
            pem: None,
            jwks: None,
            issuer: DEV_ISSUER.into(),
            audience: AUDIENCE.into(),
            leeway: 60,
            dev: Some(key),
        }
    }
}

/// Issuer and audience of dev-mode tokens.
pub const DEV_ISSUER: &str = "shenguan-dev";
/// The audience a token must name unless configured otherwise.
pub const AUDIENCE: &str = "shenguan";

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    dev: bool,
}

/// A verified token's principal, `exp` and `nbf`.
type Cached = (Arc<Principal>, u64, u64);

/// Verifies tokens against the current keys.
pub struct Verifier {
    config: Config,
    keys: RwLock<Arc<Vec<Key>>>,
    stamp: Mutex<Vec<(PathBuf, Option<SystemTime>)>>,
    cache: Mutex<HashMap<String, Cached>>,
}

/// Most tokens kept verified; beyond it the cache starts again empty.
const CACHE_MAX: usize = 10_000;

impl Verifier {
    /// Loads the keys; an error when there are none or one is unusable.
    pub fn new(config: Config) -> Result<Verifier, KeyError> {
        let keys = load(&config)?;
        let stamp = stamps(&config);
        Ok(Verifier { config, keys: RwLock::new(Arc::new(keys)), stamp: Mutex::new(stamp), cache: Mutex::default() })
    }

    /// Re-reads the key files when any changed (modification time, appearance, removal).
    /// `Ok(true)`: new keys are in use; `Err`: the old keys stay.
    pub fn reload_if_changed(&self) -> Result<bool, KeyError> {
        let now = stamps(&self.config);
        {
            let stamp = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *stamp == now {
                return Ok(false);
            }
        }
        let keys = load(&self.config);
        // Remember the stamp even on failure, so that a broken file is reported once.
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = now;
        let keys = keys?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(true)
    }

    /// The principal a token already verified proves, while it is valid: no signature is
    /// checked (it costs nothing, so no limit on failed checks need stand in its way).
    pub fn cached(&self, token: &str) -> Option<Arc<Principal>> {
        let now = jsonwebtoken::get_current_timestamp();
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (p, exp, nbf) = cache.get(token)?;
        let valid = now <= exp.saturating_add(self.config.leeway) && now.saturating_add(self.config.leeway) >= *nbf;
        valid.then(|| p.clone())
    }

    /// The principal a token proves.
    pub fn verify(&self, token: &str) -> Result<Arc<Principal>, TokenError> {
        if let Some(p) = self.cached(token) {
            return Ok(p);
        }
        let (principal, exp, nbf) = self.verify_uncached(token)?;
        let principal = Arc::new(principal);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(token.to_owned(), (principal.clone(), exp, nbf));
        Ok(principal)
    }

    fn verify_uncached(&self, token: &str) -> Result<(Principal, u64, u64), TokenError> {
        // `decode_header` refuses `alg: none` and unknown algorithms: there is no such variant.
        // A readable header naming one says which; anything else is not a JWT.
        // A JWS has three parts; `decode_header` reads only the first, so "header.payload"
        // would otherwise be judged by the algorithm its header names.
        if token.split('.').count() != 3 {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| header_alg(token).map_or(TokenError::Malformed, TokenError::Algorithm))?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        let dev_only = keys.iter().all(|k| k.dev);
        if matches!(header.alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) && !dev_only {
            return Err(TokenError::Algorithm(format!("{:?} outside dev mode", header.alg)));
        }
        let candidates: Vec<&Key> = keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            if !keys.iter().any(|k| k.alg == header.alg) {
                return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
            }
            return Err(TokenError::UnknownKey(header.kid.unwrap_or_default()));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        let mut last = TokenError::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let via = if key.dev { Via::DevToken } else { Via::Token };
                    let claims = data.claims;
                    return Ok((claims.principal(via)?, claims.exp, claims.nbf));
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::InvalidSignature => TokenError::Signature,
                        K::ExpiredSignature => return Err(TokenError::Expired),
                        K::ImmatureSignature => return Err(TokenError::NotYetValid),
                        K::InvalidIssuer => return Err(TokenError::Issuer),
                        K::InvalidAudience => return Err(TokenError::Audience),
                        K::MissingRequiredClaim(c) => return Err(TokenError::Claims(format!("{c} is missing"))),
                        K::Json(_) | K::InvalidClaimFormat(_) => {
                            return Err(TokenError::Claims("not the expected types".into()))
                        }
                        K::Base64(_) | K::Utf8(_) | K::InvalidToken => TokenError::Malformed,
                        _ => TokenError::Signature,
                    };
                }
            }
        }
        Err(last)
    }
}

/// `aud` as a string or an array of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(d)? {
        Aud::One(a) => a,
        Aud::Many(all) => all.join(" "),
    })
}

/// The `alg` a token's header names, if the header is base64url JSON with one.
fn header_alg(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).ok()?;
    let value = serde_json::from_slice::<serde_json::Value>(&bytes).ok()?;
    Some(value.get("alg")?.as_str()?.chars().take(32).collect())
}

fn pem_files(path: &Path) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_owned()];
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map(|dir| dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "pem")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn stamps(config: &Config) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut files = config.pem.as_deref().map(pem_files).unwrap_or_default();
    files.extend(config.jwks.clone());
    files
        .into_iter()
        .map(|f| {
            let t = std::fs::metadata(&f).and_then(|m| m.modified()).ok();
            (f, t)
        })
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
    if bytes.len() > 1024 * 1024 {
        return Err(KeyError::Invalid { path: path.to_owned(), reason: "larger than 1 MiB".into() });
    }
    Ok(bytes)
}

fn load(config: &Config) -> Result<Vec<Key>, KeyError> {
    let mut keys = Vec::new();
    if let Some(dev) = &config.dev {
        keys.push(Key { kid: None, alg: Algorithm::HS256, key: DecodingKey::from_secret(&dev.secret), dev: true });
    }
    if let Some(pem) = &config.pem {
        for path in pem_files(pem) {
            let bytes = read(&path)?;
            let invalid = |reason: &str| KeyError::Invalid { path: path.clone(), reason: reason.into() };
            let text = String::from_utf8_lossy(&bytes);
            if text.contains("PRIVATE KEY") {
                return Err(invalid("is a private key; give the public key (openssl pkey -pubout)"));
            }
            let kid = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            let (alg, key) = match (DecodingKey::from_ec_pem(&bytes), DecodingKey::from_rsa_pem(&bytes)) {
                (Ok(k), _) => (Algorithm::ES256, k),
                (_, Ok(k)) => (Algorithm::RS256, k),
                _ => return Err(invalid("is not a PEM RSA or EC (P-256) public key")),
            };
            keys.push(Key { kid, alg, key, dev: false });
        }
    }
    if let Some(path) = &config.jwks {
        let bytes = read(path)?;
        let invalid = |reason: String| KeyError::Invalid { path: path.clone(), reason };
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("is not a JWKS: {e}")))?;
        for jwk in &set.keys {
            use jsonwebtoken::jwk::AlgorithmParameters as P;
            use jsonwebtoken::jwk::KeyAlgorithm as A;
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (P::OctetKey(_), _) => {
                    return Err(invalid("holds a symmetric (oct) key; HS256 is for dev mode only".into()))
                }
                (P::RSA(_), None | Some(A::RS256)) => Algorithm::RS256,
                (P::EllipticCurve(_), None | Some(A::ES256)) => Algorithm::ES256,
                (P::OctetKeyPair(_), None | Some(A::EdDSA)) => Algorithm::EdDSA,
                (_, Some(other)) => {
                    return Err(invalid(format!("a key is for {other}; RS256, ES256 or EdDSA are accepted")))
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("a key is unusable: {e}")))?;
            keys.push(Key { kid: jwk.common.key_id.clone(), alg, key, dev: false });
        }
    }
    if keys.is_empty() {
        return Err(KeyError::None);
    }
    Ok(keys)
}

/// The dev-mode signing key: 32 random bytes kept in a file beside the database, so that the
/// server and `shenguan token issue` agree.
#[derive(Clone)]
pub struct DevKey {
    secret: Vec<u8>,
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevKey(…)")
    }
}

impl DevKey {
    /// The key in `path`, made (mode 0600) when there is none.
    pub fn load_or_create(path: &Path) -> std::io::Result<DevKey> {
        match Self::load(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write as _;
                let secret: [u8; 32] = rand_bytes();
                let text = hex::encode(secret);
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(path)?;
                file.write_all(text.as_bytes())?;
                file.sync_all()?;
                Ok(DevKey { secret: secret.to_vec() })
            }
            loaded => loaded,
        }
    }

    /// The key in `path`.
    pub fn load(path: &Path) -> std::io::Result<DevKey> {
        let text = std::fs::read_to_string(path)?;
        Self::parse(&text).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} is not a dev key", path.display()))
        })
    }

    fn parse(text: &str) -> Option<DevKey> {
        let mut secret = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut secret).ok()?;
        Some(DevKey { secret: secret.to_vec() })
    }

    /// A token for `claims` signed with this key (`iss`/`aud` are set to the dev ones).
    pub fn mint(&self, claims: &Claims) -> String {
        let claims = Claims { iss: DEV_ISSUER.into(), aud: AUDIENCE.into(), ..claims.clone() };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&self.secret))
            .unwrap_or_default()
    }
}

fn rand_bytes() -> [u8; 32] {
    // ThreadRng: a CSPRNG seeded from the operating system.
    rand::random()
}

/// Mints tokens with a private key (tests, examples): RS256 or ES256 from a PKCS#8 PEM.
pub fn mint_with_pem(alg: Algorithm, private_pem: &[u8], kid: Option<&str>, claims: &Claims) -> Option<String> {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem).ok()?,
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem).ok()?,
        _ => return None,
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).ok()
}
