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

/// Most threads running blocking work (fetch decoding, spool and file
/// reads, name lookups) at once. Each keeps what it allocated and freed in
/// an allocator area of its own for a while: with tokio's default of 512
/// the static portal peaked at 66 MiB with 8 uploads of 1 GiB, with 8 at
/// 47-57 MiB. The work is short, so more threads buy nothing here.
const MAX_BLOCKING_THREADS: usize = 8;

/// The one multi-threaded runtime a command runs on, with every driver.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
}
