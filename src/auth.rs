//! JWT authentication of WebSocket clients.
//!
//! Tokens are HS256 only (an explicit allow-list: `alg: none` and RS256 are refused), signed with
//! the secret shared with the marketplace's Auth module. `exp` and `nbf` are honoured when present;
//! `exp` is not required because tokens from npm `jsonwebtoken` often carry none. `aud`/`iss` are
//! not checked (the Auth module does not set them consistently).

use std::time::Duration;

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::protocol::{BEARER_PROTOCOL_PREFIX, SUBPROTOCOL};

/// The verified payload of a token.
pub type Claims = Map<String, Value>;

/// Why a token was refused. Each maps to an HTTP 401 with its `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    AlgorithmNotAllowed,
    AudienceInvalid,
    IssuerInvalid,
    ExpRequired,
}

/// Optional checks beyond the signature and `exp`/`nbf` (`jwtAudience`, `jwtIssuer`,
/// `jwtRequireExp`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenChecks {
    /// `aud` must be (or contain) this.
    pub audience: Option<String>,
    /// `iss` must be this.
    pub issuer: Option<String>,
    /// A token without `exp` (one that never expires) is refused.
    pub require_exp: bool,
}

impl AuthError {
    pub const ALL: [AuthError; 9] = [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::BadSignature,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::AlgorithmNotAllowed,
        AuthError::AudienceInvalid,
        AuthError::IssuerInvalid,
        AuthError::ExpRequired,
    ];

    pub fn code(self) -> &'static str {
        match self {
            AuthError::Missing => "TOKEN_MISSING",
            AuthError::Malformed => "TOKEN_MALFORMED",
            AuthError::BadSignature => "TOKEN_INVALID_SIGNATURE",
            AuthError::Expired => "TOKEN_EXPIRED",
            AuthError::NotYetValid => "TOKEN_NOT_YET_VALID",
            AuthError::AlgorithmNotAllowed => "TOKEN_ALGORITHM_NOT_ALLOWED",
            AuthError::AudienceInvalid => "TOKEN_AUDIENCE_INVALID",
            AuthError::IssuerInvalid => "TOKEN_ISSUER_INVALID",
            AuthError::ExpRequired => "TOKEN_EXP_REQUIRED",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => {
                "Authentication required: pass a JWT as ?token= or Authorization: Bearer"
            }
            AuthError::Malformed => "Invalid token: not a well-formed JWT",
            AuthError::BadSignature => "Invalid token: signature does not match",
            AuthError::Expired => "Invalid token: expired",
            AuthError::NotYetValid => "Invalid token: not valid yet (nbf)",
            AuthError::AlgorithmNotAllowed => "Invalid token: only HS256 is accepted",
            AuthError::AudienceInvalid => {
                "Invalid token: its aud is not this service's (jwtAudience)"
            }
            AuthError::IssuerInvalid => {
                "Invalid token: its iss is not the expected issuer (jwtIssuer)"
            }
            AuthError::ExpRequired => {
                "Invalid token: it has no exp, and tokens must expire (jwtRequireExp)"
            }
        }
    }
}

/// Verifies tokens against one secret. Cheap to share (`Arc`) between connections.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(secret: &str, leeway: Duration, checks: &TokenChecks) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        if let Some(audience) = &checks.audience {
            validation.set_audience(&[audience]);
            validation.validate_aud = true;
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(issuer) = &checks.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        if checks.require_exp {
            validation.required_spec_claims.insert("exp".into());
        }
        validation.leeway = leeway.as_secs();
        Self { key: DecodingKey::from_secret(secret.as_bytes()), validation }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // Checked before the signature so that the refusal names the real problem.
        match header_alg(token) {
            Some(alg) if alg == "HS256" => {}
            Some(_) => return Err(AuthError::AlgorithmNotAllowed),
            None => return Err(AuthError::Malformed),
        }
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
                ErrorKind::InvalidAudience => AuthError::AudienceInvalid,
                ErrorKind::InvalidIssuer => AuthError::IssuerInvalid,
                ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                    "exp" => AuthError::ExpRequired,
                    "aud" => AuthError::AudienceInvalid,
                    "iss" => AuthError::IssuerInvalid,
                    _ => AuthError::Malformed,
                },
                _ => AuthError::Malformed,
            })
    }
}

/// The `alg` of a token's header, read without trusting anything else in it (jsonwebtoken cannot
/// parse `alg: none` at all, and we want to name that refusal precisely).
fn header_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    Some(value.get("alg")?.as_str()?.to_string())
}

/// The user id for logs: the first of `sub`, `id`, `userId`, `user_id` that the token carries.
pub fn user_id(claims: &Claims) -> Option<String> {
    ["sub", "id", "userId", "user_id"].iter().find_map(|k| match claims.get(*k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// The claim [`user_id`] reads, with its exact JSON value (so `1` and `"1"` differ).
pub fn user_claim(claims: &Claims) -> Option<(&'static str, Value)> {
    ["sub", "id", "userId", "user_id"].iter().find_map(|k| match claims.get(*k)? {
        v @ (Value::String(_) | Value::Number(_)) => Some((*k, v.clone())),
        _ => None,
    })
}

/// What a `Sec-WebSocket-Protocol` offer says: the token it carries (`bearer.<JWT>`) and the
/// protocol to echo: `realtime-events` when offered, else none (the bearer one is never echoed:
/// the token would appear in the response; the server refuses such an offer).
pub fn token_from_protocols(offer: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(offer) = offer else { return (None, None) };
    let protocols: Vec<&str> = offer.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    let bearer = protocols.iter().find(|p| p.starts_with(BEARER_PROTOCOL_PREFIX));
    // Never the bearer one: that would put the token in the response (and proxies' logs).
    let echo = protocols.contains(&SUBPROTOCOL).then(|| SUBPROTOCOL.to_string());
    (bearer.map(|p| p[BEARER_PROTOCOL_PREFIX.len()..].to_string()), echo)
}

/// The token of a request: `?token=` in the query (percent-decoded), else `Authorization: Bearer`.
pub fn token_from_request<'a>(
    query: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<String> {
    if let Some(token) = crate::http::query_param(query, "token") {
        return Some(token);
    }
    let header = authorization?.trim();
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "test-secret";

    fn now() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
    }

    fn sign(claims: Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn auth() -> Authenticator {
        Authenticator::new(SECRET, Duration::from_secs(5), &TokenChecks::default())
    }

    #[test]
    fn accepts_tokens_without_exp() {
        let claims = auth().verify(&sign(json!({"sub": "u1"}), SECRET)).unwrap();
        assert_eq!(user_id(&claims).as_deref(), Some("u1"));
    }

    #[test]
    fn refuses_wrong_secret_expired_and_future_tokens() {
        let a = auth();
        assert_eq!(a.verify(&sign(json!({"sub":"u"}), "other")), Err(AuthError::BadSignature));
        assert_eq!(a.verify(&sign(json!({"exp": now() - 60}), SECRET)), Err(AuthError::Expired));
        assert_eq!(
            a.verify(&sign(json!({"nbf": now() + 600}), SECRET)),
            Err(AuthError::NotYetValid)
        );
        assert!(a.verify(&sign(json!({"exp": now() + 60}), SECRET)).is_ok());
    }

    #[test]
    fn refuses_alg_none_and_garbage() {
        // {"alg":"none","typ":"JWT"} . {"sub":"u"} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1In0.";
        assert_eq!(auth().verify(none), Err(AuthError::AlgorithmNotAllowed));
        assert_eq!(auth().verify("garbage"), Err(AuthError::Malformed));
        assert_eq!(auth().verify(""), Err(AuthError::Missing));
    }

    #[test]
    fn finds_the_token_in_query_or_header() {
        assert_eq!(token_from_request(Some("a=1&token=abc%2Bd"), None).as_deref(), Some("abc+d"));
        assert_eq!(token_from_request(None, Some("Bearer xyz")).as_deref(), Some("xyz"));
        assert_eq!(token_from_request(None, Some("bearer  xyz ")).as_deref(), Some("xyz"));
        assert_eq!(token_from_request(None, Some("Basic xyz")), None);
        assert_eq!(token_from_request(Some("x=1"), None), None);
    }

    #[test]
    fn finds_the_token_in_the_subprotocol_offer() {
        assert_eq!(
            token_from_protocols(Some("realtime-events, bearer.a.b.c")),
            (Some("a.b.c".into()), Some("realtime-events".into()))
        );
        assert_eq!(token_from_protocols(Some("bearer.a.b.c")), (Some("a.b.c".into()), None));
        assert_eq!(
            token_from_protocols(Some("realtime-events")),
            (None, Some("realtime-events".into()))
        );
        assert_eq!(token_from_protocols(Some("chat")), (None, None));
        assert_eq!(token_from_protocols(None), (None, None));
    }

    #[test]
    fn user_id_from_common_claims() {
        let claims: Claims = serde_json::from_value(json!({"userId": 42})).unwrap();
        assert_eq!(user_id(&claims).as_deref(), Some("42"));
    }
}
