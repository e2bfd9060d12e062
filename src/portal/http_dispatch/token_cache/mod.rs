//! OAuth2 client-credentials tokens for the portal, fetched once and shared.
//!
//! The portal proves who it is to the token endpoint with a client secret
//! (HTTP Basic or in the form) or with a signed JWT, `private_key_jwt`
//! (RFC 7523): a fresh assertion, valid for a minute, for every fetch.
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
use hyper::StatusCode;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::portal::http_dispatch::client::{full_body, HttpClient};

#[cfg(test)]
mod tests;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AuthMethod {
    /// HTTP Basic with the client id and secret (RFC 6749 section 2.3.1).
    ClientSecretBasic,
    /// Client id and secret in the form body.
    ClientSecretPost,
    /// A JWT signed with the client's private key (RFC 7523).
    PrivateKeyJwt,
}

impl std::str::FromStr for AuthMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "client_secret_basic" | "basic" => Ok(Self::ClientSecretBasic),
            "client_secret_post" | "post" => Ok(Self::ClientSecretPost),
            "private_key_jwt" => Ok(Self::PrivateKeyJwt),
            other => Err(format!(
                "unknown OAuth2 client authentication '{other}'; use client_secret_basic, client_secret_post or private_key_jwt"
            )),
        }
    }
}

/// How the portal authenticates at the token endpoint, with what it needs.
#[derive(Clone)]
pub(crate) enum ClientCredentials {
    /// HTTP Basic with the client id and this secret.
    SecretBasic(String),
    /// The client id and this secret in the form body.
    SecretPost(String),
    /// A client assertion signed with this key.
    PrivateKeyJwt(AssertionSigner),
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SecretBasic(_) => f.write_str("SecretBasic(<redacted>)"),
            Self::SecretPost(_) => f.write_str("SecretPost(<redacted>)"),
            Self::PrivateKeyJwt(s) => f.debug_tuple("PrivateKeyJwt").field(s).finish(),
        }
    }
}

impl ClientCredentials {
    /// The method's name as `OAUTH2_AUTH_METHOD` spells it.
    pub(crate) fn method_name(&self) -> &'static str {
        match self {
            Self::SecretBasic(_) => "client_secret_basic",
            Self::SecretPost(_) => "client_secret_post",
            Self::PrivateKeyJwt(_) => "private_key_jwt",
        }
    }
}

/// Where and how to get tokens.
#[derive(Clone)]
pub(crate) struct OAuthConfig {
    /// Token endpoint URL.
    pub(crate) token_url: String,
    /// Client id.
    pub(crate) client_id: String,
    /// Client authentication: a secret or a signing key.
    pub(crate) credentials: ClientCredentials,
    /// Optional `scope` parameter.
    pub(crate) scope: Option<String>,
    /// Optional `audience` parameter: who the access token is for.
    pub(crate) audience: Option<String>,
    /// API answers meaning "this token is no good": refresh and retry once.
    pub(crate) refresh_statuses: Vec<StatusCode>,
    /// Deadline for one token request.
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("credentials", &self.credentials)
            .field("scope", &self.scope)
            .field("audience", &self.audience)
            .field("refresh_statuses", &self.refresh_statuses)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `client_assertion_type` of a JWT client assertion (RFC 7523 section 2.2).
pub(crate) const JWT_BEARER_ASSERTION: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a client assertion is valid.
pub(crate) const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// Signing algorithms a client assertion may use.
const ASSERTION_ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// The claims of a client assertion (RFC 7523 section 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AssertionClaims {
    /// Issuer: the client id.
    pub(crate) iss: String,
    /// Subject: the client id.
    pub(crate) sub: String,
    /// Audience: the authorization server, by default the token URL.
    pub(crate) aud: String,
    /// Expiry, seconds since the epoch.
    pub(crate) exp: u64,
    /// Issued at, seconds since the epoch.
    pub(crate) iat: u64,
    /// Unique id, so the server can refuse a replayed assertion.
    pub(crate) jti: String,
}

/// A private key that signs client assertions. Holds the parsed key, never
/// the PEM text, and `Debug` shows only the algorithm.
#[derive(Clone)]
pub(crate) struct AssertionSigner {
    key: EncodingKey,
    alg: Algorithm,
    kid: Option<String>,
    audience: String,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// A client-assertion setting that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{setting}: {detail}")]
pub(crate) struct AssertionKeyError {
    /// The setting (environment variable) at fault.
    pub(crate) setting: &'static str,
    /// What is wrong, without any key material.
    pub(crate) detail: String,
}

/// Parses `OAUTH2_CLIENT_ASSERTION_ALG`: an ECDSA or RSA JWS algorithm name.
pub(crate) fn parse_assertion_alg(name: &str) -> Result<Algorithm, AssertionKeyError> {
    let upper = name.trim().to_ascii_uppercase();
    ASSERTION_ALGORITHMS
        .iter()
        .copied()
        .find(|a| format!("{a:?}") == upper)
        .ok_or_else(|| AssertionKeyError {
            setting: "OAUTH2_CLIENT_ASSERTION_ALG",
            detail: format!(
                "'{name}' is not supported; use ES256, ES384, RS256, RS384, RS512, PS256, PS384 or PS512"
            ),
        })
}

impl AssertionSigner {
    /// A signer from a PEM private key (EC keys in PKCS#8, RSA keys in PKCS#1
    /// or PKCS#8). Without `alg`, EC keys sign with ES256 (ES384 for a P-384
    /// key) and RSA keys with RS256. The key is tried once here, so a key that
    /// cannot sign fails at start rather than at the first token fetch.
    pub(crate) fn from_pem(
        pem: &[u8],
        alg: Option<Algorithm>,
        kid: Option<String>,
        audience: String,
    ) -> Result<Self, AssertionKeyError> {
        let key_error = |detail: String| AssertionKeyError {
            setting: "OAUTH2_CLIENT_ASSERTION_KEY_FILE",
            detail,
        };
        let ec = EncodingKey::from_ec_pem(pem).ok();
        let rsa = EncodingKey::from_rsa_pem(pem).ok();
        let (key, candidates): (EncodingKey, Vec<Algorithm>) = match (alg, ec, rsa) {
            (Some(a), Some(k), _) if a.family() == AlgorithmFamily::Ec => (k, vec![a]),
            (Some(a), _, Some(k)) if a.family() == AlgorithmFamily::Rsa => (k, vec![a]),
            (Some(a), _, _) => {
                return Err(key_error(format!(
                    "not a private key for {a:?} (OAUTH2_CLIENT_ASSERTION_ALG); {}",
                    if a.family() == AlgorithmFamily::Ec {
                        "ES algorithms need an EC key in PKCS#8 PEM (-----BEGIN PRIVATE KEY-----)"
                    } else {
                        "RS and PS algorithms need an RSA private key in PEM"
                    }
                )))
            }
            (None, Some(k), _) => (k, vec![Algorithm::ES256, Algorithm::ES384]),
            (None, None, Some(k)) => (k, vec![Algorithm::RS256]),
            (None, None, None) => {
                return Err(key_error(
                    "not an EC private key in PKCS#8 PEM (-----BEGIN PRIVATE KEY-----) or an RSA private key in PEM; \
                     convert an 'EC PRIVATE KEY' with: openssl pkcs8 -topk8 -nocrypt"
                        .into(),
                ))
            }
        };
        for candidate in &candidates {
            let signer = Self {
                key: key.clone(),
                alg: *candidate,
                kid: kid.clone(),
                audience: audience.clone(),
            };
            if signer.sign("kafkasend-key-check").is_ok() {
                return Ok(signer);
            }
        }
        Err(key_error(format!(
            "the key cannot sign with {}",
            candidates
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(" or ")
        )))
    }

    /// The signing algorithm.
    #[cfg(test)]
    pub(crate) fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The `aud` claim of every assertion.
    #[cfg(test)]
    pub(crate) fn audience(&self) -> &str {
        &self.audience
    }

    /// The claims of a new assertion for `client_id`, issued now, with a fresh `jti`.
    pub(crate) fn claims(&self, client_id: &str) -> AssertionClaims {
        let now = crate::protocol::signing::unix_now();
        AssertionClaims {
            iss: client_id.to_string(),
            sub: client_id.to_string(),
            aud: self.audience.clone(),
            exp: now + ASSERTION_LIFETIME.as_secs(),
            iat: now,
            jti: ulid::Ulid::new().to_string(),
        }
    }

    /// A new signed assertion for `client_id`.
    pub(crate) fn sign(&self, client_id: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, &self.claims(client_id), &self.key)
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum TokenError {
    /// The endpoint could not be reached.
    #[error("token endpoint {url} unreachable: {detail}")]
    Unreachable {
        /// Endpoint.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The endpoint answered with an error status. Its body is not kept:
    /// some endpoints echo the request, `Authorization` header included.
    #[error("token endpoint {url} answered HTTP {status}{}", oauth_error.as_ref().map(|e| format!(" (OAuth error '{e}')")).unwrap_or_default())]
    Refused {
        /// Endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// The OAuth `error` code of a JSON body, when it is a plain code
        /// (see [`oauth_error_code`]).
        oauth_error: Option<String>,
    },
    /// The answer was not a token response.
    #[error("token endpoint {url} sent an unusable answer: {detail}")]
    BadResponse {
        /// Endpoint.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// The client assertion could not be signed.
    #[error("cannot sign the OAuth2 client assertion: {detail}")]
    Assertion {
        /// What failed.
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

impl TokenError {
    /// What the client of a job learns: a fixed sentence with the status at
    /// most. The portal's log has the rest ([`std::fmt::Display`]); nothing
    /// the token endpoint sent reaches the sender.
    pub(crate) fn for_sender(&self) -> String {
        let why = match self {
            Self::Unreachable { .. } => "the token endpoint is unreachable".to_string(),
            Self::Refused { status, .. } => format!("the token endpoint answered HTTP {status}"),
            Self::BadResponse { .. } => "the token endpoint sent an unusable answer".to_string(),
            Self::Assertion { .. } => "the client assertion could not be signed".to_string(),
            Self::Timeout { secs, .. } => {
                format!("the token endpoint did not answer within {secs} s")
            }
        };
        format!("the portal could not get an OAuth2 token ({why}); see the portal's log")
    }
}

/// Longest OAuth `error` code kept; the codes of RFC 6749 and its
/// extensions are under 30 characters.
const MAX_ERROR_CODE: usize = 40;

/// The `error` field of a JSON error answer, if it looks like an OAuth error
/// code (`invalid_client`): lower-case letters, digits and `_`, short, and
/// not containing the client secret. Anything else (free text, an echoed
/// header) is dropped, so the log cannot be made to hold a credential.
pub(crate) fn oauth_error_code(body: &[u8], secret: Option<&str>) -> Option<String> {
    #[derive(Deserialize)]
    struct ErrorAnswer {
        error: serde_json::Value,
    }
    let answer: ErrorAnswer = serde_json::from_slice(body).ok()?;
    let code = answer.error.as_str()?;
    let plain = !code.is_empty()
        && code.len() <= MAX_ERROR_CODE
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let holds_secret = secret.is_some_and(|s| !s.is_empty() && code.contains(s));
    (plain && !holds_secret).then(|| code.to_string())
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
pub(crate) struct TokenCache {
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
    /// Token requests made, for `fetch_count` and the portal's metrics.
    fetches: AtomicU64,
    /// Token requests that failed.
    failures: AtomicU64,
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
pub(crate) fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(60))
}

impl TokenCache {
    /// A cache that fetches with `http`.
    pub(crate) fn new(cfg: OAuthConfig, http: HttpClient) -> Self {
        Self {
            cfg,
            http,
            current: std::sync::Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_failure: std::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Whether an API answer with `status` means the token was refused, so it
    /// is worth a fresh token and one more try.
    pub(crate) fn refreshes_on(&self, status: StatusCode) -> bool {
        self.cfg.refresh_statuses.contains(&status)
    }

    /// Number of token requests made so far.
    pub(crate) fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Number of token requests that failed so far.
    pub(crate) fn failure_count(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn valid(&self) -> Option<Arc<str>> {
        let guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| Arc::clone(&c.token))
    }

    /// A valid token, fetched if none is cached.
    pub(crate) async fn token(&self) -> Result<Arc<str>, TokenError> {
        self.token_noting(&mut false).await
    }

    /// [`token`](Self::token), setting `fetched` when this call asked the
    /// token endpoint (for the `token` span: a cached token is no work).
    pub(crate) async fn token_noting(&self, fetched: &mut bool) -> Result<Arc<str>, TokenError> {
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
        *fetched = true;
        let (token, lifetime) = match self.fetch().await {
            Ok(t) => t,
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
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
    pub(crate) fn invalidate(&self, token: &str) {
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
        let assertion;
        match &self.cfg.credentials {
            ClientCredentials::SecretBasic(secret) => {
                let pair = format!(
                    "{}:{}",
                    form_encode(&self.cfg.client_id),
                    form_encode(secret)
                );
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                req = req.header(AUTHORIZATION, format!("Basic {b64}"));
            }
            ClientCredentials::SecretPost(secret) => {
                form.push(("client_id", &self.cfg.client_id));
                form.push(("client_secret", secret));
            }
            ClientCredentials::PrivateKeyJwt(signer) => {
                assertion =
                    signer
                        .sign(&self.cfg.client_id)
                        .map_err(|e| TokenError::Assertion {
                            detail: e.to_string(),
                        })?;
                form.push(("client_id", &self.cfg.client_id));
                form.push(("client_assertion_type", JWT_BEARER_ASSERTION));
                form.push(("client_assertion", &assertion));
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
                    detail: crate::portal::http_dispatch::client::with_tls_hint(
                        crate::util::error_chain(&e),
                    ),
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
            let secret = match &self.cfg.credentials {
                ClientCredentials::SecretBasic(s) | ClientCredentials::SecretPost(s) => Some(&**s),
                ClientCredentials::PrivateKeyJwt(_) => None,
            };
            return Err(TokenError::Refused {
                url: url.clone(),
                status: status.as_u16(),
                oauth_error: oauth_error_code(&bytes, secret),
            });
        }
        // serde's message can quote a value from the body (`invalid type:
        // string "…"`), and the body of a 2xx answer may hold a token: say
        // only what kind of error it was and where.
        let parsed: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|e| TokenError::BadResponse {
                url: url.clone(),
                detail: format!(
                    "not a JSON token response ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
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
            return Duration::from_secs(exp.saturating_sub(crate::protocol::signing::unix_now()));
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
