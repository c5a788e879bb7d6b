//! The HTTPRoute CORS filter: a preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is answered by the gateway, before any policy (browsers
//! send preflights without credentials) and without reaching the backend; the response to
//! an actual cross-origin request gets the CORS headers, which replace any the backend set
//! (the route decides who may read it). `Vary: Origin` is always added: the answer depends
//! on it.
//!
//! The allowed origin is always echoed rather than `*`, which is valid for every request and
//! the only valid answer for credentialed ones; likewise a `*` of methods or headers is
//! answered with what the preflight asked for.

use crate::body::ProxyBody;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use portico_model::Cors;

static ACAO: HeaderName = header::ACCESS_CONTROL_ALLOW_ORIGIN;
static ACAC: HeaderName = header::ACCESS_CONTROL_ALLOW_CREDENTIALS;
static ACAM: HeaderName = header::ACCESS_CONTROL_ALLOW_METHODS;
static ACAH: HeaderName = header::ACCESS_CONTROL_ALLOW_HEADERS;
static ACEH: HeaderName = header::ACCESS_CONTROL_EXPOSE_HEADERS;
static ACMA: HeaderName = header::ACCESS_CONTROL_MAX_AGE;

/// An allowed origin.
#[derive(Debug, PartialEq, Eq)]
enum Allowed {
    /// `*`.
    Any,
    /// A scheme, a host (`None`: any; `Some(".suffix")` with `suffix`: any host ending in
    /// it, at least one character before) and a port.
    Origin {
        scheme: String,
        host: HostPattern,
        port: u16,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    /// Ends with this (which starts with `.`).
    Suffix(String),
}

/// A list answered as given, or `*`: what the request asked for.
#[derive(Debug)]
enum List {
    None,
    Listed(HeaderValue),
    Any,
}

/// A rule's CORS filter, ready to answer.
#[derive(Debug)]
pub struct CorsPolicy {
    origins: Vec<Allowed>,
    methods: List,
    headers: List,
    /// Without `*` (which credentialed requests may not be answered with).
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

/// `scheme://host[:port]` split, lower-case, the port defaulted by the scheme; `None` when it
/// is not such an origin (`null`, another scheme, garbage).
fn parse_origin(s: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = s.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal's colons are inside brackets.
        Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().ok().filter(|p| *p > 0)?),
        _ => (rest, default),
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme, host.to_ascii_lowercase(), port))
}

impl CorsPolicy {
    pub fn new(c: &Cors) -> Result<Self, String> {
        let mut origins = Vec::new();
        for o in &c.allow_origins {
            if o == "*" {
                origins.push(Allowed::Any);
                continue;
            }
            let (scheme, host, port) = parse_origin(o)
                .ok_or_else(|| format!("CORS origin {o:?} is not scheme://host[:port]"))?;
            let host = if host == "*" {
                HostPattern::Any
            } else if let Some(suffix) = host.strip_prefix('*') {
                HostPattern::Suffix(suffix.to_string())
            } else {
                HostPattern::Exact(host)
            };
            origins.push(Allowed::Origin { scheme, host, port });
        }
        let list = |items: &[String], what: &str| -> Result<List, String> {
            if items.iter().any(|i| i == "*") {
                return Ok(List::Any);
            }
            if items.is_empty() {
                return Ok(List::None);
            }
            HeaderValue::from_str(&items.join(", "))
                .map(List::Listed)
                .map_err(|_| format!("CORS {what} {items:?} do not make a header value"))
        };
        let expose: Vec<String> = c
            .expose_headers
            .iter()
            .filter(|h| *h != "*" || !c.allow_credentials)
            .cloned()
            .collect();
        Ok(Self {
            origins,
            methods: list(&c.allow_methods, "methods")?,
            headers: list(&c.allow_headers, "headers")?,
            expose: (!expose.is_empty())
                .then(|| HeaderValue::from_str(&expose.join(", ")))
                .transpose()
                .map_err(|_| format!("CORS exposeHeaders {expose:?} do not make a header value"))?,
            credentials: c.allow_credentials,
            max_age: HeaderValue::from(c.max_age_seconds),
        })
    }

    /// Whether `origin` (a request's `Origin`) may read the answers.
    fn allows(&self, origin: &HeaderValue) -> bool {
        let parsed = origin.to_str().ok().and_then(parse_origin);
        self.origins.iter().any(|a| match (a, &parsed) {
            (Allowed::Any, _) => true,
            (Allowed::Origin { .. }, None) => false,
            (Allowed::Origin { scheme, host, port }, Some((s, h, p))) => {
                scheme == s
                    && port == p
                    && match host {
                        HostPattern::Any => true,
                        HostPattern::Exact(e) => e == h,
                        HostPattern::Suffix(suffix) => {
                            h.len() > suffix.len() && h.ends_with(suffix.as_str())
                        }
                    }
            }
        })
    }

    /// The answer to a preflight, if `req` is one: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`. An origin that is not allowed gets 204 without any
    /// CORS header, so the browser refuses the actual request.
    pub fn preflight<B>(&self, req: &Request<B>) -> Option<Response<ProxyBody>> {
        let h = req.headers();
        let origin = h.get(header::ORIGIN)?;
        let method = h.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        if req.method() != Method::OPTIONS {
            return None;
        }
        let mut resp = Response::new(ProxyBody::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let out = resp.headers_mut();
        out.append(header::VARY, HeaderValue::from_static("origin"));
        if !self.allows(origin) {
            return Some(resp);
        }
        self.common(origin, out);
        match &self.methods {
            List::Any => {
                out.insert(ACAM.clone(), method.clone());
            }
            List::Listed(v) => {
                out.insert(ACAM.clone(), v.clone());
            }
            List::None => {}
        }
        match (&self.headers, h.get(header::ACCESS_CONTROL_REQUEST_HEADERS)) {
            (List::Any, Some(asked)) => {
                out.insert(ACAH.clone(), asked.clone());
            }
            (List::Listed(v), _) => {
                out.insert(ACAH.clone(), v.clone());
            }
            _ => {}
        }
        out.insert(ACMA.clone(), self.max_age.clone());
        Some(resp)
    }

    /// Gives the response to an actual request from `origin` its CORS headers (replacing
    /// the backend's); an origin not allowed gets none.
    pub fn on_response(&self, origin: &HeaderValue, out: &mut HeaderMap) {
        for name in [&ACAO, &ACAC, &ACEH, &ACAM, &ACAH, &ACMA] {
            out.remove(name);
        }
        out.append(header::VARY, HeaderValue::from_static("origin"));
        if self.allows(origin) {
            self.common(origin, out);
        }
    }

    fn common(&self, origin: &HeaderValue, out: &mut HeaderMap) {
        out.insert(ACAO.clone(), origin.clone());
        if self.credentials {
            out.insert(ACAC.clone(), HeaderValue::from_static("true"));
        }
        if let Some(v) = &self.expose {
            out.insert(ACEH.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> CorsPolicy {
        CorsPolicy::new(&Cors {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: vec!["GET".into(), "OPTIONS".into()],
            allow_headers: vec!["x-header-1".into(), "x-header-2".into()],
            expose_headers: vec!["x-header-3".into()],
            allow_credentials: credentials,
            max_age_seconds: 3600,
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn allows(p: &CorsPolicy, origin: &str) -> bool {
        p.allows(&HeaderValue::from_str(origin).unwrap_or_else(|_| HeaderValue::from_static("x")))
    }

    #[test]
    fn origins_match_by_scheme_host_and_port() {
        let p = policy(
            &[
                "https://www.foo.com",
                "https://*.bar.com",
                "http://local:8080",
            ],
            true,
        );
        for ok in [
            "https://www.foo.com",
            "HTTPS://WWW.FOO.COM",
            "https://www.foo.com:443",
            "https://www.bar.com",
            "https://xpto.www.bar.com",
            "http://local:8080",
        ] {
            assert!(allows(&p, ok), "{ok}");
        }
        for no in [
            "http://www.foo.com",
            "https://www.foo.com:8443",
            "https://foobar.com",
            "https://bar.com",
            "https://evilbar.com",
            "https://www.foo.com.evil.net",
            "http://local",
            "null",
            "https://www.foo.com/path",
            "",
        ] {
            assert!(!allows(&p, no), "{no}");
        }
        let any = policy(&["*"], false);
        assert!(allows(&any, "https://foobar.com:12345") && allows(&any, "null"));
        let any_host = policy(&["https://*"], false);
        assert!(allows(&any_host, "https://a.b") && !allows(&any_host, "http://a.b"));
    }

    fn preflight(
        p: &CorsPolicy,
        origin: &str,
        method: &str,
        headers: Option<&str>,
    ) -> Response<ProxyBody> {
        let mut r = Request::builder()
            .method("OPTIONS")
            .header("origin", origin)
            .header("access-control-request-method", method);
        if let Some(h) = headers {
            r = r.header("access-control-request-headers", h);
        }
        let req = r.body(()).unwrap_or_else(|_| unreachable!());
        p.preflight(&req).unwrap_or_else(|| panic!("a preflight"))
    }

    fn get<'a>(r: &'a Response<ProxyBody>, name: &str) -> Option<&'a str> {
        r.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn preflights_are_answered_with_what_the_filter_allows() {
        let p = policy(&["https://www.foo.com"], true);
        let r = preflight(&p, "https://www.foo.com", "GET", Some("x-header-1"));
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            get(&r, "access-control-allow-origin"),
            Some("https://www.foo.com")
        );
        assert_eq!(
            get(&r, "access-control-allow-methods"),
            Some("GET, OPTIONS")
        );
        assert_eq!(
            get(&r, "access-control-allow-headers"),
            Some("x-header-1, x-header-2")
        );
        assert_eq!(get(&r, "access-control-expose-headers"), Some("x-header-3"));
        assert_eq!(get(&r, "access-control-max-age"), Some("3600"));
        assert_eq!(get(&r, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(&r, "vary"), Some("origin"));
        // Not allowed: an OK answer with no CORS header at all.
        let r = preflight(&p, "https://foobar.com", "GET", None);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert!(
            r.headers()
                .keys()
                .all(|k| !k.as_str().starts_with("access-control-"))
        );
        // Not a preflight: an OPTIONS without the request method, a GET with it.
        let plain = Request::builder()
            .method("OPTIONS")
            .header("origin", "https://www.foo.com")
            .body(())
            .unwrap_or_else(|_| unreachable!());
        assert!(p.preflight(&plain).is_none());
    }

    #[test]
    fn wildcards_are_answered_with_what_was_asked() {
        let p = CorsPolicy::new(&Cors {
            allow_origins: vec!["*".into()],
            allow_methods: vec!["*".into()],
            allow_headers: vec!["*".into()],
            expose_headers: vec!["*".into()],
            allow_credentials: true,
            max_age_seconds: Cors::DEFAULT_MAX_AGE_SECONDS,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let r = preflight(
            &p,
            "https://other.foo.com",
            "PUT",
            Some("x-header-1, x-header-2"),
        );
        assert_eq!(
            get(&r, "access-control-allow-origin"),
            Some("https://other.foo.com")
        );
        assert_eq!(get(&r, "access-control-allow-methods"), Some("PUT"));
        assert_eq!(
            get(&r, "access-control-allow-headers"),
            Some("x-header-1, x-header-2")
        );
        assert_eq!(get(&r, "access-control-max-age"), Some("5"));
        // A credentialed answer may not expose `*`.
        assert_eq!(get(&r, "access-control-expose-headers"), None);
        let r = preflight(&p, "https://other.foo.com", "PUT", None);
        assert_eq!(get(&r, "access-control-allow-headers"), None);
    }

    #[test]
    fn actual_responses_get_the_headers_and_lose_the_backends() {
        let p = policy(&["https://www.foo.com"], false);
        let mut h = HeaderMap::new();
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        h.insert(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
        p.on_response(&HeaderValue::from_static("https://www.foo.com"), &mut h);
        assert_eq!(
            h.get("access-control-allow-origin").map(|v| v.as_bytes()),
            Some(&b"https://www.foo.com"[..])
        );
        assert!(h.get("access-control-allow-credentials").is_none());
        let mut h = HeaderMap::new();
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        p.on_response(&HeaderValue::from_static("https://evil.example"), &mut h);
        assert!(
            h.get("access-control-allow-origin").is_none(),
            "the backend's * is not passed on"
        );
    }
}
