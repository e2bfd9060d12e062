//! Helpers with no role: reading settings files, trusting servers, error
//! messages that name every cause, and the one runtime a command runs on.

pub mod file_read;
pub mod server_trust;

/// Every source of an error, joined, for messages that say what really failed.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// The one multi-threaded runtime a command runs on, with every driver.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
