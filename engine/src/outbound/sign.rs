//! The webhook signature: HMAC-SHA256 over `"{timestamp}.{body}"` with the destination's shared
//! secret, sent as `X-Shenguan-Signature: v1=<hex>` beside `X-Shenguan-Timestamp: <unix seconds>`.
//!
//! A receiver recomputes the HMAC over the timestamp header, a full stop and the raw body,
//! compares in constant time, and refuses a timestamp more than a few minutes from its own
//! clock (a replayed request). The `Idempotency-Key` header (the message's key) is what it
//! deduplicates on. `shenguan webhook verify` does the same from the command line.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-shenguan-signature";
/// The timestamp header (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-shenguan-timestamp";
/// The deduplication key header.
pub const KEY_HEADER: &str = "idempotency-key";
/// How far a timestamp may be from the receiver's clock by default (seconds).
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The timestamp header is not an integer.
    #[error("the timestamp {0:?} is not Unix seconds")]
    Timestamp(String),
    /// The timestamp is too far from now.
    #[error("the timestamp is {0} s from now, more than the {1} s allowed (a replay, or a clock off)")]
    Stale(i64, i64),
    /// The header is not `v1=<64 hex digits>`.
    #[error("the signature header is not v1=<64 hex digits>")]
    Malformed,
    /// The HMAC does not match.
    #[error("the signature does not match the body (another secret, or a changed body)")]
    Mismatch,
}

/// The key a secret file holds: its contents without surrounding whitespace (an editor's
/// trailing newline must not change the key). The engine and `shenguan webhook verify` read
/// secret files through this, so both sides agree on the key.
pub fn secret_from_file(contents: &[u8]) -> Vec<u8> {
    contents.trim_ascii().to_vec()
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC keys have any length"));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature header's value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, &timestamp.to_string(), body).finalize().into_bytes();
    format!("v1={}", hex::encode(tag))
}

/// Checks a received request: its timestamp header within `tolerance` seconds of `now` and its
/// signature header over `body`.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp.trim().parse().map_err(|_| VerifyError::Timestamp(timestamp.chars().take(32).collect()))?;
    let skew = now.saturating_sub(ts).saturating_abs();
    if skew > tolerance {
        return Err(VerifyError::Stale(skew, tolerance));
    }
    let digits = signature.trim().strip_prefix("v1=").ok_or(VerifyError::Malformed)?;
    let mut tag = [0u8; 32];
    hex::decode_to_slice(digits, &mut tag).map_err(|_| VerifyError::Malformed)?;
    // verify_slice compares in constant time.
    mac(secret, timestamp.trim(), body).verify_slice(&tag).map_err(|_| VerifyError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let secret = b"a shared secret of some length";
        let body = br#"{"key":"c1:3:0"}"#;
        let sig = sign(secret, 1_800_000_000, body);
        assert!(sig.starts_with("v1=") && sig.len() == 67, "{sig}");
        assert_eq!(verify(secret, "1800000000", &sig, body, 1_800_000_010, 300), Ok(()));
        assert_eq!(verify(b"another secret", "1800000000", &sig, body, 1_800_000_010, 300), Err(VerifyError::Mismatch));
        assert_eq!(verify(secret, "1800000000", &sig, b"{}", 1_800_000_010, 300), Err(VerifyError::Mismatch));
        assert_eq!(verify(secret, "1800000001", &sig, body, 1_800_000_010, 300), Err(VerifyError::Mismatch));
        assert_eq!(verify(secret, "1800000000", &sig, body, 1_800_001_000, 300), Err(VerifyError::Stale(1000, 300)));
        for bad in ["", "v1=", "v2=00", "v1=zz", &sig[..60], &format!("{sig}00"), "v1=é"] {
            assert!(verify(secret, "1800000000", bad, body, 1_800_000_000, 300).is_err(), "{bad:?}");
        }
        assert!(matches!(verify(secret, "soon", &sig, body, 0, 300), Err(VerifyError::Timestamp(_))));
    }

    #[test]
    fn a_secret_file_is_its_bytes_without_surrounding_whitespace() {
        assert_eq!(secret_from_file(b"  s3cret key\n"), b"s3cret key");
        assert_eq!(
            secret_from_file(b"\xff\xfe raw\r\n"),
            b"\xff\xfe raw",
            "bytes that are not UTF-8 are kept as they are"
        );
    }

    #[test]
    fn the_signature_is_the_documented_hmac() {
        // Computed independently, as the README's receiver does:
        // hmac.new(b"key", b"1.body", hashlib.sha256).hexdigest()
        assert_eq!(sign(b"key", 1, b"body"), "v1=91b5374b153842ad05b2c4eab9349b8321b14703165bd3fb8b034dfb8be98ae5");
    }
}
