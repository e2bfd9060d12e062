//! `kafkasend health`: a probe for container health checks.
//!
//! Minimal images (`scratch`, distroless) have no curl or wget, so the
//! Dockerfile's HEALTHCHECK runs the binary itself: one HTTP GET to the
//! portal's admin listener, exit 0 on a 2xx answer and 1 on anything else,
//! including no answer within the timeout. Plain `http://` only: the admin
//! listener is meant for loopback and the pod network.

use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

/// Default probe target: the admin listener's liveness endpoint.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9464/healthz";

/// Flags of `kafkasend health`.
#[derive(Debug, Args, Clone)]
pub struct HealthArgs {
    /// URL to GET; healthy means a 2xx answer
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Seconds to wait for the answer, connecting included
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub timeout: u64,
}

/// Why a probe failed; each message is one line for the health log.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The URL is not one this probe can call.
    #[error("--url: {0}")]
    BadUrl(String),
    /// `--timeout` is out of range.
    #[error("--timeout must be between 1 and 3600 seconds, not {0}")]
    BadTimeout(u64),
    /// Nothing answered in time.
    #[error("no answer from {url} within {secs} s")]
    Timeout {
        /// The URL probed.
        url: String,
        /// The timeout.
        secs: u64,
    },
    /// The connection or the HTTP exchange failed.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL probed.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server answered with a status other than 2xx.
    #[error("{url} answered {status}")]
    Unhealthy {
        /// The URL probed.
        url: String,
        /// Its status.
        status: hyper::StatusCode,
    },
}

/// Probes `args.url`; `Ok` carries the 2xx status.
pub async fn probe(args: &HealthArgs) -> Result<hyper::StatusCode, HealthError> {
    if !(1..=3600).contains(&args.timeout) {
        return Err(HealthError::BadTimeout(args.timeout));
    }
    let uri: hyper::Uri = args
        .url
        .parse()
        .map_err(|e| HealthError::BadUrl(format!("'{}' is not a URL: {e}", args.url)))?;
    if uri.scheme_str() != Some("http") {
        return Err(HealthError::BadUrl(format!(
            "'{}' must be an http:// URL (the admin listener speaks plain HTTP)",
            args.url
        )));
    }
    let Some(host) = uri.host() else {
        return Err(HealthError::BadUrl(format!("'{}' has no host", args.url)));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let unreachable = |reason: String| HealthError::Unreachable {
        url: args.url.clone(),
        reason,
    };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // The connection task ends with the exchange: the response is the
        // last thing read, and dropping `sender` closes it.
        tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, "kafkasend-health")
            .body(Empty::<Bytes>::new())
            .map_err(|e| HealthError::BadUrl(format!("'{}': {e}", args.url)))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok::<_, HealthError>(response.status())
    };
    let status = tokio::time::timeout(Duration::from_secs(args.timeout), exchange)
        .await
        .map_err(|_| HealthError::Timeout {
            url: args.url.clone(),
            secs: args.timeout,
        })??;
    if status.is_success() {
        Ok(status)
    } else {
        Err(HealthError::Unhealthy {
            url: args.url.clone(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> HealthArgs {
        HealthArgs {
            url: url.into(),
            timeout: 2,
        }
    }

    #[tokio::test]
    async fn only_plain_http_urls_are_probed() {
        for url in ["https://127.0.0.1:9464/healthz", "not a url", "/healthz"] {
            let err = probe(&args(url)).await.unwrap_err();
            assert!(err.to_string().starts_with("--url:"), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let err = probe(&args(&format!("http://127.0.0.1:{port}/healthz")))
            .await
            .unwrap_err();
        assert!(matches!(err, HealthError::Unreachable { .. }), "{err}");
    }
}
