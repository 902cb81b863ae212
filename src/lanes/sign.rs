//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`,
//! one per active secret, space-separated. Secrets are `whsec_<base64 key>`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("a secret must look like \"whsec_<base64>\"; generate one with: echo whsec_$(head -c 32 /dev/urandom | base64)")]
    MissingPrefix,
    #[error("the part after \"whsec_\" is not valid base64; generate one with: echo whsec_$(head -c 32 /dev/urandom | base64)")]
    BadBase64,
    #[error("the secret key is shorter than 16 bytes; use 24 to 64 random bytes")]
    TooShort,
}

/// A decoded signing key, kept as the HMAC state after the key is absorbed, so each
/// signature hashes only its message. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct Secret {
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let b64 = text.strip_prefix(PREFIX).ok_or(SecretError::MissingPrefix)?;
        let key = STANDARD.decode(b64).map_err(|_| SecretError::BadBase64)?;
        if key.len() < 16 {
            return Err(SecretError::TooShort);
        }
        let keyed = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
        Ok(Secret { keyed })
    }

    /// The MAC over `{id}.{timestamp}.{body}`.
    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(itoa(timestamp, &mut [0u8; 20]));
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// One `v1,<base64>` signature.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.mac(id, timestamp, body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// Checks one `v1,...` signature in constant time.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], signature: &str) -> bool {
        let Some(b64) = signature.strip_prefix("v1,") else {
            return false;
        };
        let Ok(expected) = STANDARD.decode(b64) else {
            return false;
        };
        self.mac(id, timestamp, body).verify_slice(&expected).is_ok()
    }
}

/// The decimal digits of `n` (as `n.to_string()` without the allocation).
fn itoa(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    let mut v = n.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

/// The `webhook-signature` header value: every secret signs.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// True when any signature in a `webhook-signature` header verifies with any secret.
pub fn verify_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    header
        .split(' ')
        .any(|sig| secrets.iter().any(|s| s.verify(id, timestamp, body, sig)))
}

/// A subscriber's secrets, each with the Unix time it expires at (if it does): what
/// signs its requests at a given time.
#[derive(Debug)]
pub struct Signer {
    secrets: Vec<(Secret, Option<i64>)>,
    /// The "every secret has expired" warning was logged.
    warned_expired: std::sync::atomic::AtomicBool,
}

impl Signer {
    /// The secrets of subscriber `index` of the config; the problems of those that do
    /// not parse, at their key paths.
    pub fn new(sub: &crate::config::Subscriber, index: usize) -> Result<Signer, Vec<crate::config::Problem>> {
        use crate::config::Problem;
        let mut problems = Vec::new();
        let mut secrets = Vec::new();
        for (j, entry) in sub.secrets.iter().enumerate() {
            let secret = Secret::parse(entry.secret())
                .map_err(|e| problems.push(Problem::new(entry.path(index, j), e.to_string())));
            let expires = entry.expires().map_err(|e| {
                problems.push(Problem::new(
                    format!("subscribers[{index}].secrets[{j}].expires"),
                    e,
                ))
            });
            if let (Ok(secret), Ok(expires)) = (secret, expires) {
                let expires = expires.map(|at| {
                    at.duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                });
                secrets.push((secret, expires));
            }
        }
        match problems.is_empty() {
            true => Ok(Signer {
                secrets,
                warned_expired: Default::default(),
            }),
            false => Err(problems),
        }
    }

    /// The `webhook-signature` value of event `id` at Unix time `ts` with `body`.
    pub fn header(&self, id: &str, ts: i64, body: &[u8]) -> String {
        signature_header(&self.signing(ts), id, ts, body)
    }

    /// The secrets that sign at Unix time `ts`: the unexpired ones. Should every one
    /// have expired (the config was checked when it loaded, so only a long-running
    /// process gets here), those that expired last go on signing, with a warning: an
    /// unsigned request would be refused anyway.
    fn signing(&self, ts: i64) -> Vec<Secret> {
        let live: Vec<Secret> = self
            .secrets
            .iter()
            .filter(|(_, exp)| exp.is_none_or(|e| e > ts))
            .map(|(s, _)| s.clone())
            .collect();
        if !live.is_empty() {
            return live;
        }
        let last = self.secrets.iter().filter_map(|(_, e)| *e).max();
        if !self
            .warned_expired
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "every secret of this subscriber has expired; signing with the last to expire: add a new one"
            );
        }
        self.secrets
            .iter()
            .filter(|(_, e)| *e == last)
            .map(|(s, _)| s.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published Standard Webhooks test vector, not our own signer's output.
    #[test]
    fn reproduces_the_standard_webhooks_test_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(secret.verify(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
            &sig
        ));
        assert!(!secret.verify("msg_other", 1614265330, br#"{"test": 2432232314}"#, &sig));
    }

    #[test]
    fn every_secret_signs_and_any_verifies() {
        let a = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = Secret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        let header = signature_header(&[a.clone(), b.clone()], "id1", 5, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(verify_header(std::slice::from_ref(&b), "id1", 5, b"{}", &header));
        assert!(!verify_header(&[b], "id1", 6, b"{}", &header));
    }

    #[test]
    fn timestamps_are_signed_as_their_decimal_digits() {
        for n in [0, 7, 1614265330, -5, i64::MAX, i64::MIN] {
            assert_eq!(itoa(n, &mut [0u8; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn bad_secrets_name_the_fix() {
        assert_eq!(Secret::parse("abc").unwrap_err(), SecretError::MissingPrefix);
        assert_eq!(Secret::parse("whsec_!!").unwrap_err(), SecretError::BadBase64);
        assert_eq!(Secret::parse("whsec_YWJj").unwrap_err(), SecretError::TooShort);
        assert_eq!(
            format!(
                "{:?}",
                Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
            ),
            "Secret(..)"
        );
    }
}
