//! A development certificate authority: a CA, server certificates for given names and client
//! certificates for mTLS, made with `rcgen`. What `shenguan tls dev-cert` writes and what the
//! tests serve TLS with. A production deployment takes its certificates from the
//! organisation's own CA instead.
//!
//! Why a CA and not one self-signed certificate: rustls refuses a certificate that is its own
//! CA as a server's (`CaUsedAsEndEntity`), so a client needs a CA to trust and a server
//! certificate that CA signed.

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make a certificate: {0}")]
pub struct PkiError(#[from] rcgen::Error);

/// A CA that signs server and client certificates.
pub struct DevCa {
    cert: rcgen::Certificate,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa(…)")
    }
}

/// A certificate and its private key, as PEM, and the certificate as DER.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
    /// The certificate (DER): what a service-account file pins by fingerprint.
    pub der: Vec<u8>,
}

impl DevCa {
    /// A new CA named `name`, valid for the default period.
    pub fn new(name: &str) -> Result<DevCa, PkiError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(DevCa { cert, params, key })
    }

    /// The CA certificate (PEM): what clients (`--ca-cert`) and an mTLS server trust.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's private key (PEM): keep it to issue more certificates, or throw it away.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for `names` (DNS names or IP addresses), for a server or a client.
    pub fn issue(&self, names: &[&str], client: bool) -> Result<Issued, PkiError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(rcgen::DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() })
    }
}
