//! OAuth2 client-credentials tokens for the portal, fetched once and shared.
//!
//! A token is reused until shortly before it expires; the margin scales with
//! its lifetime (a tenth, at most a minute), so even a 20-second token serves
//! many calls. However many jobs ask at once, one fetch runs: callers queue on
//! `fetch_lock` and find the fresh token when they get it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;

use crate::http_dispatch::{full_body, HttpClient};

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HTTP Basic with the client id and secret (RFC 6749 section 2.3.1).
    ClientSecretBasic,
    /// Client id and secret in the form body.
    ClientSecretPost,
}

impl std::str::FromStr for AuthMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "client_secret_basic" | "basic" => Ok(Self::ClientSecretBasic),
            "client_secret_post" | "post" => Ok(Self::ClientSecretPost),
            other => Err(format!(
                "unknown OAuth2 client authentication '{other}'; use client_secret_basic or client_secret_post"
            )),
        }
    }
}

/// Where and how to get tokens.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// Token endpoint URL.
    pub token_url: String,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// Optional `scope` parameter.
    pub scope: Option<String>,
    /// Optional `audience` parameter.
    pub audience: Option<String>,
    /// Client authentication method.
    pub auth_method: AuthMethod,
    /// Deadline for one token request.
    pub timeout: Duration,
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The endpoint could not be reached.
    #[error("token endpoint {url} unreachable: {detail}")]
    Unreachable {
        /// Endpoint.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The endpoint answered with an error status.
    #[error("token endpoint {url} answered HTTP {status}: {body}")]
    Refused {
        /// Endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// Start of the response body.
        body: String,
    },
    /// The answer was not a token response.
    #[error("token endpoint {url} sent an unusable answer: {detail}")]
    BadResponse {
        /// Endpoint.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// No answer in time.
    #[error("token endpoint {url} did not answer within {secs} s")]
    Timeout {
        /// Endpoint.
        url: String,
        /// Deadline.
        secs: u64,
    },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct JwtExp {
    exp: Option<u64>,
}

#[derive(Clone)]
struct Cached {
    token: Arc<str>,
    refresh_at: Instant,
}

/// How long a failed fetch is reported to callers without trying again.
const FAILURE_HOLD: Duration = Duration::from_secs(2);

/// Longest a token is reused, whatever lifetime it claims.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Tokens used when the endpoint states no lifetime and the token is no JWT.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// Shares one OAuth2 token among all jobs of a portal.
pub struct TokenCache {
    cfg: OAuthConfig,
    http: HttpClient,
    /// The token in use; read on every call, written after a fetch or on
    /// invalidation. A std mutex: it is never held across an await.
    current: std::sync::Mutex<Option<Cached>>,
    /// Held while one fetch runs so concurrent callers wait for it instead of
    /// fetching too.
    fetch_lock: tokio::sync::Mutex<()>,
    /// The last failed fetch, handed to callers that queued behind it for a
    /// moment instead of each trying again against an endpoint that is down.
    last_failure: std::sync::Mutex<Option<(Instant, TokenError)>>,
    fetches: AtomicU64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("token_url", &self.cfg.token_url)
            .field("fetches", &self.fetches.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// How long before expiry a token is replaced.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(60))
}

impl TokenCache {
    /// A cache that fetches with `http`.
    pub fn new(cfg: OAuthConfig, http: HttpClient) -> Self {
        Self {
            cfg,
            http,
            current: std::sync::Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_failure: std::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
        }
    }

    /// Number of token requests made so far.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn valid(&self) -> Option<Arc<str>> {
        let guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| Arc::clone(&c.token))
    }

    /// A valid token, fetched if none is cached.
    pub async fn token(&self) -> Result<Arc<str>, TokenError> {
        if let Some(t) = self.valid() {
            return Ok(t);
        }
        let _fetching = self.fetch_lock.lock().await;
        if let Some(t) = self.valid() {
            return Ok(t);
        }
        {
            let failure = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, e)) = failure.as_ref() {
                if at.elapsed() < FAILURE_HOLD {
                    return Err(e.clone());
                }
            }
        }
        let (token, lifetime) = match self.fetch().await {
            Ok(t) => t,
            Err(e) => {
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), e.clone()));
                return Err(e);
            }
        };
        let lifetime = lifetime.min(MAX_LIFETIME);
        let token: Arc<str> = Arc::from(token);
        let refresh_at = Instant::now() + lifetime.saturating_sub(refresh_margin(lifetime));
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Cached {
            token: Arc::clone(&token),
            refresh_at,
        });
        Ok(token)
    }

    /// Forgets `token` after the API refused it, unless a newer one replaced it already.
    pub fn invalidate(&self, token: &str) {
        let mut guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|c| &*c.token == token) {
            *guard = None;
        }
    }

    async fn fetch(&self) -> Result<(String, Duration), TokenError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let url = &self.cfg.token_url;
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = &self.cfg.scope {
            form.push(("scope", s));
        }
        if let Some(a) = &self.cfg.audience {
            form.push(("audience", a));
        }
        let mut req = hyper::Request::post(url.as_str())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        match self.cfg.auth_method {
            AuthMethod::ClientSecretBasic => {
                let pair = format!(
                    "{}:{}",
                    form_encode(&self.cfg.client_id),
                    form_encode(&self.cfg.client_secret)
                );
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                req = req.header(AUTHORIZATION, format!("Basic {b64}"));
            }
            AuthMethod::ClientSecretPost => {
                form.push(("client_id", &self.cfg.client_id));
                form.push(("client_secret", &self.cfg.client_secret));
            }
        }
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let req = req
            .body(full_body(Bytes::from(body)))
            .map_err(|e| TokenError::BadResponse {
                url: url.clone(),
                detail: format!("invalid token URL: {e}"),
            })?;
        let secs = self.cfg.timeout.as_secs();
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| TokenError::Unreachable {
                    url: url.clone(),
                    detail: crate::http_dispatch::error_chain(&e),
                })?;
            let status = resp.status();
            // Token responses are small; refuse to buffer anything large.
            let limited = http_body_util::Limited::new(resp.into_body(), 64 * 1024);
            let bytes = limited
                .collect()
                .await
                .map_err(|e| TokenError::BadResponse {
                    url: url.clone(),
                    detail: e.to_string(),
                })?
                .to_bytes();
            Ok::<_, TokenError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.cfg.timeout, exchange)
            .await
            .map_err(|_| TokenError::Timeout {
                url: url.clone(),
                secs,
            })??;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(TokenError::Refused {
                url: url.clone(),
                status: status.as_u16(),
                body: text,
            });
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|e| TokenError::BadResponse {
                url: url.clone(),
                detail: format!("not a JSON token response: {e}"),
            })?;
        let lifetime = lifetime_of(&parsed);
        log::info!(
            "fetched an OAuth2 token from {url}, valid for {} s",
            lifetime.as_secs()
        );
        Ok((parsed.access_token, lifetime))
    }
}

fn lifetime_of(resp: &TokenResponse) -> Duration {
    let from_field = match &resp.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    if let Some(secs) = from_field {
        return Duration::from_secs(secs);
    }
    // No stated lifetime: a JWT access token carries its own expiry.
    if let Ok(data) = jsonwebtoken::dangerous::insecure_decode::<JwtExp>(&resp.access_token) {
        if let Some(exp) = data.claims.exp {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            return Duration::from_secs(exp.saturating_sub(now));
        }
    }
    DEFAULT_LIFETIME
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_scales_with_lifetime() {
        assert_eq!(
            refresh_margin(Duration::from_secs(20)),
            Duration::from_secs(2)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn lifetime_from_field_string_or_default() {
        let r = TokenResponse {
            access_token: "opaque".into(),
            expires_in: Some(serde_json::json!(42)),
        };
        assert_eq!(lifetime_of(&r), Duration::from_secs(42));
        let r = TokenResponse {
            access_token: "opaque".into(),
            expires_in: Some(serde_json::json!("17")),
        };
        assert_eq!(lifetime_of(&r), Duration::from_secs(17));
        let r = TokenResponse {
            access_token: "opaque".into(),
            expires_in: None,
        };
        assert_eq!(lifetime_of(&r), DEFAULT_LIFETIME);
    }

    #[test]
    fn lifetime_from_a_jwt_without_expires_in() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let jwt = format!(
            "{}.{}.c2ln",
            b64(serde_json::json!({"alg": "HS256", "typ": "JWT"})),
            b64(serde_json::json!({"exp": now + 120, "sub": "portal"}))
        );
        let r = TokenResponse {
            access_token: jwt,
            expires_in: None,
        };
        let got = lifetime_of(&r).as_secs();
        assert!((118..=120).contains(&got), "{got}");
    }

    #[test]
    fn auth_method_parses() {
        assert_eq!(
            "client_secret_post".parse::<AuthMethod>(),
            Ok(AuthMethod::ClientSecretPost)
        );
        assert_eq!(
            "basic".parse::<AuthMethod>(),
            Ok(AuthMethod::ClientSecretBasic)
        );
        assert!("jwt".parse::<AuthMethod>().is_err());
    }
}
