//! A small REST API to try KafkaSend against.
//!
//! `cargo run --example demo_api -- 127.0.0.1:8080`
//!
//! - any method on any path: answers JSON with what it received (method,
//!   path, query, headers, body length and SHA-256), reading the body as a
//!   stream, so uploads of any size work;
//! - `GET /bytes/N`: streams N bytes of a repeating pattern back.
//!
//! With `DEMO_OAUTH_CLIENT_ID` and `DEMO_OAUTH_CLIENT_SECRET` set it is also
//! its own OAuth2 authorization server, so a portal can run with OAuth on:
//!
//! - `POST /oauth/token` with `grant_type=client_credentials` and those
//!   credentials (HTTP Basic or in the form) answers a bearer token;
//! - every other path then requires `Authorization: Bearer <that token>`
//!   and answers 401 without it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kafkasend::portal::http_dispatch::token_cache::form_encode;
use sha2::{Digest, Sha256};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn json_escape(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The demo's OAuth2 client and the one token it hands out.
struct OAuth {
    client_id: String,
    client_secret: String,
    token: String,
}

impl OAuth {
    fn from_env() -> Option<Self> {
        let client_id = std::env::var("DEMO_OAUTH_CLIENT_ID").ok()?;
        let client_secret = std::env::var("DEMO_OAUTH_CLIENT_SECRET").ok()?;
        Some(Self {
            client_id,
            client_secret,
            token: format!("demo-{}", ulid::Ulid::new()),
        })
    }

    /// True when the form or the Basic header carries our credentials, as
    /// `client_secret_post` or `client_secret_basic` send them.
    fn client_ok(&self, authorization: Option<&str>, form: &str) -> bool {
        let id = form_encode(&self.client_id);
        let secret = form_encode(&self.client_secret);
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        );
        let fields: Vec<&str> = form.split('&').collect();
        authorization == Some(basic.as_str())
            || (fields.contains(&format!("client_id={id}").as_str())
                && fields.contains(&format!("client_secret={secret}").as_str()))
    }
}

fn json_response(status: u16, text: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)).boxed())
        .unwrap_or_default()
}

/// `POST /oauth/token`: a client-credentials grant for our one client.
async fn token(req: Request<Incoming>, oauth: &OAuth) -> Response<Body> {
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // A token request is a few hundred bytes; refuse anything large.
    let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
    {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => return json_response(400, "{\"error\": \"invalid_request\"}\n".into()),
    };
    if !body
        .split('&')
        .any(|f| f == "grant_type=client_credentials")
    {
        return json_response(400, "{\"error\": \"unsupported_grant_type\"}\n".into());
    }
    if !oauth.client_ok(authorization.as_deref(), &body) {
        return json_response(401, "{\"error\": \"invalid_client\"}\n".into());
    }
    json_response(
        200,
        format!(
            "{{\"access_token\": {}, \"token_type\": \"Bearer\", \"expires_in\": 3600}}\n",
            json_escape(&oauth.token)
        ),
    )
}

async fn handle(
    req: Request<Incoming>,
    oauth: Arc<Option<OAuth>>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if let Some(oauth) = oauth.as_ref() {
        if path == "/oauth/token" && req.method() == hyper::Method::POST {
            return Ok(token(req, oauth).await);
        }
        let expected = format!("Bearer {}", oauth.token);
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if bearer != Some(expected.as_str()) {
            return Ok(json_response(
                401,
                "{\"error\": \"a bearer token from POST /oauth/token is required\"}\n".into(),
            ));
        }
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
            let mut left = n;
            while left > 0 {
                let take = left.min(block.len() as u64) as usize;
                if tx
                    .send(Ok(Frame::data(Bytes::copy_from_slice(&block[..take]))))
                    .await
                    .is_err()
                {
                    return;
                }
                left -= take as u64;
            }
        });
        let stream = futures_like::ReceiverStream(rx);
        let resp = Response::builder()
            .header("content-type", "application/octet-stream")
            .header("content-length", n)
            .body(StreamBody::new(stream).boxed())
            .unwrap_or_default();
        return Ok(resp);
    }
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: Vec<String> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            format!(
                "{}: {}",
                json_escape(n.as_str()),
                json_escape(v.to_str().unwrap_or("?"))
            )
        })
        .collect();
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    len += data.len() as u64;
                    hasher.update(&data);
                }
            }
            Err(_) => break,
        }
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let text = format!(
        "{{\"method\": {}, \"path\": {}, \"query\": {}, \"headers\": {{{}}}, \"body_bytes\": {len}, \"body_sha256\": \"{digest}\"}}\n",
        json_escape(&method),
        json_escape(&path),
        json_escape(&query),
        headers.join(", ")
    );
    let resp = Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)).boxed())
        .unwrap_or_default();
    Ok(resp)
}

/// A minimal `Stream` over a tokio receiver, so the example needs no stream crate.
mod futures_like {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

    impl<T> futures_core::Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let oauth = Arc::new(OAuth::from_env());
    eprintln!(
        "demo API listening on http://{}{}",
        listener.local_addr()?,
        if oauth.is_some() {
            " (OAuth on: POST /oauth/token)"
        } else {
            ""
        }
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let oauth = oauth.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, oauth.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
