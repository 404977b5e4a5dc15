//! Secrets of the signaling server: room tokens and TURN credentials
//!
//! * **Room tokens** (signaling.md version 2) are JSON Web Tokens (RFC 7519) signed with
//!   HMAC-SHA256 (`"alg": "HS256"`, RFC 7515) under a secret the server and the application's
//!   backend share. Their claims are `room` (required), `sub` (the peer id granted; absent =
//!   any id), `exp` (required) and optionally `nbf`, both in seconds since 1970.
//!   [`mint_room_token`] writes one, [`verify_room_token`] checks one. Only HS256 is accepted:
//!   `"alg": "none"` and every other algorithm are refused before anything else is read.
//! * **TURN REST credentials** ([`turn_rest_credential`]) follow coturn's `use-auth-secret`
//!   scheme: `username = "<expiry unix seconds>:<peer id>"`,
//!   `credential = base64(HMAC-SHA1(secret, username))`, so that a TURN server sharing the
//!   secret accepts them until the expiry and no long-lived password reaches clients.
//!
//! Nothing here reads a clock: the caller passes the wall-clock time in.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::signal::{PeerId, RoomId};

/// Longest room token accepted, in characters; longer ones are refused unread
pub const MAX_TOKEN_LEN: usize = 4096;

/// A shared secret (room tokens, TURN credentials); its `Debug` form does not show it
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret of these bytes; `None` if there are none
    pub fn new(bytes: impl Into<Vec<u8>>) -> Option<Self> {
        let bytes = bytes.into();
        (!bytes.is_empty()).then_some(Self(bytes))
    }

    /// The secret a file holds: its contents without trailing whitespace (the newline an
    /// editor or `echo` leaves), so that the same file works for coturn's
    /// `static-auth-secret`; `None` if nothing is left
    pub fn from_file_contents(contents: &[u8]) -> Option<Self> {
        let end = contents
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        Self::new(&contents[..end])
    }

    /// The secret's bytes
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.0.len())
    }
}

/// The claims of a room token
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomClaims {
    /// The room the token admits to
    pub room: RoomId,
    /// The peer id the token grants; `None` = any id
    pub sub: Option<PeerId>,
    /// Expiry, seconds since 1970: the token is refused from this second on
    pub exp: u64,
    /// Not before, seconds since 1970: the token is refused before this second
    pub nbf: Option<u64>,
}

/// Why a room token was refused
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or too long
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header names another algorithm than HS256 (or asks for extensions)
    #[error("unsupported token algorithm: only HS256 is accepted")]
    Algorithm,
    /// The signature does not match the secret
    #[error("bad token signature")]
    Signature,
    /// The claims are missing or of the wrong type
    #[error("bad token claims: {0}")]
    Claims(String),
    /// `exp` has passed
    #[error("token expired")]
    Expired,
    /// `nbf` has not come yet
    #[error("token not valid yet")]
    NotYetValid,
}

type HmacSha256 = Hmac<sha2::Sha256>;

/// The header every token this crate mints carries
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Serialize)]
struct ClaimsOut<'a> {
    room: &'a RoomId,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a PeerId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    exp: u64,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<Value>,
}

#[derive(Deserialize)]
struct ClaimsIn {
    room: Option<Value>,
    #[serde(default)]
    sub: Option<Value>,
    exp: Option<Value>,
    #[serde(default)]
    nbf: Option<Value>,
}

/// Writes a room token: HS256 over `claims` with `secret`
pub fn mint_room_token(secret: &Secret, claims: &RoomClaims) -> String {
    let payload = ClaimsOut {
        room: &claims.room,
        sub: claims.sub.as_ref(),
        nbf: claims.nbf,
        exp: claims.exp,
    };
    // Cannot fail: ids and integers only.
    let payload = serde_json::to_vec(&payload).expect("claims serialize to JSON");
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = hmac_sha256(secret, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Checks a room token's algorithm, signature and times at wall-clock time `now`
/// (time since 1970) and returns its claims
///
/// Whether the claims fit the announce (room, peer id) is the caller's decision.
pub fn verify_room_token(
    secret: &Secret,
    token: &str,
    now: Duration,
) -> Result<RoomClaims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("not three dot-separated parts"));
    };
    let decode = |part: &str, what| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| TokenError::Malformed(what))
    };
    let header: Header = serde_json::from_slice(&decode(header_b64, "header is not base64url")?)
        .map_err(|_| TokenError::Malformed("header is not a JSON object"))?;
    if header.alg != "HS256" || header.crit.is_some() {
        return Err(TokenError::Algorithm);
    }
    let signature = decode(signature_b64, "signature is not base64url")?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    let mut mac = HmacSha256::new_from_slice(secret.expose()).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| TokenError::Signature)?;

    let claims: ClaimsIn =
        serde_json::from_slice(&decode(payload_b64, "payload is not base64url")?)
            .map_err(|_| TokenError::Malformed("payload is not a JSON object"))?;
    let room = match claims.room {
        Some(Value::String(room)) => {
            RoomId::new(room).map_err(|e| TokenError::Claims(format!("room: {e}")))?
        }
        Some(_) => return Err(TokenError::Claims("room must be a string".into())),
        None => return Err(TokenError::Claims("room is required".into())),
    };
    let sub = match claims.sub {
        None | Some(Value::Null) => None,
        Some(Value::String(sub)) => {
            Some(PeerId::new(sub).map_err(|e| TokenError::Claims(format!("sub: {e}")))?)
        }
        Some(_) => return Err(TokenError::Claims("sub must be a string".into())),
    };
    let exp = match claims.exp {
        Some(v) => {
            numeric_date(&v).ok_or_else(|| TokenError::Claims("exp must be a number".into()))?
        }
        None => return Err(TokenError::Claims("exp is required".into())),
    };
    let nbf = match claims.nbf {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            numeric_date(&v).ok_or_else(|| TokenError::Claims("nbf must be a number".into()))?,
        ),
    };
    let now_s = now.as_secs_f64();
    if now_s >= exp {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| now_s < nbf) {
        return Err(TokenError::NotYetValid);
    }
    Ok(RoomClaims {
        room,
        sub,
        // Whole seconds: RFC 7519 allows fractions, which this crate never writes.
        exp: exp.max(0.0) as u64,
        nbf: nbf.map(|n| n.max(0.0) as u64),
    })
}

/// A NumericDate (RFC 7519): any finite JSON number of seconds
fn numeric_date(v: &Value) -> Option<f64> {
    v.as_f64().filter(|f| f.is_finite())
}

/// TURN REST credentials for `peer_id`, valid until `expiry` (seconds since 1970):
/// `(username, credential)` as coturn's `use-auth-secret` checks them
pub fn turn_rest_credential(secret: &Secret, peer_id: &PeerId, expiry: u64) -> (String, String) {
    let c = crate::ice::turn_rest_credentials(secret.expose(), expiry, peer_id.as_str());
    (c.username, c.password)
}

fn hmac_sha256(secret: &Secret, data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret.expose()).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use quickcheck::{QuickCheck, TestResult};

    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s).unwrap()
    }

    fn at(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn claims(sub: Option<&str>, exp: u64) -> RoomClaims {
        RoomClaims {
            room: RoomId::new("demo").unwrap(),
            sub: sub.map(|s| PeerId::new(s).unwrap()),
            exp,
            nbf: None,
        }
    }

    /// Computed once outside this code, with the shell and OpenSSL:
    ///
    /// ```text
    /// b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
    /// h=$(printf '%s' '{"alg":"HS256","typ":"JWT"}' | b64url)
    /// p=$(printf '%s' '{"room":"demo","sub":"alice","exp":1700003600}' | b64url)
    /// s=$(printf '%s' "$h.$p" | openssl dgst -sha256 -hmac room-secret -binary | b64url)
    /// echo "$h.$p.$s"
    /// ```
    const OPENSSL_JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb29tIjoiZGVtbyIsInN1YiI6ImFsaWNlIiwiZXhwIjoxNzAwMDAzNjAwfQ.hFGU5UrgXO_XmnpsfNN6m1Tdbc3seDvdQvdjWkds5S8";

    #[test]
    fn minted_tokens_match_an_independent_implementation() {
        let token = mint_room_token(
            &secret("room-secret"),
            &claims(Some("alice"), 1_700_003_600),
        );
        assert_eq!(token, OPENSSL_JWT);
        assert_eq!(
            verify_room_token(&secret("room-secret"), OPENSSL_JWT, at(1_700_000_000)),
            Ok(claims(Some("alice"), 1_700_003_600))
        );
    }

    #[test]
    fn the_rfc_7515_example_signature_verifies() {
        // RFC 7515, appendix A.1: an HS256 JWS and its key (a JWK "k", base64url). Its claims
        // have no room, so the token is refused for its claims, after its signature passed.
        let key = URL_SAFE_NO_PAD
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        let jws = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let key = Secret::new(key).unwrap();
        assert_eq!(
            verify_room_token(&key, jws, at(0)),
            Err(TokenError::Claims("room is required".into()))
        );
        // One character of the signature changed ("dBjf" -> "eBjf").
        let tampered = jws.replace(".dBjf", ".eBjf");
        assert_eq!(
            verify_room_token(&key, &tampered, at(0)),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn times_are_checked() {
        let s = secret("k");
        let mut c = claims(None, 100);
        c.nbf = Some(50);
        let token = mint_room_token(&s, &c);
        assert_eq!(
            verify_room_token(&s, &token, at(49)),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(verify_room_token(&s, &token, at(50)), Ok(c.clone()));
        assert_eq!(
            verify_room_token(&s, &token, Duration::from_millis(99_999)),
            Ok(c)
        );
        assert_eq!(
            verify_room_token(&s, &token, at(100)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let s = secret("k");
        let good = mint_room_token(&s, &claims(Some("bob"), 100));
        assert_eq!(
            verify_room_token(&secret("other"), &good, at(0)),
            Err(TokenError::Signature)
        );
        // "alg": "none" with an empty signature, the classic forgery.
        let parts: Vec<&str> = good.split('.').collect();
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            parts[1]
        );
        assert_eq!(
            verify_room_token(&s, &none, at(0)),
            Err(TokenError::Algorithm)
        );
        let hs512 = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS512"}"#),
            parts[1],
            parts[2]
        );
        assert_eq!(
            verify_room_token(&s, &hs512, at(0)),
            Err(TokenError::Algorithm)
        );
        // A payload swapped under the same signature.
        let other = URL_SAFE_NO_PAD.encode(r#"{"room":"demo","sub":"eve","exp":100}"#);
        let swapped = format!("{}.{other}.{}", parts[0], parts[2]);
        assert_eq!(
            verify_room_token(&s, &swapped, at(0)),
            Err(TokenError::Signature)
        );
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!.!.!",
            &format!("{good}.x"),
            &"a".repeat(5000),
        ] {
            assert!(
                matches!(
                    verify_room_token(&s, bad, at(0)),
                    Err(TokenError::Malformed(_))
                ),
                "{bad:.40}"
            );
        }
        // Signed, but with claims of the wrong shape.
        let signed = |payload: &str| {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(HEADER),
                URL_SAFE_NO_PAD.encode(payload)
            );
            format!(
                "{input}.{}",
                URL_SAFE_NO_PAD.encode(hmac_sha256(&s, input.as_bytes()))
            )
        };
        for payload in [
            r#"{"exp":100}"#,
            r#"{"room":"demo"}"#,
            r#"{"room":"a b","exp":100}"#,
            r#"{"room":5,"exp":100}"#,
            r#"{"room":"demo","exp":"100"}"#,
            r#"{"room":"demo","exp":100,"sub":7}"#,
            r#"{"room":"demo","exp":100,"nbf":"x"}"#,
        ] {
            assert!(
                matches!(
                    verify_room_token(&s, &signed(payload), at(0)),
                    Err(TokenError::Claims(_))
                ),
                "{payload}"
            );
        }
        assert!(matches!(
            verify_room_token(&s, &signed("[]"), at(0)),
            Err(TokenError::Malformed(_))
        ));
        // Fractional dates are fine; extra claims are ignored.
        let ok = signed(r#"{"room":"demo","exp":100.5,"iss":"me","sub":null}"#);
        assert_eq!(verify_room_token(&s, &ok, at(0)), Ok(claims(None, 100)));
    }

    #[test]
    fn prop_arbitrary_tokens_never_panic() {
        fn prop(token: String, bytes: Vec<u8>) -> TestResult {
            let s = Secret::new("k").unwrap();
            let _ = verify_room_token(&s, &token, Duration::ZERO);
            let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
            let built = format!("{}.{}.{}", b64(HEADER.as_bytes()), b64(&bytes), b64(&bytes));
            let _ = verify_room_token(&s, &built, Duration::ZERO);
            TestResult::passed()
        }
        QuickCheck::new()
            .tests(2000)
            .quickcheck(prop as fn(String, Vec<u8>) -> TestResult);
    }

    /// Computed once with OpenSSL:
    /// `printf '%s' 1700003600:alice | openssl dgst -sha1 -hmac north-sea-secret -binary | base64`
    #[test]
    fn turn_credentials_match_openssl() {
        let (username, credential) = turn_rest_credential(
            &secret("north-sea-secret"),
            &PeerId::new("alice").unwrap(),
            1_700_003_600,
        );
        assert_eq!(username, "1700003600:alice");
        assert_eq!(credential, "XNu2e1NVrQEGzUB75NhB3SrIHpE=");
    }

    #[test]
    fn secrets_from_files_lose_trailing_whitespace_and_stay_hidden() {
        assert_eq!(
            Secret::from_file_contents(b"s3cret\n").unwrap().expose(),
            b"s3cret"
        );
        assert_eq!(
            Secret::from_file_contents(b"  two words \r\n\n")
                .unwrap()
                .expose(),
            b"  two words"
        );
        assert_eq!(Secret::from_file_contents(b" \n"), None);
        assert_eq!(Secret::new(Vec::new()), None);
        let shown = format!("{:?}", secret("hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
