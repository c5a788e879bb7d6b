//! What a client may send and how long it may take: the limits every socket enforces.

use super::tcp::StreamSettings;
use crate::conn::ConnectionLimits;
use std::time::Duration;

/// Limits on what a client may send.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Largest request head (request line and headers) for HTTP/1.1, and header list for
    /// HTTP/2. Beyond it, HTTP/1.1 clients get 431.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Time a client may take to send a request head, including an idle keep-alive wait, and
    /// to finish a TLS handshake.
    pub header_read_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub connections: ConnectionLimits,
    /// Timeouts of connections TCP listeners forward.
    pub streams: StreamSettings,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(30),
            max_concurrent_streams: 256,
            connections: ConnectionLimits::default(),
            streams: StreamSettings::default(),
        }
    }
}
