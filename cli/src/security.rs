//! Identity at the command line: what `serve` is told about keys, TLS and limits (and dev
//! mode when it is told nothing), `token issue`, and where the client commands find their
//! token and CA.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

use shenguan::auth::layer::{Accounts, Mode};
use shenguan::auth::verify::{self, Claims, DevKey, Verifier};
use shenguan::server::{Security, Tls};

use crate::cli::{SecurityArgs, TokenArgs};

/// `<db>.<suffix>`: the dev key and the dev admin token live beside the database.
pub(crate) fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "shenguan.db".into());
    name.push(format!(".{suffix}"));
    db.with_file_name(name)
}

/// Claims for a dev token.
pub(crate) fn dev_claims(args: &TokenArgs) -> Result<Claims> {
    for r in &args.roles {
        if shenguan::auth::Role::parse(r).is_none() {
            let known: Vec<&str> = shenguan::auth::Role::ALL.iter().map(|r| r.name()).collect();
            bail!("unknown role {r:?}; one of {}", known.join(", "));
        }
    }
    let subject = args.subject.clone().unwrap_or_else(|| {
        let mut s = format!("dev-{}", args.roles.join("+"));
        for part in [&args.region, &args.department, &args.office] {
            if !part.is_empty() {
                s.push('-');
                s.push_str(part);
            }
        }
        s
    });
    Ok(Claims {
        region: args.region.clone(),
        department: args.department.clone(),
        office: args.office.clone(),
        on_behalf: args.on_behalf,
        ..Claims::valid_for(subject, args.roles.clone(), args.ttl)
    })
}

/// `shenguan token issue`.
pub(crate) fn issue(args: &TokenArgs) -> Result<String> {
    let path = beside(&args.db, "dev-key");
    let key = DevKey::load(&path).with_context(|| {
        format!(
            "no dev key at {} (start `shenguan serve --db {}` without keys first)",
            path.display(),
            args.db.display()
        )
    })?;
    Ok(key.mint(&dev_claims(args)?))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{what} {}", path.display()))
}

/// The server's security from `serve`'s flags: keys (or dev mode), TLS, accounts, limits.
pub(crate) fn server(args: &SecurityArgs, db: &Path, listen: SocketAddr) -> Result<Security> {
    let keyed = args.jwt_keys.is_some() || args.jwks.is_some();
    if args.production {
        if !keyed {
            bail!(
                "--production needs token keys: give --jwt-keys (PEM public keys of the identity provider) \
                 or --jwks, and --issuer"
            );
        }
        if args.issuer.as_deref().is_none_or(str::is_empty) {
            bail!("--production needs --issuer: the `iss` the identity provider's tokens carry");
        }
        if args.tls_cert.is_none() {
            tracing::warn!(
                "production without --tls-cert: tokens cross the network in clear unless a proxy terminates TLS"
            );
        }
    }
    // Every file is read and checked before dev mode makes a key or prints a token.
    let accounts = match &args.service_accounts {
        Some(path) => Accounts::load(path).map_err(|e| anyhow!("service accounts: {e}"))?,
        None => Accounts::default(),
    };
    if !accounts.is_empty() && args.client_ca.is_none() {
        bail!("--service-accounts needs --client-ca: client certificates are only asked for with a CA to verify them");
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Tls {
            cert: read(cert, "TLS certificate")?,
            key: read(key, "TLS key")?,
            client_ca: args.client_ca.as_deref().map(|p| read(p, "client CA")).transpose()?,
            client_required: args.require_client_cert,
        }),
        _ => None,
    };
    let verifier = if keyed {
        let config = verify::Config {
            pem: args.jwt_keys.clone(),
            jwks: args.jwks.clone(),
            issuer: args.issuer.clone().unwrap_or_default(),
            audience: args.audience.clone(),
            leeway: args.token_leeway.as_secs(),
            dev: None,
        };
        if config.issuer.is_empty() {
            bail!("--issuer is required with --jwt-keys or --jwks");
        }
        Verifier::new(config).map_err(|e| anyhow!("token keys: {e}"))?
    } else {
        dev_mode(db, listen)?
    };
    let dev_token = (!keyed).then(|| std::fs::read_to_string(beside(db, "dev-token")).ok()).flatten();
    let mut security = Security::with(Mode::Verify(Arc::new(verifier)));
    security.dev_token = dev_token.map(|t| t.trim().to_owned());
    security.accounts = accounts;
    security.tls = tls;
    security.rate = args.rate_limit;
    security.failed_auth_rate = args.failed_auth_rate;
    security.connections.max_connections = args.max_connections;
    security.connections.per_peer = args.max_connections_per_peer;
    security.connections.idle = args.idle_timeout;
    security.connections.handshake = security.connections.handshake.min(args.idle_timeout);
    security.bodies.body_timeout = args.body_timeout;
    Ok(security)
}

/// No keys: sign with a local key, hand out an admin token, and say so loudly.
fn dev_mode(db: &Path, listen: SocketAddr) -> Result<Verifier> {
    let key_path = beside(db, "dev-key");
    let key = DevKey::load_or_create(&key_path).with_context(|| format!("dev key {}", key_path.display()))?;
    let token_path = beside(db, "dev-token");
    let args = TokenArgs {
        roles: vec!["engine_admin".into()],
        region: String::new(),
        department: String::new(),
        office: String::new(),
        subject: Some("dev-admin".into()),
        on_behalf: false,
        ttl: std::time::Duration::from_secs(12 * 3600),
        db: db.to_owned(),
    };
    let token = key.mint(&dev_claims(&args)?);
    write_private(&token_path, &token).with_context(|| format!("dev token {}", token_path.display()))?;
    let config = verify::Config::dev(key);
    let verifier = Verifier::new(config).map_err(|e| anyhow!("dev key: {e}"))?;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "\n*** DEV MODE: no token keys configured. Tokens are signed with the local key {} \
         (HS256). Never use this in production: `--production` refuses it. ***\n\
         An engine-admin token valid for 12 hours is in {} (the CLI reads it from there in this folder):\n  \
         export SHENGUAN_TOKEN={token}\n\
         Try: shenguan case list --server http://{listen}\n\
         Other roles: shenguan token issue --role platform --region 320700\n",
        key_path.display(),
        token_path.display(),
    );
    tracing::warn!(key = %key_path.display(), "dev mode: tokens signed with a local key");
    Ok(verifier)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    // `mode` applies only to a file created now: one left by an older version is made private too.
    #[cfg(unix)]
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// `shenguan tls dev-cert`: a development CA, a server certificate for `names` and client
/// certificates, written into `dir`; answers the files written. Nothing is overwritten.
pub(crate) fn dev_cert(dir: &Path, names: &[String], clients: &[String]) -> Result<Vec<std::path::PathBuf>> {
    if names.is_empty() {
        bail!("give at least one --name the server is reached by");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let mut files: Vec<(String, String, bool)> = Vec::new();
    let ca = shenguan::server::pki::DevCa::new("shenguan development CA")?;
    files.push(("ca.pem".into(), ca.cert_pem(), false));
    files.push(("ca.key".into(), ca.key_pem(), true));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let server = ca.issue(&names, false)?;
    files.push(("server.pem".into(), server.cert_pem, false));
    files.push(("server.key".into(), server.key_pem, true));
    for client in clients {
        if client.is_empty() || !client.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            bail!("--client {client:?}: use letters, digits, '-', '_' or '.'");
        }
        let issued = ca.issue(&[client.as_str()], true)?;
        files.push((format!("client-{client}.pem"), issued.cert_pem, false));
        files.push((format!("client-{client}.key"), issued.key_pem, true));
    }
    for (name, _, _) in &files {
        let path = dir.join(name);
        if path.exists() {
            bail!("{} exists already; choose an empty folder", path.display());
        }
    }
    let mut written = Vec::new();
    for (name, text, secret) in files {
        let path = dir.join(name);
        if secret { write_private(&path, &text) } else { std::fs::write(&path, text) }
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
