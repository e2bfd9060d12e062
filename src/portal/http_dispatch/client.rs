//! The HTTP(S) client the portal calls the API and the token endpoint with.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::portal::http_dispatch::tls::ApiTls;

/// Body type of every outgoing request.
pub(crate) type DispatchBody = BoxBody<Bytes, std::io::Error>;

/// The HTTP(S) client the portal uses for the API and the token endpoint.
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, DispatchBody>;

/// Builds the shared HTTP client: HTTP/1.1 and HTTP/2, TLS by rustls with the
/// `ring` provider (the one rskafka uses) configured by `tls` (trusted roots,
/// optional client certificate). Plain `http://` URLs still work.
pub(crate) fn build_client(tls: &ApiTls) -> HttpClient {
    log::info!("HTTPS trusts {}", tls.summary());
    let mut http = HttpConnector::new();
    // Requests and responses, not bulk streams: send small writes at once.
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.client_config())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(32)
        .build(https)
}

/// Adds what to change to a TLS failure the settings can fix.
pub(crate) fn with_tls_hint(chain: String) -> String {
    let hint = if chain.contains("CaUsedAsEndEntity") {
        // The verifier's own message already says what to do.
        ""
    } else if chain.contains("invalid peer certificate") {
        "; the server's certificate is not trusted: put its CA certificate in PORTAL_CA_FILE"
    } else if chain.contains("CertificateRequired") || chain.contains("certificate required") {
        "; the server wants a client certificate: set PORTAL_CLIENT_CERT_FILE and PORTAL_CLIENT_KEY_FILE"
    } else {
        ""
    };
    chain + hint
}

/// A body held in memory.
pub(crate) fn full_body(bytes: Bytes) -> DispatchBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}
