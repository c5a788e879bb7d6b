//! The HTTPRoute filters that change where a request goes: RequestRedirect and URLRewrite.
//! (Header modifiers are [`crate::rule::HeaderOps`].)

use crate::body::{ProxyBody, text_response};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use portico_model::{PathRewrite, Redirect, UrlRewrite};

/// Replaces the matched `prefix` of `path` with `replacement`, segment-wise, so that
/// `/prefix/one` matched by `/prefix` and replaced by `/` becomes `/one`, not `//one`.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let rest = if prefix == "/" {
        path
    } else {
        path.get(prefix.len()..).unwrap_or("")
    };
    let mut out = String::with_capacity(replacement.len() + rest.len());
    out.push_str(replacement);
    if out.ends_with('/') && rest.starts_with('/') {
        out.pop();
    }
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn rewritten_path(rewrite: &PathRewrite, path: &str, prefix: Option<&str>) -> String {
    match rewrite {
        PathRewrite::ReplaceFullPath(p) => p.clone(),
        PathRewrite::ReplacePrefixMatch(r) => replace_prefix(path, prefix.unwrap_or("/"), r),
    }
}

fn with_query(path: String, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

/// The redirect response for `req`, as the Gateway API specifies the Location: scheme, host
/// and port from the filter or the request, the well-known port left out.
///
/// `matching` is the path the rule matched when it differs from the request's
/// (`;parameters` removed): a prefix is replaced in the path it was matched in.
pub fn redirect<B>(
    r: &Redirect,
    req: &Request<B>,
    prefix: Option<&str>,
    matching: Option<&str>,
    scheme: &str,
    listener_port: u16,
) -> Response<ProxyBody> {
    let scheme = r.scheme.as_deref().unwrap_or(scheme);
    let host = match &r.hostname {
        Some(h) => h.clone(),
        None => crate::util::request_host(req.uri(), req.headers())
            .map(|h| h.into_owned())
            .unwrap_or_default(),
    };
    // With no port in the filter: the scheme's well-known port if the filter changes the
    // scheme, else the listener's port.
    let port = r.port.unwrap_or(if r.scheme.is_some() {
        if scheme == "https" { 443 } else { 80 }
    } else {
        listener_port
    });
    let default_port = matches!((scheme, port), ("http", 80) | ("https", 443));
    let path = match &r.path {
        Some(p) => rewritten_path(p, matching.unwrap_or(req.uri().path()), prefix),
        None => req.uri().path().to_string(),
    };
    let location = if default_port {
        format!("{scheme}://{host}{}", with_query(path, req.uri().query()))
    } else {
        format!(
            "{scheme}://{host}:{port}{}",
            with_query(path, req.uri().query())
        )
    };
    let status = StatusCode::from_u16(r.status_code).unwrap_or(StatusCode::FOUND);
    let mut resp = text_response(status, String::new());
    resp.headers_mut().remove(header::CONTENT_TYPE);
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => text_response(
            StatusCode::BAD_REQUEST,
            "cannot build a redirect for this request\n".into(),
        ),
    }
}

/// Applies a URLRewrite to the request: the Host header and the path (query kept). A path
/// rewrite works on `matching`, the path the rule matched, when it differs from the request's
/// (`;parameters` removed), so the backend gets a path built from what was routed.
pub fn rewrite<B>(
    rw: &UrlRewrite,
    req: &mut Request<B>,
    prefix: Option<&str>,
    matching: Option<&str>,
) {
    if let Some(h) = &rw.hostname
        && let Ok(v) = HeaderValue::from_str(h)
    {
        req.headers_mut().insert(header::HOST, v);
    }
    if let Some(p) = &rw.path {
        let path = rewritten_path(p, matching.unwrap_or(req.uri().path()), prefix);
        let pq = with_query(path, req.uri().query());
        if let Ok(pq) = PathAndQuery::try_from(pq) {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_replacement_table() {
        let cases = [
            ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
            ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
            ("/strip-prefix", "/strip-prefix", "/", "/"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/anything", "/", "/v2", "/v2/anything"),
            ("/a/b", "/a", "/x/", "/x/b"),
        ];
        for (path, prefix, repl, want) in cases {
            assert_eq!(
                replace_prefix(path, prefix, repl),
                want,
                "{path} {prefix} {repl}"
            );
        }
    }

    fn req(uri: &str, host: &str) -> Request<()> {
        Request::builder()
            .uri(uri)
            .header(header::HOST, host)
            .body(())
            .expect("request")
    }

    fn location(
        r: &Redirect,
        uri: &str,
        prefix: Option<&str>,
        listener_port: u16,
    ) -> (u16, String) {
        let resp = redirect(
            r,
            &req(uri, "a.example.com:8080"),
            prefix,
            None,
            "http",
            listener_port,
        );
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (resp.status().as_u16(), loc)
    }

    #[test]
    fn redirect_location_table() {
        let base = Redirect {
            scheme: None,
            hostname: None,
            path: None,
            port: None,
            status_code: 302,
        };
        assert_eq!(
            location(&base, "/p?q=1", None, 8080),
            (302, "http://a.example.com:8080/p?q=1".into())
        );
        assert_eq!(
            location(&base, "/p", None, 80),
            (302, "http://a.example.com/p".into())
        );
        let https = Redirect {
            scheme: Some("https".into()),
            status_code: 301,
            ..base.clone()
        };
        assert_eq!(
            location(&https, "/p", None, 8080),
            (301, "https://a.example.com/p".into())
        );
        let moved = Redirect {
            hostname: Some("b.example.com".into()),
            port: Some(9443),
            path: Some(PathRewrite::ReplacePrefixMatch("/new".into())),
            ..base.clone()
        };
        assert_eq!(
            location(&moved, "/old/x", Some("/old"), 8080),
            (302, "http://b.example.com:9443/new/x".into())
        );
        let full = Redirect {
            path: Some(PathRewrite::ReplaceFullPath("/fixed".into())),
            ..base
        };
        assert_eq!(
            location(&full, "/any/thing", None, 80),
            (302, "http://a.example.com/fixed".into())
        );
    }

    #[test]
    fn rewrite_changes_host_and_path_keeps_query() {
        let mut r = req("/api/v1/items?x=1", "a.example.com");
        let rw = UrlRewrite {
            hostname: Some("internal.local".into()),
            path: Some(PathRewrite::ReplacePrefixMatch("/v2".into())),
        };
        rewrite(&rw, &mut r, Some("/api/v1"), None);
        assert_eq!(r.uri().to_string(), "/v2/items?x=1");
        assert_eq!(r.headers()[header::HOST], "internal.local");
        // With parameters, the prefix is replaced in the matched path (parameters gone).
        let mut r = req("/api;x/v1/items?x=1", "a.example.com");
        rewrite(&rw, &mut r, Some("/api/v1"), Some("/api/v1/items"));
        assert_eq!(r.uri().to_string(), "/v2/items?x=1");
    }
}
