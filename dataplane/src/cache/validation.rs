//! Validators: a client's conditional request answered 304 from a stored response (RFC
//! 9110 §13.1.1-2, RFC 9111 §4.3.2), a stored response refreshed by an origin's 304
//! (§4.3.4), the conditional request a cache sends to revalidate (§4.3.1), and what an
//! unsafe request invalidates (§4.4).

use http::header::{
    CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, HeaderName, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, LAST_MODIFIED, LOCATION, SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderValue, Method};

/// Whether a GET or HEAD with `request`'s preconditions is answered 304 by a stored response
/// of `stored_status` with `stored` headers. `If-None-Match` wins over `If-Modified-Since`
/// (RFC 9110 §13.2.2); preconditions count only for a 2xx (§13.2.1): a stored 404 is the
/// answer, not a 304 that would leave the client with its old 200.
pub fn not_modified(
    method: &Method,
    request: &HeaderMap,
    stored_status: u16,
    stored: &HeaderMap,
) -> bool {
    if (method != Method::GET && method != Method::HEAD) || !(200..300).contains(&stored_status) {
        return false;
    }
    if request.contains_key(IF_NONE_MATCH) {
        let Some(etag) = stored.get(ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        return request
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" || weak_eq(tag, etag));
    }
    let Some(since) = super::freshness::date_header(request, IF_MODIFIED_SINCE) else {
        return false;
    };
    // The stored Last-Modified, else its Date (§4.3.2).
    super::freshness::date_header(stored, LAST_MODIFIED)
        .or_else(|| super::freshness::date_header(stored, DATE))
        .is_some_and(|modified| modified <= since)
}

/// Weak comparison of two entity tags: the same opaque tag, `W/` or not.
fn weak_eq(a: &str, b: &str) -> bool {
    let opaque = |t: &str| {
        let t = t.trim();
        let t = t.strip_prefix("W/").unwrap_or(t);
        (t.len() >= 2 && t.starts_with('"') && t.ends_with('"')).then(|| t.to_string())
    };
    matches!((opaque(a), opaque(b)), (Some(x), Some(y)) if x == y)
}

/// The headers of a 304 made from a stored response: those a 200 would have carried that
/// RFC 9110 §15.4.5 names.
pub fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [
        CACHE_CONTROL,
        CONTENT_LOCATION,
        DATE,
        ETAG,
        EXPIRES,
        VARY,
        LAST_MODIFIED,
    ] {
        for v in stored.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// Headers an origin's 304 may not change in what is stored: they describe the body it did
/// not send, or the connection.
fn kept_on_refresh(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length"
            | "content-encoding"
            | "content-range"
            | "transfer-encoding"
            | "trailer"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "upgrade"
            | "te"
    )
}

/// Whether the origin's 304 is about this stored response (§4.3.4): the same entity tag
/// when it sends one, else the same `Last-Modified` when it sends that; a 304 with neither
/// is about the response its validators were taken from.
pub fn refreshes(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    if let Some(tag) = not_modified.get(ETAG) {
        return stored.get(ETAG) == Some(tag);
    }
    if let Some(lm) = not_modified.get(LAST_MODIFIED) {
        return stored.get(LAST_MODIFIED) == Some(lm);
    }
    true
}

/// A stored response's headers refreshed by the origin's 304 (§4.3.4), when it
/// [`refreshes`] it: each header the 304 carries replaces the stored one of that name, but
/// for those describing the body, and `Set-Cookie` unless `set_cookie` (one client's cookie
/// on a revalidation must not be replayed to all). Returns whether it applied. The caller
/// then reads the directives again and checks the entry is still storable (a 304 may say
/// `no-store` or `private` now), dropping it if not.
pub fn refresh(stored: &mut HeaderMap, not_modified: &HeaderMap, set_cookie: bool) -> bool {
    if !refreshes(stored, not_modified) {
        return false;
    }
    for name in not_modified.keys() {
        if kept_on_refresh(name) || (*name == SET_COOKIE && !set_cookie) {
            continue;
        }
        stored.remove(name);
        for v in not_modified.get_all(name) {
            stored.append(name.clone(), v.clone());
        }
    }
    true
}

/// The validators a cache sends to revalidate a stored response: its `ETag` as
/// `If-None-Match`, its `Last-Modified` as `If-Modified-Since`.
pub fn revalidation_headers(stored: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    if let Some(etag) = stored.get(ETAG) {
        out.push((IF_NONE_MATCH, etag.clone()));
    }
    if let Some(lm) = stored.get(LAST_MODIFIED) {
        out.push((IF_MODIFIED_SINCE, lm.clone()));
    }
    out
}

/// The paths (with their queries) an unsafe request to `path` that got `status` makes
/// stale (§4.4): its own, and those its `Location` and `Content-Location` name on the same
/// origin (a relative reference, or an absolute one naming `authority`). Nothing for an
/// error answer.
pub fn invalidated(
    method: &Method,
    status: u16,
    path: &str,
    authority: &str,
    response: &HeaderMap,
) -> Vec<String> {
    // Safe methods (RFC 9110 §9.2.1) change nothing.
    if method.is_safe() || !(200..400).contains(&status) {
        return Vec::new();
    }
    let mut out = vec![path.to_string()];
    for name in [LOCATION, CONTENT_LOCATION] {
        let Some(target) = response.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some(p) = same_origin_path(target, authority)
            && !out.contains(&p)
        {
            out.push(p);
        }
    }
    out
}

/// `target`'s path and query when it is on `authority`: an absolute-path reference, or an
/// absolute URI naming that authority. Another host is never invalidated (§4.4: that would
/// let one origin empty another's entries).
fn same_origin_path(target: &str, authority: &str) -> Option<String> {
    if target.starts_with('/') && !target.starts_with("//") {
        return Some(target.to_string());
    }
    let uri: http::Uri = target.parse().ok()?;
    let a = uri.authority()?;
    if !a.as_str().eq_ignore_ascii_case(authority) {
        return None;
    }
    Some(uri.path_and_query().map_or("/", |p| p.as_str()).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_headers as h;

    #[test]
    fn conditional_requests_table() {
        let stored = h(&[
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
        ]);
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("if-none-match", "\"v1\"")], true),
            (&[("if-none-match", "W/\"v1\"")], true),
            (&[("if-none-match", "\"v0\", \"v1\"")], true),
            (&[("if-none-match", "*")], true),
            (&[("if-none-match", "\"v2\"")], false),
            // If-None-Match wins, even when If-Modified-Since would say 304.
            (
                &[
                    ("if-none-match", "\"v2\""),
                    ("if-modified-since", "Wed, 01 Jan 2031 00:00:00 GMT"),
                ],
                false,
            ),
            (
                &[("if-modified-since", "Wed, 01 Jan 2031 00:00:00 GMT")],
                true,
            ),
            (
                &[("if-modified-since", "Tue, 01 Jan 2030 00:00:00 GMT")],
                true,
            ),
            (
                &[("if-modified-since", "Mon, 31 Dec 2029 00:00:00 GMT")],
                false,
            ),
            (&[("if-modified-since", "yesterday")], false),
            (&[], false),
        ];
        for (req, want) in cases {
            assert_eq!(
                not_modified(&Method::GET, &h(req), 200, &stored),
                *want,
                "{req:?}"
            );
        }
        assert!(!not_modified(
            &Method::POST,
            &h(&[("if-none-match", "*")]),
            200,
            &stored
        ));
        // Nothing to compare an entity tag with: not a 304.
        assert!(!not_modified(
            &Method::GET,
            &h(&[("if-none-match", "\"v1\"")]),
            200,
            &h(&[])
        ));
        // A stored 404 is the answer, whatever the preconditions.
        assert!(!not_modified(
            &Method::GET,
            &h(&[("if-modified-since", "Wed, 01 Jan 2031 00:00:00 GMT")]),
            404,
            &stored
        ));
    }

    #[test]
    fn a_304_refreshes_the_stored_headers_but_not_the_bodys() {
        let mut stored = h(&[
            ("cache-control", "max-age=10"),
            ("etag", "\"v1\""),
            ("content-length", "5"),
            ("x-kept", "1"),
        ]);
        assert!(refresh(
            &mut stored,
            &h(&[
                ("cache-control", "max-age=60"),
                ("content-length", "0"),
                ("date", "Tue, 01 Jan 2030 00:00:00 GMT"),
                ("etag", "\"v1\""),
                ("set-cookie", "session=someone-elses"),
            ]),
            false,
        ));
        assert!(
            !stored.contains_key("set-cookie"),
            "one client's cookie is not stored for all"
        );
        assert_eq!(stored["cache-control"], "max-age=60");
        assert_eq!(stored["content-length"], "5");
        assert_eq!(stored["x-kept"], "1");
        assert_eq!(stored["date"], "Tue, 01 Jan 2030 00:00:00 GMT");
        let sent = not_modified_headers(&stored);
        assert!(sent.contains_key("etag") && !sent.contains_key("content-length"));
        assert_eq!(
            revalidation_headers(&stored)
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            [IF_NONE_MATCH]
        );
    }

    #[test]
    fn a_304_about_another_response_changes_nothing() {
        let mut stored = h(&[("etag", "\"v1\""), ("cache-control", "max-age=10")]);
        assert!(!refresh(
            &mut stored,
            &h(&[("etag", "\"v2\""), ("cache-control", "max-age=600")]),
            false
        ));
        assert_eq!(stored["cache-control"], "max-age=10");
        let mut dated = h(&[("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT")]);
        assert!(!refresh(
            &mut dated,
            &h(&[("last-modified", "Wed, 01 Jan 2031 00:00:00 GMT")]),
            false
        ));
        assert!(refresh(
            &mut dated,
            &h(&[("cache-control", "max-age=1")]),
            false
        ));
    }

    #[test]
    fn unsafe_requests_invalidate_their_own_origin_only() {
        let resp = h(&[
            ("location", "/orders/7"),
            ("content-location", "https://evil.example/home"),
        ]);
        assert_eq!(
            invalidated(&Method::POST, 201, "/orders", "shop.example", &resp),
            ["/orders", "/orders/7"]
        );
        let same = h(&[("content-location", "https://SHOP.example/orders?page=2")]);
        assert_eq!(
            invalidated(&Method::PUT, 200, "/orders/7", "shop.example", &same),
            ["/orders/7", "/orders?page=2"]
        );
        assert!(invalidated(&Method::POST, 500, "/orders", "shop.example", &resp).is_empty());
        assert!(invalidated(&Method::GET, 200, "/orders", "shop.example", &resp).is_empty());
        assert_eq!(
            invalidated(
                &Method::DELETE,
                204,
                "/a",
                "shop.example",
                &h(&[("location", "//evil.example/x")])
            ),
            ["/a"]
        );
    }
}
