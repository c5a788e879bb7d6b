//! Reading credentials out of a request the way a backend would: one value per place, and a
//! value that cannot be the one thing a backend reads there ([`UNUSABLE`]) rather than none.

use crate::util::query_values;
use http::{HeaderMap, header};
use portico_model::auth::TokenSource;
use std::borrow::Cow;

/// What a credential found where a policy looks reads as when it cannot be the one thing a
/// backend would read there: it verifies as nothing (an empty token or key never does), so the
/// request is refused rather than let through as anonymous while the backend acts on it.
pub(super) const UNUSABLE: &str = "";

/// The credentials after `scheme` in an `Authorization`-style value, split the way a lenient
/// backend would (the scheme case-insensitively, then any spaces or tabs): `Some("")` for the
/// scheme alone, `None` for another scheme.
pub(super) fn after_scheme<'v>(value: &'v str, scheme: &str) -> Option<&'v str> {
    let v = value.trim_matches([' ', '\t']);
    let (head, rest) = match v.find([' ', '\t']) {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, ""),
    };
    head.eq_ignore_ascii_case(scheme)
        .then(|| rest.trim_matches([' ', '\t']))
}

/// The one value of header `name`: `None` without one, `Some(Err(()))` when it is repeated
/// (which copy a backend reads is its parser's choice: a credential that cannot be used,
/// never "none"). A value that is not text is read lossily, so it cannot verify either.
pub(super) fn single_header<'r>(
    headers: &'r HeaderMap,
    name: &str,
) -> Option<Result<Cow<'r, str>, ()>> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return Some(Err(()));
    }
    Some(Ok(match first.to_str() {
        Ok(v) => Cow::Borrowed(v),
        Err(_) => Cow::Owned(String::from_utf8_lossy(first.as_bytes()).into_owned()),
    }))
}

/// The one value of query parameter `name` (compared decoded), [`UNUSABLE`] when repeated.
pub(super) fn single_query_param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    let mut found = query_values(query?, name);
    let first = found.next()?;
    Some(if found.next().is_some() {
        Cow::Borrowed(UNUSABLE)
    } else {
        first
    })
}

/// The one cookie `name` over every Cookie header (names compared trimmed, as servers read
/// them), [`UNUSABLE`] when it appears more than once.
pub(super) fn single_cookie<'r>(headers: &'r HeaderMap, name: &str) -> Option<Cow<'r, str>> {
    let mut found: Option<Cow<'r, str>> = None;
    for v in headers.get_all(header::COOKIE) {
        let text = String::from_utf8_lossy(v.as_bytes());
        for c in text.split(';') {
            let Some((k, value)) = c.split_once('=') else {
                continue;
            };
            if k.trim() != name {
                continue;
            }
            if found.is_some() {
                return Some(Cow::Borrowed(UNUSABLE));
            }
            found = Some(Cow::Owned(value.trim().to_string()));
        }
    }
    found
}

pub(super) fn token_from<'r>(
    s: &TokenSource,
    headers: &'r HeaderMap,
    query: Option<&'r str>,
) -> Option<Cow<'r, str>> {
    match s {
        TokenSource::Header { name, prefix } => {
            let Ok(v) = single_header(headers, name)? else {
                return Some(Cow::Borrowed(UNUSABLE));
            };
            let scheme = prefix.trim();
            if scheme.is_empty() {
                let t = v.trim();
                return (!t.is_empty()).then(|| Cow::Owned(t.to_string()));
            }
            if prefix.ends_with([' ', '\t']) && !scheme.contains([' ', '\t']) {
                // An auth scheme (`Bearer `): alone, or followed by a tab, it is presented,
                // and checked as such.
                let t = after_scheme(&v, scheme)?;
                return Some(Cow::Owned(t.to_string()));
            }
            // Any other prefix (`tok:`, `Custom Scheme `): compared case-insensitively, right
            // before the token.
            let v = v.trim();
            let head = v.get(..prefix.len())?;
            head.eq_ignore_ascii_case(prefix)
                .then(|| Cow::Owned(v[prefix.len()..].trim().to_string()))
        }
        TokenSource::Cookie(name) => single_cookie(headers, name),
        TokenSource::Query(name) => single_query_param(query, name),
    }
}
