//! Helpers with no role: reading settings files and trusting servers.

pub mod file_read;
pub mod server_trust;
