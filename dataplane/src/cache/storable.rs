//! Whether a shared cache may store a response (RFC 9111 §3, §3.5), and what it keeps of it.

use super::directives::{RequestDirectives, ResponseDirectives};
use http::header::{AUTHORIZATION, SET_COOKIE, VARY};
use http::{HeaderMap, Method};

/// What the operator allows beyond the RFC's defaults (CachePolicy).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreRules {
    /// Statuses that may be stored (empty: those with a lifetime, RFC 9111's rule).
    pub statuses: Vec<u16>,
    /// Store responses that set cookies (their `Set-Cookie` is kept and replayed to every
    /// client the entry answers: only for cookies meant for everyone).
    pub set_cookie: bool,
    /// The cache is keyed by the authenticated consumer, so a request with credentials
    /// may be stored for that consumer alone.
    pub keyed_by_consumer: bool,
    /// The largest body stored, in bytes.
    pub max_object_bytes: u64,
}

/// Why a response was not stored (for `Cache-Status` and metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    /// Only GET responses are stored (HEAD is answered from them).
    Method,
    /// A status the policy does not store, or a non-final one.
    Status,
    /// `no-store` in the request or the response.
    NoStore,
    /// `private`: for one user's cache.
    Private,
    /// The request carried credentials and the response did not say it may be shared
    /// (`public`, `s-maxage` or `must-revalidate`, §3.5).
    Authorization,
    /// The response sets a cookie and the policy does not store those.
    SetCookie,
    /// `Vary: *`: no request can be matched to it.
    VaryAll,
    /// Nothing gives it a lifetime.
    NoLifetime,
    /// Larger than the policy's maximum object size.
    TooLarge,
}

impl NotStored {
    /// The `detail` of a `Cache-Status` entry for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Status => "status",
            Self::NoStore => "no-store",
            Self::Private => "private",
            Self::Authorization => "authorization",
            Self::SetCookie => "set-cookie",
            Self::VaryAll => "vary-all",
            Self::NoLifetime => "no-lifetime",
            Self::TooLarge => "too-large",
        }
    }
}

/// What the storability check needs to know of one exchange.
pub struct Exchange<'a> {
    pub method: &'a Method,
    pub request: &'a HeaderMap,
    pub request_directives: &'a RequestDirectives,
    pub status: u16,
    pub response: &'a HeaderMap,
    pub response_directives: &'a ResponseDirectives,
    /// Its lifetime, as [`super::freshness::lifetime`] gives it.
    pub lifetime: Option<u64>,
    /// Its body's length when known (`Content-Length`); a longer body found while streaming
    /// stops the store then.
    pub length: Option<u64>,
}

/// Whether the exchange may be stored under `rules`.
pub fn storable(x: &Exchange<'_>, rules: &StoreRules) -> Result<(), NotStored> {
    if x.method != Method::GET {
        return Err(NotStored::Method);
    }
    if x.status < 200 || (!rules.statuses.is_empty() && !rules.statuses.contains(&x.status)) {
        return Err(NotStored::Status);
    }
    // 206 is a part of something (no ranges are kept); a 304 only refreshes what is stored
    // (§4.3.4), stored itself it would answer every client with nothing.
    if x.status == 206 || x.status == 304 {
        return Err(NotStored::Status);
    }
    if x.request_directives.no_store || x.response_directives.no_store {
        return Err(NotStored::NoStore);
    }
    if x.response_directives.private {
        return Err(NotStored::Private);
    }
    let d = x.response_directives;
    if x.request.contains_key(AUTHORIZATION)
        && !rules.keyed_by_consumer
        && !d.shareable_with_credentials()
    {
        return Err(NotStored::Authorization);
    }
    if x.response.contains_key(SET_COOKIE) && !rules.set_cookie {
        return Err(NotStored::SetCookie);
    }
    if vary_names(x.response).is_none() {
        return Err(NotStored::VaryAll);
    }
    if x.lifetime.is_none() {
        return Err(NotStored::NoLifetime);
    }
    if x.length
        .is_some_and(|n| rules.max_object_bytes > 0 && n > rules.max_object_bytes)
    {
        return Err(NotStored::TooLarge);
    }
    Ok(())
}

/// The request header names a response varies on, lowercased, sorted and deduplicated;
/// `None` for `Vary: *`.
pub fn vary_names(response: &HeaderMap) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for line in response.get_all(VARY) {
        // A Vary that is not text cannot be matched: as `*`.
        let line = line.to_str().ok()?;
        for name in line.split(',') {
            let name = name.trim();
            if name == "*" {
                return None;
            }
            if !name.is_empty() {
                names.push(name.to_ascii_lowercase());
            }
        }
    }
    names.sort();
    names.dedup();
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_headers as headers;

    fn check(
        method: Method,
        request: &[(&str, &str)],
        status: u16,
        response: &[(&str, &str)],
        lifetime: Option<u64>,
        rules: &StoreRules,
    ) -> Result<(), NotStored> {
        let (request, response) = (headers(request), headers(response));
        let rd = RequestDirectives::from_headers(&request);
        let sd = ResponseDirectives::from_headers(&response);
        storable(
            &Exchange {
                method: &method,
                request: &request,
                request_directives: &rd,
                status,
                response: &response,
                response_directives: &sd,
                lifetime,
                length: response
                    .get("content-length")
                    .and_then(|v| v.to_str().ok()?.parse().ok()),
            },
            rules,
        )
    }

    /// Method, request headers, status, response headers, lifetime, expected.
    type Case = (
        Method,
        Vec<(&'static str, &'static str)>,
        u16,
        Vec<(&'static str, &'static str)>,
        Option<u64>,
        Result<(), NotStored>,
    );

    #[test]
    fn storability_table() {
        use NotStored as N;
        let rules = StoreRules {
            max_object_bytes: 1000,
            ..StoreRules::default()
        };
        let cc = |v: &'static str| ("cache-control", v);
        let cases: Vec<Case> = vec![
            (
                Method::GET,
                vec![],
                200,
                vec![cc("max-age=60")],
                Some(60),
                Ok(()),
            ),
            (
                Method::HEAD,
                vec![],
                200,
                vec![cc("max-age=60")],
                Some(60),
                Err(N::Method),
            ),
            (
                Method::POST,
                vec![],
                200,
                vec![cc("max-age=60")],
                Some(60),
                Err(N::Method),
            ),
            (
                Method::GET,
                vec![],
                206,
                vec![cc("max-age=60")],
                Some(60),
                Err(N::Status),
            ),
            (Method::GET, vec![], 101, vec![], Some(60), Err(N::Status)),
            (
                Method::GET,
                vec![],
                304,
                vec![cc("max-age=60")],
                Some(60),
                Err(N::Status),
            ),
            (
                Method::GET,
                vec![cc("no-store")],
                200,
                vec![cc("max-age=60")],
                Some(60),
                Err(N::NoStore),
            ),
            (
                Method::GET,
                vec![],
                200,
                vec![cc("max-age=60, no-store")],
                Some(60),
                Err(N::NoStore),
            ),
            (
                Method::GET,
                vec![],
                200,
                vec![cc("max-age=60, private")],
                Some(60),
                Err(N::Private),
            ),
            // Credentials: only what the origin says may be shared.
            (
                Method::GET,
                vec![("authorization", "Bearer x")],
                200,
                vec![cc("max-age=60")],
                Some(60),
                Err(N::Authorization),
            ),
            (
                Method::GET,
                vec![("authorization", "Bearer x")],
                200,
                vec![cc("max-age=60, public")],
                Some(60),
                Ok(()),
            ),
            (
                Method::GET,
                vec![("authorization", "Bearer x")],
                200,
                vec![cc("s-maxage=60")],
                Some(60),
                Ok(()),
            ),
            (
                Method::GET,
                vec![("authorization", "Bearer x")],
                200,
                vec![cc("max-age=60, must-revalidate")],
                Some(60),
                Ok(()),
            ),
            (
                Method::GET,
                vec![],
                200,
                vec![cc("max-age=60"), ("set-cookie", "s=1")],
                Some(60),
                Err(N::SetCookie),
            ),
            (
                Method::GET,
                vec![],
                200,
                vec![cc("max-age=60"), ("vary", "accept, *")],
                Some(60),
                Err(N::VaryAll),
            ),
            (
                Method::GET,
                vec![],
                200,
                vec![cc("max-age=60"), ("vary", "accept-encoding")],
                Some(60),
                Ok(()),
            ),
            (Method::GET, vec![], 200, vec![], None, Err(N::NoLifetime)),
            (
                Method::GET,
                vec![],
                200,
                vec![cc("max-age=60"), ("content-length", "1001")],
                Some(60),
                Err(N::TooLarge),
            ),
            (
                Method::GET,
                vec![],
                200,
                vec![cc("max-age=60"), ("content-length", "1000")],
                Some(60),
                Ok(()),
            ),
            // no-cache is stored (and revalidated at every use).
            (
                Method::GET,
                vec![],
                200,
                vec![cc("no-cache")],
                Some(0),
                Ok(()),
            ),
        ];
        for (method, req, status, resp, lifetime, want) in cases {
            assert_eq!(
                check(method.clone(), &req, status, &resp, lifetime, &rules),
                want,
                "{method} {req:?} {status} {resp:?}"
            );
        }
    }

    #[test]
    fn the_policy_widens_and_narrows_what_is_stored() {
        let cc = [("cache-control", "max-age=60")];
        let with_cookie = [("cache-control", "max-age=60"), ("set-cookie", "a=b")];
        let auth = [("authorization", "Basic eDp5")];
        let open = StoreRules {
            set_cookie: true,
            keyed_by_consumer: true,
            ..StoreRules::default()
        };
        assert_eq!(
            check(Method::GET, &[], 200, &with_cookie, Some(60), &open),
            Ok(())
        );
        assert_eq!(check(Method::GET, &auth, 200, &cc, Some(60), &open), Ok(()));
        let only_ok = StoreRules {
            statuses: vec![200],
            ..StoreRules::default()
        };
        assert_eq!(
            check(Method::GET, &[], 404, &cc, Some(60), &only_ok),
            Err(NotStored::Status)
        );
    }

    #[test]
    fn vary_names_are_normalised() {
        assert_eq!(
            vary_names(&headers(&[
                ("vary", "Accept-Encoding, accept"),
                ("vary", "ACCEPT")
            ])),
            Some(vec!["accept".to_string(), "accept-encoding".to_string()])
        );
        assert_eq!(vary_names(&headers(&[])), Some(vec![]));
        assert_eq!(vary_names(&headers(&[("vary", "*")])), None);
    }
}
