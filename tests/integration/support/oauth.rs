//! The in-process OAuth2 token endpoint: `client_credentials` with a client
//! secret or a `private_key_jwt` assertion, checked as an authorization
//! server would, or refusals that echo the request back.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::api::{text, ApiState, BoxBody};

/// Text in every body the echoing token endpoint sends.
pub const ECHO_MARKER: &str = "echoed-by-the-token-endpoint";

/// Decodes an `application/x-www-form-urlencoded` body.
pub fn form_decode(body: &str) -> std::collections::HashMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let (b'%', Some(Ok(b))) = (bytes[i], hex.map(|h| u8::from_str_radix(h, 16))) {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The claims a client assertion must carry.
#[derive(serde::Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    exp: u64,
    iat: u64,
    jti: String,
}

/// Checks a `private_key_jwt` token request the way an authorization server
/// would: signature with the registered public key, then every claim.
fn check_assertion(
    state: &ApiState,
    form: &std::collections::HashMap<String, String>,
) -> Result<String, String> {
    let client_id = form.get("client_id").map(String::as_str).unwrap_or("");
    if client_id != "test-client" {
        return Err(format!("unknown client_id '{client_id}'"));
    }
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return Err("wrong client_assertion_type".into());
    }
    let assertion = form.get("client_assertion").ok_or("no client_assertion")?;
    let Some((key, alg)) = state.assertion_key.lock().unwrap().clone() else {
        return Err("no key registered for private_key_jwt".into());
    };
    let mut v = jsonwebtoken::Validation::new(alg);
    v.set_audience(&[state.token_url.lock().unwrap().clone()]);
    v.set_issuer(&["test-client"]);
    v.sub = Some("test-client".into());
    v.leeway = 0;
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let data = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &v)
        .map_err(|e| format!("assertion refused: {e}"))?;
    let c = data.claims;
    if c.iss != client_id || c.sub != client_id {
        return Err("iss and sub must be the client id".into());
    }
    if c.exp <= c.iat || c.exp - c.iat > 300 {
        return Err("the assertion must be short-lived".into());
    }
    if c.jti.is_empty() || !state.seen_jti.lock().unwrap().insert(c.jti.clone()) {
        return Err(format!("jti '{}' used before", c.jti));
    }
    Ok(assertion.clone())
}

pub(super) async fn token_endpoint(
    state: Arc<ApiState>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("test-client:s3cret%2Fx")
    );
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let auth_ok = authorization == expected;
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let echo = state.echo_refusal.load(Ordering::SeqCst);
    if echo != 0 {
        state.token_refusals.lock().unwrap().push("echoed".into());
        let request = format!(
            "{ECHO_MARKER}: POST /oauth/token\r\nAuthorization: {authorization}\r\n\u{1b}[2J\r\n{}",
            String::from_utf8_lossy(&body)
        );
        let answer = match echo {
            400 => serde_json::json!({"error": authorization, "request": request}).to_string(),
            401 => serde_json::json!({"error": "invalid_client", "error_description": request})
                .to_string(),
            _ => request,
        };
        return Ok(text(StatusCode::from_u16(echo).unwrap(), answer));
    }
    let form = form_decode(&String::from_utf8_lossy(&body));
    let refuse = |why: String| {
        state.token_refusals.lock().unwrap().push(why.clone());
        let json = serde_json::json!({"error": "invalid_client", "error_description": why});
        Ok(text(StatusCode::UNAUTHORIZED, json.to_string()))
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return refuse("grant_type must be client_credentials".into());
    }
    if form.contains_key("client_assertion") || form.contains_key("client_assertion_type") {
        match check_assertion(&state, &form) {
            Ok(assertion) => state.assertions.lock().unwrap().push(assertion),
            Err(why) => return refuse(why),
        }
    } else if !auth_ok {
        return refuse("bad client credentials".into());
    }
    let n = state.token_fetches.fetch_add(1, Ordering::SeqCst) + 1;
    let token = match state.token_prefix.lock().unwrap().as_deref() {
        Some(prefix) => format!("{prefix}{n}"),
        None => format!("token-{n}"),
    };
    state.valid_tokens.lock().unwrap().insert(token.clone());
    let json = serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": state.token_lifetime.load(Ordering::SeqCst),
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())).boxed())
        .unwrap())
}
