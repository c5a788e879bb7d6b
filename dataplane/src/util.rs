//! Small request helpers: host normalisation, query parameters, hop-by-hop headers, request IDs.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::borrow::Cow;

/// The request's host, lower-cased, without port or trailing dot: from the URI authority
/// (HTTP/2 and absolute-form requests) or the `Host` header.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<Cow<'a, str>> {
    let raw = match uri.host() {
        Some(h) => h,
        None => strip_port(headers.get(header::HOST)?.to_str().ok()?),
    };
    let raw = raw.strip_suffix('.').unwrap_or(raw);
    if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(raw.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(raw))
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port → v6 in brackets, as `Uri::host` returns it.
        return match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The first value of a query parameter, percent-decoded (`+` is a space).
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query_values(query, name).next()
}

/// Every value of query parameter `name` (names compared decoded), in order.
pub fn query_values<'q>(query: &'q str, name: &str) -> impl Iterator<Item = Cow<'q, str>> {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// Every value of cookie `name` over every Cookie header, in order, values trimmed (names
/// compared trimmed, as servers read them).
pub fn cookie_values<'h>(headers: &'h HeaderMap, name: &str) -> impl Iterator<Item = &'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(move |pair| {
            let eq = pair.iter().position(|b| *b == b'=')?;
            let (k, v) = pair.split_at(eq);
            (k.trim_ascii() == name.as_bytes()).then(|| v[1..].trim_ascii())
        })
}

/// The name of every cookie over every Cookie header, trimmed.
pub fn cookie_names(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(|pair| {
            let name = pair
                .iter()
                .position(|b| *b == b'=')
                .map_or(pair, |eq| &pair[..eq]);
            name.trim_ascii()
        })
        .filter(|name| !name.is_empty())
}

/// Percent-decodes a query component (`+` is a space); malformed escapes stay as they are.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    bytes.get(i + 1).and_then(|b| hex(*b)),
                    bytes.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), plus any header
/// the `Connection` header names. `TE: trailers` is kept: gRPC needs it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names, then nothing to remove.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    let keep_te = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(n);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    if !keep_te {
        headers.remove(header::TE);
    }
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A header [`strip_hop_by_hop`] removes whatever `Connection` says (and `Connection` itself).
fn is_hop_by_hop(n: &HeaderName) -> bool {
    *n == header::CONNECTION
        || *n == header::PROXY_AUTHENTICATE
        || *n == header::PROXY_AUTHORIZATION
        || *n == header::TRAILER
        || *n == header::TRANSFER_ENCODING
        || *n == header::UPGRADE
        || *n == header::TE
        || *n == KEEP_ALIVE
        || *n == PROXY_CONNECTION
}

/// `s` with every byte outside `[A-Za-z0-9.:_\[\]-]` percent-escaped: client text (a Host)
/// that goes into a log line cannot add fields or lines to it.
pub fn log_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'_' | b'[' | b']' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client's request ID when it is a sane token (≤ 128 visible ASCII characters), else a
/// new random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= 128
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let mut n = fastrand::u128(..);
    for b in id.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

/// `n` in decimal, written into the end of `buf` (no formatting machinery: response heads
/// and quota headers write numbers on every request).
pub fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Bytes as lowercase hexadecimal (digests in keys and logs).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_from_header_or_authority_normalised() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("Example.COM.:8080"));
        let uri: http::Uri = "/x".parse().expect("uri");
        assert_eq!(request_host(&uri, &h).as_deref(), Some("example.com"));
        h.insert(header::HOST, HeaderValue::from_static("[::1]:80"));
        assert_eq!(request_host(&uri, &h).as_deref(), Some("[::1]"));
        let abs: http::Uri = "http://a.example.com:9/x".parse().expect("uri");
        assert_eq!(
            request_host(&abs, &HeaderMap::new()).as_deref(),
            Some("a.example.com")
        );
        assert_eq!(request_host(&uri, &HeaderMap::new()), None);
    }

    #[test]
    fn query_params_are_decoded_and_first_wins() {
        let q = "a=1&b=x%20y&a=2&c&d=%zz&e=p+q";
        assert_eq!(query_param(q, "a").as_deref(), Some("1"));
        assert_eq!(query_param(q, "b").as_deref(), Some("x y"));
        assert_eq!(query_param(q, "c").as_deref(), Some(""));
        assert_eq!(query_param(q, "d").as_deref(), Some("%zz"));
        assert_eq!(query_param(q, "e").as_deref(), Some("p q"));
        assert_eq!(query_param(q, "z"), None);
        assert_eq!(query_param("x=%4", "x").as_deref(), Some("%4"));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-kept"]);
    }

    #[test]
    fn log_fields_cannot_be_forged() {
        assert_eq!(log_safe("a.example.com:80"), "a.example.com:80");
        assert_eq!(log_safe("a status=200 x"), "a%20status%3D200%20x");
        assert_eq!(log_safe("a\"b\tc"), "a%22b%09c");
    }

    #[test]
    fn request_ids_are_propagated_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h).len(), 32);
    }
}

/// Bytes that many holders may take together, up to a limit (cache fills in progress, stores
/// queued for Redis): each takes before it holds and gives back when done.
#[derive(Debug)]
pub struct ByteBudget {
    held: std::sync::atomic::AtomicUsize,
    limit: usize,
}

impl ByteBudget {
    pub fn new(limit: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            held: std::sync::atomic::AtomicUsize::new(0),
            limit,
        })
    }

    /// Takes `n` bytes if they fit, or if nothing is held (one take larger than the limit is
    /// let through alone rather than never: a store queued whole; a fill takes per chunk, so
    /// a body larger than the limit still stops being copied at its next chunk).
    pub fn take(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n)
                    .filter(|&h| held == 0 || h <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken before.
    pub fn give(&self, n: usize) {
        use std::sync::atomic::Ordering;
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                debug_assert!(held >= n, "gave back more than was taken");
                Some(held.saturating_sub(n))
            });
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::Acquire)
    }
}
