//! The in-process target API on loopback, over HTTP or HTTPS: it records
//! every request it receives and serves routes that are slow, redirect,
//! stream large bodies or demand a bearer token; [`Servers`] starts it
//! together with the [`token endpoint`](super::oauth).

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::oauth::token_endpoint;
use super::payload::{hex, pattern};
use super::pki::TestPki;
use super::{wait_until, WAIT};

/// The target API and token endpoint of one test.
pub struct Servers {
    /// What both servers saw, and the switches a test flips.
    pub state: Arc<ApiState>,
    /// Base URL of the target API.
    pub api_url: String,
    /// URL of the token endpoint.
    pub token_url: String,
}

impl Servers {
    /// Starts both servers over plain HTTP on fresh loopback ports.
    pub async fn start() -> Self {
        let state = Arc::new(ApiState::default());
        state.token_lifetime.store(3600, Ordering::SeqCst);
        let api = serve(Arc::clone(&state), api).await;
        let tok = serve(Arc::clone(&state), token_endpoint).await;
        let token_url = format!("http://{tok}/oauth/token");
        *state.token_url.lock().unwrap() = token_url.clone();
        Self {
            state,
            api_url: format!("http://{api}"),
            token_url,
        }
    }

    /// Like [`Servers::start`], but the API and the token endpoint speak
    /// HTTPS with certificates from `pki`, demanding a client certificate
    /// when `client_auth`.
    pub async fn start_tls(pki: &TestPki, client_auth: bool) -> Self {
        Self::start_tls_with(pki.server_config(client_auth)).await
    }

    /// Like [`Servers::start_tls`], with the server TLS settings `config`.
    pub async fn start_tls_with(config: Arc<rustls::ServerConfig>) -> Self {
        let state = Arc::new(ApiState::default());
        state.token_lifetime.store(3600, Ordering::SeqCst);
        let api = serve_tls(Arc::clone(&state), api, Arc::clone(&config)).await;
        let tok = serve_tls(Arc::clone(&state), token_endpoint, config).await;
        let token_url = format!("https://{tok}/oauth/token");
        *state.token_url.lock().unwrap() = token_url.clone();
        Self {
            state,
            api_url: format!("https://{api}"),
            token_url,
        }
    }

    /// Portal environment with OAuth `private_key_jwt`: assertions signed with
    /// the key in `key_file`, verified by the token endpoint with `public_pem`.
    pub fn jwt_env(
        &self,
        key_file: &Path,
        public_pem: &str,
        alg: jsonwebtoken::Algorithm,
    ) -> Vec<(&'static str, String)> {
        let key = match alg {
            jsonwebtoken::Algorithm::ES256 => {
                jsonwebtoken::DecodingKey::from_ec_pem(public_pem.as_bytes())
            }
            _ => jsonwebtoken::DecodingKey::from_rsa_pem(public_pem.as_bytes()),
        }
        .unwrap();
        *self.state.assertion_key.lock().unwrap() = Some((key, alg));
        self.state.require_auth.store(true, Ordering::SeqCst);
        vec![
            ("PORTAL_TARGET_API_URL", self.api_url.clone()),
            ("PORTAL_USE_OAUTH", "true".into()),
            ("OAUTH2_TOKEN_URL", self.token_url.clone()),
            ("OAUTH2_CLIENT_ID", "test-client".into()),
            ("OAUTH2_AUTH_METHOD", "private_key_jwt".into()),
            (
                "OAUTH2_CLIENT_ASSERTION_KEY_FILE",
                key_file.to_str().unwrap().into(),
            ),
        ]
    }

    /// Portal environment without OAuth.
    pub fn plain_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PORTAL_TARGET_API_URL", self.api_url.clone()),
            ("PORTAL_USE_OAUTH", "false".into()),
        ]
    }

    /// Portal environment with OAuth against the test token endpoint.
    pub fn oauth_env(&self) -> Vec<(&'static str, String)> {
        self.state.require_auth.store(true, Ordering::SeqCst);
        vec![
            ("PORTAL_TARGET_API_URL", self.api_url.clone()),
            ("PORTAL_USE_OAUTH", "true".into()),
            ("OAUTH2_TOKEN_URL", self.token_url.clone()),
            ("OAUTH2_CLIENT_ID", "test-client".into()),
            ("OAUTH2_CLIENT_SECRET", "s3cret/x".into()),
        ]
    }
}

/// Parses the JSON the test API answers with.
pub fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

/// One request as the target API saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The request method.
    pub method: String,
    /// The request path, without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Every header as received.
    pub headers: HeaderMap,
    /// Body bytes received (for multipart, the sum of the parts).
    pub body_len: u64,
    /// Hex SHA-256 of the body; empty for multipart and refused requests.
    pub body_sha256: String,
    /// For multipart requests: (field name, file name, file bytes length, file digest).
    pub parts: Vec<(String, Option<String>, u64, String)>,
    /// For multipart requests: each part's Content-Type, in the same order.
    pub part_types: Vec<Option<String>>,
    /// The status the API answered.
    pub status: u16,
}

/// State shared by the target API and the token endpoint.
#[derive(Default)]
pub struct ApiState {
    /// Requests the API processed or refused, in order.
    pub requests: Mutex<Vec<Recorded>>,
    /// Requests to `/slow` wait for this.
    pub release_slow: Notify,
    /// Set once `/slow` requests are let go, so later ones do not wait.
    pub slow_released: AtomicBool,
    /// Tokens the token endpoint issued and the API accepts.
    pub valid_tokens: Mutex<HashSet<String>>,
    /// When set, the API demands a valid bearer token.
    pub require_auth: AtomicBool,
    /// Token requests received.
    pub token_fetches: AtomicU64,
    /// Lifetime stated in token responses, seconds.
    pub token_lifetime: AtomicU64,
    /// When set, the API refuses every token, as if it did not trust the issuer.
    pub reject_all_tokens: AtomicBool,
    /// Requests that arrived at `/slow` so far.
    pub slow_arrived: AtomicU64,
    /// While set, requests to `/held/...` wait before the API processes them.
    pub hold: AtomicBool,
    /// Requests waiting at the hold right now.
    pub held_now: AtomicU64,
    /// Bumped to send every waiting request away unprocessed (its caller died).
    pub abandon_generation: AtomicU64,
    /// Wakes requests waiting at the hold.
    pub wake: Notify,
    /// The status the API refuses a token with; 0 means 401.
    pub refuse_status: AtomicU16,
    /// Public key and algorithm that `private_key_jwt` assertions must verify with.
    pub assertion_key: Mutex<Option<(jsonwebtoken::DecodingKey, jsonwebtoken::Algorithm)>>,
    /// `jti` of every assertion accepted so far; a repeat is refused.
    pub seen_jti: Mutex<HashSet<String>>,
    /// Client assertions the token endpoint accepted, in order.
    pub assertions: Mutex<Vec<String>>,
    /// Why the token endpoint refused requests, in order.
    pub token_refusals: Mutex<Vec<String>>,
    /// The token endpoint's URL: the `aud` assertions must carry.
    pub token_url: Mutex<String>,
    /// What issued tokens start with, before their serial number; `token-`
    /// when unset. A test searching logs for tokens sets a distinctive one.
    pub token_prefix: Mutex<Option<String>>,
    /// When non-zero, the token endpoint refuses every request with this
    /// status and a body that repeats the request, headers included, as some
    /// endpoints do: JSON whose `error` is the `Authorization` value for 400,
    /// an OAuth error with the request in `error_description` for 401, plain
    /// text otherwise. Each body contains [`ECHO_MARKER`](super::oauth::ECHO_MARKER).
    pub echo_refusal: AtomicU16,
}

impl ApiState {
    /// The requests the API answered so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` requests wait at the hold.
    pub async fn wait_held(&self, n: u64) {
        wait_until("requests did not reach the API", || {
            self.held_now.load(Ordering::SeqCst) >= n
        })
        .await;
    }

    /// Lets held requests through.
    pub fn release_hold(&self) {
        self.hold.store(false, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Sends requests waiting at the hold away without processing them.
    pub fn abandon_held(&self) {
        self.abandon_generation.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Idempotency keys of the requests the API processed.
    pub fn idempotency_keys(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter_map(|r| r.headers.get("idempotency-key"))
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    /// Lets every waiting and future `/slow` and `/trickle` request finish.
    pub fn release_slow(&self) {
        self.slow_released.store(true, Ordering::SeqCst);
        self.release_slow.notify_waiters();
    }
}

/// The body of a `/bytes/N?seed=S` response.
pub fn bytes_route_body(n: usize, seed: u64) -> Vec<u8> {
    pattern(seed, n)
}

pub(super) type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub(super) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

async fn api(
    state: Arc<ApiState>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let headers = req.headers().clone();
    if path.starts_with("/held/") {
        let generation = state.abandon_generation.load(Ordering::SeqCst);
        state.held_now.fetch_add(1, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = state.wake.notified();
            if state.abandon_generation.load(Ordering::SeqCst) != generation
                || tokio::time::Instant::now() >= deadline
            {
                state.held_now.fetch_sub(1, Ordering::SeqCst);
                return Ok(text(StatusCode::SERVICE_UNAVAILABLE, "abandoned"));
            }
            if !state.hold.load(Ordering::SeqCst) {
                break;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
        state.held_now.fetch_sub(1, Ordering::SeqCst);
    }
    let mut status = StatusCode::OK;
    if state.require_auth.load(Ordering::SeqCst) {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let ok = token.is_some_and(|t| state.valid_tokens.lock().unwrap().contains(&t));
        if !ok || state.reject_all_tokens.load(Ordering::SeqCst) {
            status = match state.refuse_status.load(Ordering::SeqCst) {
                0 => StatusCode::UNAUTHORIZED,
                s => StatusCode::from_u16(s).unwrap(),
            };
        }
    }
    if status.is_client_error() {
        // Refuse at once and drain the body in the background, as real
        // servers do: the portal sees the 401 while its first attempt is
        // still uploading, and its retry must send the whole body again.
        let mut body = req.into_body();
        tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
        state.requests.lock().unwrap().push(Recorded {
            method,
            path,
            query,
            headers,
            body_len: 0,
            body_sha256: String::new(),
            parts: Vec::new(),
            part_types: Vec::new(),
            status: status.as_u16(),
        });
        return Ok(text(status, "token refused"));
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut parts = Vec::new();
    let mut part_types = Vec::new();
    let (body_len, body_sha256) =
        if content_type.starts_with("multipart/form-data") && status == StatusCode::OK {
            let boundary = multer::parse_boundary(&content_type).unwrap();
            let mut mp = multer::Multipart::new(req.into_body().into_data_stream(), boundary);
            let mut total = 0;
            while let Some(mut field) = mp.next_field().await.unwrap() {
                let name = field.name().unwrap_or("").to_string();
                let file_name = field.file_name().map(str::to_string);
                part_types.push(field.content_type().map(|t| t.to_string()));
                let mut h = Sha256::new();
                let mut n = 0u64;
                while let Some(chunk) = field.chunk().await.unwrap() {
                    n += chunk.len() as u64;
                    h.update(&chunk);
                }
                total += n;
                parts.push((name, file_name, n, hex(&h.finalize())));
            }
            (total, String::new())
        } else {
            let mut body = req.into_body();
            let mut h = Sha256::new();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                // A body cut off (its sender died) is not a request the API processed.
                let Ok(frame) = frame else {
                    return Ok(text(StatusCode::BAD_REQUEST, "body cut off"));
                };
                if let Ok(d) = frame.into_data() {
                    n += d.len() as u64;
                    h.update(&d);
                }
            }
            (n, hex(&h.finalize()))
        };
    if path == "/missing" && status == StatusCode::OK {
        status = StatusCode::NOT_FOUND;
    }
    // Redirects to `/elsewhere`, which a client that followed them would
    // ask for next: `302` to a relative path, and `307` (which keeps the
    // method and body) to this API's own absolute URL.
    let redirect = match path.as_str() {
        _ if status != StatusCode::OK => None,
        "/redirect" => Some((StatusCode::FOUND, "/elsewhere".to_string())),
        "/redirect-absolute" => {
            let host = headers.get("host").expect("a request names its Host");
            let host = host.to_str().unwrap();
            Some((
                StatusCode::TEMPORARY_REDIRECT,
                format!("http://{host}/elsewhere"),
            ))
        }
        _ => None,
    };
    if let Some((code, _)) = &redirect {
        status = *code;
    }
    state.requests.lock().unwrap().push(Recorded {
        method,
        path: path.clone(),
        query: query.clone(),
        headers,
        body_len,
        body_sha256: body_sha256.clone(),
        parts,
        part_types,
        status: status.as_u16(),
    });
    if status == StatusCode::NOT_FOUND {
        return Ok(text(status, "no such thing here"));
    }
    if let Some((code, location)) = redirect {
        let mut reply = text(code, "moved to /elsewhere");
        reply
            .headers_mut()
            .insert("location", location.parse().unwrap());
        return Ok(reply);
    }
    if path == "/slow" {
        state.slow_arrived.fetch_add(1, Ordering::SeqCst);
        loop {
            let notified = state.release_slow.notified();
            if state.slow_released.load(Ordering::SeqCst) {
                break;
            }
            if tokio::time::timeout(WAIT, notified).await.is_err() {
                break;
            }
        }
        return Ok(text(StatusCode::OK, "slow done"));
    }
    if path == "/trickle" {
        // Some bytes now, the rest once `/slow` requests are released.
        state.slow_arrived.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(vec![b'a'; 1000]))))
                .await;
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let notified = st.release_slow.notified();
                if st.slow_released.load(Ordering::SeqCst) {
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break;
                }
            }
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(vec![b'b'; 1000]))))
                .await;
        });
        return Ok(Response::builder()
            .header("content-type", "application/octet-stream")
            .body(StreamBody::new(RxStream(rx)).boxed())
            .unwrap());
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let seed = query
            .as_deref()
            .and_then(|q| q.strip_prefix("seed="))
            .and_then(|s| s.parse().ok())
            .unwrap_or(7);
        // Stream it in pieces, as a real large download would arrive.
        let body = bytes_route_body(n, seed);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            for piece in body.chunks(100_000) {
                if tx
                    .send(Ok(Frame::data(Bytes::copy_from_slice(piece))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let stream = RxStream(rx);
        return Ok(Response::builder()
            .header("content-type", "application/octet-stream")
            .body(StreamBody::new(stream).boxed())
            .unwrap());
    }
    let json = serde_json::json!({
        "body_bytes": body_len,
        "body_sha256": body_sha256,
        "path": path,
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())).boxed())
        .unwrap())
}

struct RxStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for RxStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// Serves `handler` on a fresh loopback port; the server lives as long as the runtime.
async fn serve<F, Fut>(state: Arc<ApiState>, handler: F) -> SocketAddr
where
    F: Fn(Arc<ApiState>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<BoxBody>, Infallible>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let svc = service_fn(move |req| handler(Arc::clone(&state), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Serves `handler` over TLS (`config`) on a fresh loopback port. A failed
/// handshake closes that connection only.
async fn serve_tls<F, Fut>(
    state: Arc<ApiState>,
    handler: F,
    config: Arc<rustls::ServerConfig>,
) -> SocketAddr
where
    F: Fn(Arc<ApiState>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<BoxBody>, Infallible>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = Arc::clone(&state);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) = tokio::time::timeout(WAIT, acceptor.accept(stream)).await else {
                    return;
                };
                let svc = service_fn(move |req| handler(Arc::clone(&state), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}
