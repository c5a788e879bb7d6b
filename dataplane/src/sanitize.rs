//! What a client may send, checked and cleaned before routing, so that what the router and
//! the policies decide about a request is what the backend receives.
//!
//! - **Framing**: a transfer coding other than one final `chunked` is refused (hyper refuses a
//!   non-final `chunked`; `identity, chunked` or `gzip, chunked` would reach a backend that
//!   may frame the body differently).
//! - **Host**: one authority per request. More than one `Host` is refused (RFC 9112 §3.2); an
//!   absolute-form target's authority replaces `Host` (§3.2.2); over HTTP/2 a `Host` that
//!   differs from `:authority` is malformed (RFC 9113 §8.3.1). The authority must parse and
//!   carry no user info. The routed authority becomes the one `Host` the backend gets.
//! - **Hop-by-hop headers** (and every header `Connection` names) go before anything is
//!   added, so a client cannot make the gateway strip a header it set itself
//!   (`Connection: x-portico-consumer`).
//! - **Header names with `_`** are refused by default (or dropped): CGI, WSGI, PHP and Rack
//!   read `x_portico_consumer` as `x-portico-consumer`.
//! - **Forwarding headers** a client could forge (`Forwarded`, `X-Real-IP`,
//!   `X-Original-URL`, ...) are removed; `X-Forwarded-For` is rebuilt in [`forwarded_for`].

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};
use std::net::IpAddr;

/// What to do with a request header whose name has an underscore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnderscoreHeaders {
    /// Answer 400.
    #[default]
    Reject,
    /// Remove the header and serve the request.
    Drop,
    /// Forward it (only behind backends that do not fold `_` into `-`).
    Allow,
}

/// The edge settings of a dataplane.
#[derive(Clone, Copy, Debug, Default)]
pub struct EdgeSettings {
    pub underscore_headers: UnderscoreHeaders,
    /// Proxies in front of this gateway that append to `X-Forwarded-For`: 0 at the edge.
    pub trusted_hops: usize,
}

/// Headers that only a proxy in front of us should set, and that backends read to decide who
/// the client is or which URL it asked for. Removed from every request.
static FORGEABLE: [HeaderName; 24] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("x-original-host"),
    // Method overrides: frameworks honour them, and authorization rules check the method.
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-original-method"),
    HeaderName::from_static("x-forwarded-method"),
    HeaderName::from_static("x-forwarded-uri"),
    // Scheme hints (Rack, Werkzeug): X-Forwarded-Proto is the gateway's.
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("front-end-https"),
    // CDN client addresses.
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("fastly-client-ip"),
];

/// A request to switch protocols that the gateway carries: WebSocket, and nothing else (an
/// `Upgrade: h2c` or any other protocol is stripped like every hop-by-hop header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// HTTP/1.1 `Connection: upgrade` with `Upgrade: websocket` (RFC 6455 §4.1).
    H1,
    /// HTTP/2 extended CONNECT with `:protocol = websocket` (RFC 8441), routed and forwarded
    /// as the GET it stands for.
    H2,
}

/// Whether `req` opens a WebSocket, read before [`inbound`] strips the headers that say so.
/// An HTTP/1.1 upgrade must be a bodiless GET (RFC 6455 §4.1); an HTTP/2 one becomes a GET
/// here, so that routes match it as they match the HTTP/1.1 handshake.
pub fn upgrade<B: http_body::Body>(req: &mut Request<B>) -> Option<Upgrade> {
    if req.version() == Version::HTTP_2 {
        let websocket = req.method() == http::Method::CONNECT
            && req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        if !websocket {
            return None;
        }
        *req.method_mut() = http::Method::GET;
        return Some(Upgrade::H2);
    }
    let has = |name: header::HeaderName, token: &[u8]| {
        req.headers().get_all(name).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        })
    };
    let websocket = req.version() == Version::HTTP_11
        && req.method() == http::Method::GET
        && req.body().is_end_stream()
        && has(header::CONNECTION, b"upgrade")
        && has(header::UPGRADE, b"websocket");
    websocket.then_some(Upgrade::H1)
}

/// Why a request is refused before routing.
pub type Refusal = &'static str;

/// Checks framing and Host, strips hop-by-hop, underscore and forgeable headers. On success
/// the request has exactly one `Host`: the authority it is routed by.
pub fn inbound<B>(req: &mut Request<B>, settings: &EdgeSettings) -> Result<(), Refusal> {
    // A tunnel to anywhere (CONNECT, or an extended CONNECT for another protocol) is not
    // something a reverse proxy's routes can carry; WebSocket's became a GET in [`upgrade`].
    if req.method() == http::Method::CONNECT {
        return Err(
            "CONNECT is not served here (WebSocket over HTTP/2 is, with :protocol websocket)",
        );
    }
    if req.version() <= Version::HTTP_11 {
        check_transfer_coding(req.headers())?;
    }
    let authority = authority(req)?;
    // One credential per request: a backend that reads the last Authorization could act on
    // one the policy never checked.
    if req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err("more than one Authorization header");
    }
    let headers = req.headers_mut();
    crate::util::strip_hop_by_hop(headers);
    headers.insert(header::HOST, authority);
    // One pass over the names (a request has a handful): no hash lookup per forgeable name.
    let mut gone: Vec<HeaderName> = Vec::new();
    for n in headers.keys() {
        let forgeable = FORGEABLE.contains(n);
        if !forgeable
            && settings.underscore_headers != UnderscoreHeaders::Allow
            && n.as_str().contains('_')
        {
            if settings.underscore_headers == UnderscoreHeaders::Reject {
                return Err("header names with underscores are refused");
            }
            gone.push(n.clone());
        } else if forgeable {
            gone.push(n.clone());
        }
    }
    for n in gone {
        headers.remove(n);
    }
    Ok(())
}

/// `Transfer-Encoding`, when present, must be exactly one `chunked`.
fn check_transfer_coding(headers: &HeaderMap) -> Result<(), Refusal> {
    let mut codings = 0usize;
    for v in headers.get_all(header::TRANSFER_ENCODING) {
        let s = v.to_str().map_err(|_| "malformed Transfer-Encoding")?;
        for coding in s.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err("transfer codings other than chunked are not accepted");
            }
            codings += 1;
        }
    }
    if codings > 1 {
        return Err("chunked applied more than once");
    }
    Ok(())
}

/// The one authority of the request, as a `Host` value.
fn authority<B>(req: &Request<B>) -> Result<HeaderValue, Refusal> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    let value = match req.uri().authority() {
        Some(a) => {
            // HTTP/2 `:authority`, or an HTTP/1 absolute-form target (whose Host is ignored).
            if req.version() == Version::HTTP_2
                && let Some(h) = host
                && !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes())
            {
                return Err("Host differs from :authority");
            }
            HeaderValue::from_str(a.as_str()).map_err(|_| "malformed authority")?
        }
        None => host.ok_or("missing Host")?.clone(),
    };
    valid_authority(value.as_bytes())?;
    Ok(value)
}

/// `host[:port]` with a host name (letters, digits, `-`, `.`, `_`), an IPv4 address or a
/// bracketed IPv6 address, and a port of digits that fits in 16 bits; nothing else (no user
/// info, path, `%` or sub-delims). Parsed in place: no allocation per request.
fn valid_authority(raw: &[u8]) -> Result<(), Refusal> {
    const BAD: Refusal = "malformed Host";
    let (host, port) = if raw.first() == Some(&b'[') {
        let end = raw.iter().position(|b| *b == b']').ok_or(BAD)?;
        let ip = std::str::from_utf8(&raw[1..end]).map_err(|_| BAD)?;
        ip.parse::<std::net::Ipv6Addr>().map_err(|_| BAD)?;
        match &raw[end + 1..] {
            [] => (&raw[..=end], None),
            [b':', port @ ..] => (&raw[..=end], Some(port)),
            _ => return Err(BAD),
        }
    } else {
        match raw.iter().rposition(|b| *b == b':') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        }
    };
    if host.is_empty() {
        return Err(BAD);
    }
    if host[0] != b'['
        && !host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(BAD);
    }
    if let Some(port) = port {
        let digits = !port.is_empty() && port.len() <= 5 && port.iter().all(u8::is_ascii_digit);
        let value = digits
            .then(|| port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
            .ok_or(BAD)?;
        if value > u32::from(u16::MAX) {
            return Err(BAD);
        }
    }
    Ok(())
}

/// The `X-Forwarded-For` to send: at the edge (`trusted_hops == 0`) the peer alone; behind
/// trusted proxies, the entries they appended (the last `trusted_hops`) and then the peer.
/// Whatever a client wrote to the left of those is dropped unread. Returns the value and
/// whether a trusted entry was not an address (then only the peer is sent).
pub fn forwarded_for(headers: &HeaderMap, peer: IpAddr, trusted_hops: usize) -> (String, bool) {
    let peer_s = peer.to_string();
    if trusted_hops == 0 {
        return (peer_s, false);
    }
    let (entries, malformed) = trusted_entries(headers, trusted_hops);
    let mut out = String::new();
    for e in &entries {
        out.push_str(&e.to_string());
        out.push_str(", ");
    }
    out.push_str(&peer_s);
    (out, malformed)
}

/// The last `n` entries of `X-Forwarded-For` (over all its fields, in order): the ones the
/// `n` trusted proxies appended. What stands to their left is the client's and is neither
/// read nor trusted. Returns fewer when there are fewer, and `true` (with none) when one of
/// the trusted entries is not an address.
pub fn trusted_entries(headers: &HeaderMap, n: usize) -> (Vec<IpAddr>, bool) {
    if n == 0 {
        return (Vec::new(), false);
    }
    let mut texts: Vec<String> = Vec::new();
    for v in headers.get_all(&crate::util::X_FORWARDED_FOR) {
        let line = String::from_utf8_lossy(v.as_bytes());
        texts.extend(line.split(',').map(|e| e.trim().to_string()));
    }
    let keep = texts.len().saturating_sub(n);
    let mut entries = Vec::with_capacity(texts.len() - keep);
    for e in &texts[keep..] {
        match parse_forwarded_addr(e) {
            Some(ip) => entries.push(ip),
            None => return (Vec::new(), true),
        }
    }
    (entries, false)
}

fn parse_forwarded_addr(e: &str) -> Option<IpAddr> {
    e.parse::<IpAddr>()
        .ok()
        .or_else(|| e.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

/// The client address: the peer, or with `trusted_hops` proxies in front, the address that
/// many entries from the right of `X-Forwarded-For` (all its fields, in order). A header that
/// is not a list of addresses is not trusted at all: the peer, and `true` to count it.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted_hops: usize) -> (IpAddr, bool) {
    let (client, malformed) = forwarded_client(headers, peer, trusted_hops);
    (client.unwrap_or(peer), malformed)
}

/// The client address as the `trusted_hops` proxies in front say it (the peer at the edge),
/// or `None` when they did not say it: a chain shorter than `trusted_hops` (a request that
/// skipped a proxy) or entries that are not addresses.
pub fn trusted_client(headers: &HeaderMap, peer: IpAddr, trusted_hops: usize) -> Option<IpAddr> {
    forwarded_client(headers, peer, trusted_hops).0
}

/// What both read: the client the trusted proxies name (`None` if they name none), and
/// whether their entries were not addresses.
fn forwarded_client(
    headers: &HeaderMap,
    peer: IpAddr,
    trusted_hops: usize,
) -> (Option<IpAddr>, bool) {
    if trusted_hops == 0 {
        return (Some(peer), false);
    }
    let (entries, malformed) = trusted_entries(headers, trusted_hops);
    if malformed || entries.len() < trusted_hops {
        return (None, malformed);
    }
    (Some(entries[0]), false)
}

#[cfg(test)]
mod tests;
