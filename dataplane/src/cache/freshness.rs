//! How long a stored response stays fresh (RFC 9111 §4.2.1, §4.2.2), how old it is
//! (§4.2.3), and whether a request may reuse it now (§4.2, §4.2.4, RFC 5861).
//!
//! Times are whole seconds since the Unix epoch, as HTTP dates are.

use super::directives::{RequestDirectives, ResponseDirectives};
use http::HeaderMap;
use http::header::{AGE, DATE, EXPIRES, LAST_MODIFIED};
use std::time::SystemTime;

/// What the operator says about lifetimes (CachePolicy `defaultTTL`, `forcedTTL`,
/// `maxTTL`, `heuristic`), in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ttls {
    /// For a response whose origin says nothing about freshness (the origin wins when it
    /// does).
    pub default: Option<u64>,
    /// Whatever the origin says about lifetimes (the operator wins). `no-store`, `private`
    /// and `no-cache` still apply.
    pub forced: Option<u64>,
    /// No lifetime is longer.
    pub max: Option<u64>,
    /// Allow the heuristic (10 % of the time since `Last-Modified`) when the origin says
    /// nothing and there is no default.
    pub heuristic: bool,
}

/// The longest lifetime the heuristic gives (a day, as common practice caps it).
pub const HEURISTIC_MAX: u64 = 86_400;

/// The timing facts kept with a stored response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// When the request that brought it was sent.
    pub request_time: u64,
    /// When its response arrived.
    pub response_time: u64,
    /// Its `Date` (the response time when missing or unreadable).
    pub date: u64,
    /// Its `Age` on arrival.
    pub age: u64,
    /// How long it is fresh for.
    pub lifetime: u64,
}

/// Seconds since the epoch now.
pub fn now() -> u64 {
    unix(SystemTime::now())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An HTTP date header's value in seconds, if it has one that parses.
pub fn date_header(headers: &HeaderMap, name: http::header::HeaderName) -> Option<u64> {
    let v = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v).ok().map(unix)
}

/// Statuses a cache may give a heuristic lifetime (RFC 9110 §15.1, "heuristically
/// cacheable"), less 206 (no ranges are kept).
pub fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The freshness lifetime of a response, or `None` when nothing gives it one (it is then
/// not stored). The operator's TTLs apply only to statuses that are heuristically
/// cacheable or that the policy lists (`listed`): an error the origin did not mark
/// cacheable (a 400, a 503) must not be stored for everyone because the operator set a
/// default, or one client who provokes it answers all the others (§3).
pub fn lifetime(
    status: u16,
    headers: &HeaderMap,
    d: &ResponseDirectives,
    ttls: &Ttls,
    listed: bool,
    response_time: u64,
) -> Option<u64> {
    let cap = |v: u64| ttls.max.map_or(v, |m| v.min(m));
    let operator = heuristically_cacheable(status) || listed;
    if let Some(forced) = ttls.forced.filter(|_| operator) {
        return Some(cap(forced));
    }
    let explicit = d.explicit_lifetime().or_else(|| {
        // Expires without a date that parses ("0", "-1") is in the past (§5.3).
        headers.get(EXPIRES)?;
        let expires = date_header(headers, EXPIRES).unwrap_or(0);
        let date = date_header(headers, DATE).unwrap_or(response_time);
        Some(expires.saturating_sub(date))
    });
    if let Some(v) = explicit {
        return Some(cap(v));
    }
    if let Some(v) = ttls.default.filter(|_| operator) {
        return Some(cap(v));
    }
    if ttls.heuristic && (heuristically_cacheable(status) || d.public) {
        let modified = date_header(headers, LAST_MODIFIED)?;
        let date = date_header(headers, DATE).unwrap_or(response_time);
        return Some(cap((date.saturating_sub(modified) / 10).min(HEURISTIC_MAX)));
    }
    None
}

impl Timing {
    /// The timing of a response that arrived at `response_time` for a request sent at
    /// `request_time`, fresh for `lifetime`.
    pub fn new(headers: &HeaderMap, request_time: u64, response_time: u64, lifetime: u64) -> Self {
        let age = headers
            .get(AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(super::directives::delta_seconds)
            .unwrap_or(0);
        Self {
            request_time,
            response_time,
            date: date_header(headers, DATE).unwrap_or(response_time),
            age,
            lifetime,
        }
    }

    /// Its current age at `now` (§4.2.3).
    pub fn current_age(&self, now: u64) -> u64 {
        let apparent_age = self.response_time.saturating_sub(self.date);
        let response_delay = self.response_time.saturating_sub(self.request_time);
        let corrected_age_value = self.age.saturating_add(response_delay);
        let corrected_initial_age = apparent_age.max(corrected_age_value);
        let resident_time = now.saturating_sub(self.response_time);
        corrected_initial_age.saturating_add(resident_time)
    }

    /// Seconds it stays fresh from `now` (negative once stale: by how much).
    pub fn ttl(&self, now: u64) -> i64 {
        i64::try_from(self.lifetime).unwrap_or(i64::MAX)
            - i64::try_from(self.current_age(now)).unwrap_or(i64::MAX)
    }
}

/// What a request may do with a stored response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reuse {
    /// Serve it.
    Fresh,
    /// Serve it stale, the client accepting that (`max-stale`).
    StaleAccepted,
    /// Serve it stale now and refresh it in the background (`stale-while-revalidate`).
    StaleWhileRevalidate,
    /// Ask the origin first (a conditional request with its validators); the stale copy
    /// may still answer if the origin fails within `stale-if-error`.
    Revalidate,
    /// Ask the origin first, and never serve it stale, even when the origin fails
    /// (`must-revalidate` and its kin).
    MustRevalidate,
}

/// Whether a request with directives `req` may reuse a stored response with directives
/// `stored` and `timing`, at `now`. `swr_default` is the policy's stale-while-revalidate
/// when the response gives none. `s-maxage` forbids serving stale for a shared cache
/// (§4.2.4, §5.2.2.10), so `s-maxage=60, stale-while-revalidate=30` is revalidated at 60 s:
/// an origin that wants the stale window gives `max-age` alone.
pub fn reuse(
    stored: &ResponseDirectives,
    timing: &Timing,
    req: &RequestDirectives,
    swr_default: Option<u64>,
    now: u64,
) -> Reuse {
    let age = timing.current_age(now);
    // A stored `no-cache` is never served without the origin's word, stale or not.
    let forbids_stale = stored.forbids_stale() || stored.no_cache;
    let validate = if forbids_stale {
        Reuse::MustRevalidate
    } else {
        Reuse::Revalidate
    };
    if req.no_cache || stored.no_cache {
        return validate;
    }
    let too_old = req.max_age.is_some_and(|m| age > m);
    let needed = age.saturating_add(req.min_fresh.unwrap_or(0));
    if !too_old && needed < timing.lifetime {
        return Reuse::Fresh;
    }
    if forbids_stale || too_old {
        return validate;
    }
    let staleness = age.saturating_sub(timing.lifetime);
    match req.max_stale {
        Some(None) => return Reuse::StaleAccepted,
        Some(Some(m)) if staleness <= m => return Reuse::StaleAccepted,
        _ => {}
    }
    if req.min_fresh.is_none()
        && stored
            .stale_while_revalidate
            .or(swr_default)
            .is_some_and(|w| staleness <= w)
    {
        return Reuse::StaleWhileRevalidate;
    }
    Reuse::Revalidate
}

/// Whether a stale copy may answer for an origin that failed (`stale-if-error`, or the
/// policy's default), at `now`.
pub fn stale_if_error(
    stored: &ResponseDirectives,
    timing: &Timing,
    sie_default: Option<u64>,
    now: u64,
) -> bool {
    if stored.forbids_stale() || stored.no_cache {
        return false;
    }
    let staleness = timing.current_age(now).saturating_sub(timing.lifetime);
    stored
        .stale_if_error
        .or(sie_default)
        .is_some_and(|w| staleness <= w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_headers as headers;

    const T0: u64 = 1_700_000_000;

    fn http_date(secs: u64) -> String {
        httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    }

    fn life(status: u16, lines: &[(&str, &str)], ttls: Ttls) -> Option<u64> {
        let h = headers(lines);
        lifetime(
            status,
            &h,
            &ResponseDirectives::from_headers(&h),
            &ttls,
            false,
            T0,
        )
    }

    /// Status, response headers, the policy's TTLs, the lifetime expected.
    type LifetimeCase = (u16, Vec<(&'static str, String)>, Ttls, Option<u64>);

    #[test]
    fn lifetime_table() {
        let date = http_date(T0);
        let none = Ttls::default();
        let cases: Vec<LifetimeCase> = vec![
            // s-maxage over max-age over Expires.
            (
                200,
                vec![("cache-control", "max-age=60, s-maxage=300".into())],
                none,
                Some(300),
            ),
            (
                200,
                vec![
                    ("cache-control", "max-age=60".into()),
                    ("expires", http_date(T0 + 3600)),
                    ("date", date.clone()),
                ],
                none,
                Some(60),
            ),
            (
                200,
                vec![("expires", http_date(T0 + 120)), ("date", date.clone())],
                none,
                Some(120),
            ),
            // An Expires that is no date is in the past.
            (
                200,
                vec![("expires", "0".into()), ("date", date.clone())],
                none,
                Some(0),
            ),
            // Nothing said: nothing stored, unless a default or the heuristic.
            (200, vec![("date", date.clone())], none, None),
            (
                200,
                vec![("date", date.clone())],
                Ttls {
                    default: Some(30),
                    ..none
                },
                Some(30),
            ),
            // The origin wins over the default, the operator's forced TTL over the origin.
            (
                200,
                vec![("cache-control", "max-age=5".into())],
                Ttls {
                    default: Some(30),
                    ..none
                },
                Some(5),
            ),
            (
                200,
                vec![("cache-control", "max-age=5".into())],
                Ttls {
                    forced: Some(30),
                    ..none
                },
                Some(30),
            ),
            // The maximum caps everything.
            (
                200,
                vec![("cache-control", "max-age=86400".into())],
                Ttls {
                    max: Some(600),
                    ..none
                },
                Some(600),
            ),
            // The heuristic: 10 % of the time since Last-Modified, a day at most.
            (
                200,
                vec![
                    ("date", date.clone()),
                    ("last-modified", http_date(T0 - 1000)),
                ],
                Ttls {
                    heuristic: true,
                    ..none
                },
                Some(100),
            ),
            (
                200,
                vec![
                    ("date", date.clone()),
                    ("last-modified", http_date(T0 - 100 * 86_400)),
                ],
                Ttls {
                    heuristic: true,
                    ..none
                },
                Some(HEURISTIC_MAX),
            ),
            // The operator's TTLs are not for an error the origin did not mark cacheable.
            (
                503,
                vec![("date", date.clone())],
                Ttls {
                    default: Some(30),
                    forced: Some(60),
                    ..none
                },
                None,
            ),
            (
                503,
                vec![("cache-control", "max-age=5".into())],
                Ttls {
                    default: Some(30),
                    ..none
                },
                Some(5),
            ),
            // Not for a status that is not heuristically cacheable.
            (
                302,
                vec![
                    ("date", date.clone()),
                    ("last-modified", http_date(T0 - 1000)),
                ],
                Ttls {
                    heuristic: true,
                    ..none
                },
                None,
            ),
        ];
        for (status, lines, ttls, want) in cases {
            let lines: Vec<(&str, &str)> = lines.iter().map(|(n, v)| (*n, v.as_str())).collect();
            assert_eq!(
                life(status, &lines, ttls),
                want,
                "{status} {lines:?} {ttls:?}"
            );
        }
    }

    #[test]
    fn a_status_the_policy_lists_takes_its_ttls() {
        let h = headers(&[]);
        let d = ResponseDirectives::default();
        let ttls = Ttls {
            default: Some(30),
            ..Ttls::default()
        };
        assert_eq!(lifetime(302, &h, &d, &ttls, true, T0), Some(30));
        assert_eq!(lifetime(302, &h, &d, &ttls, false, T0), None);
    }

    #[test]
    fn age_follows_section_4_2_3() {
        // Sent at T0, answered 2 s later with Age 10 and a Date 1 s before arrival.
        let h = headers(&[("age", "10"), ("date", &http_date(T0 + 1))]);
        let t = Timing::new(&h, T0, T0 + 2, 60);
        // corrected initial age = max(apparent 1, 10 + delay 2) = 12; then resident time.
        assert_eq!(t.current_age(T0 + 2), 12);
        assert_eq!(t.current_age(T0 + 32), 42);
        assert_eq!(t.ttl(T0 + 32), 18);
        // A Date in the future (a fast origin clock) is no negative age.
        let h = headers(&[("date", &http_date(T0 + 500))]);
        assert_eq!(Timing::new(&h, T0, T0, 60).current_age(T0), 0);
        // An unreadable Age counts as none.
        let h = headers(&[("age", "old")]);
        assert_eq!(Timing::new(&h, T0, T0, 60).current_age(T0 + 5), 5);
    }

    #[test]
    fn reuse_table() {
        let stored =
            |cc: &str| ResponseDirectives::from_headers(&headers(&[("cache-control", cc)]));
        let req = |cc: &str| RequestDirectives::from_headers(&headers(&[("cache-control", cc)]));
        // Stored at T0, fresh for 60 s.
        let t = Timing {
            request_time: T0,
            response_time: T0,
            date: T0,
            age: 0,
            lifetime: 60,
        };
        let cases: &[(&str, &str, Option<u64>, u64, Reuse)] = &[
            ("max-age=60", "", None, 10, Reuse::Fresh),
            ("max-age=60", "", None, 60, Reuse::Revalidate),
            // The request's own limits.
            ("max-age=60", "max-age=5", None, 10, Reuse::Revalidate),
            ("max-age=60", "min-fresh=55", None, 10, Reuse::Revalidate),
            ("max-age=60", "no-cache", None, 10, Reuse::Revalidate),
            ("no-cache", "", None, 10, Reuse::MustRevalidate),
            // Stale but accepted by the client.
            ("max-age=60", "max-stale", None, 1000, Reuse::StaleAccepted),
            ("max-age=60", "max-stale=30", None, 80, Reuse::StaleAccepted),
            ("max-age=60", "max-stale=30", None, 100, Reuse::Revalidate),
            // stale-while-revalidate, from the response or the policy.
            (
                "max-age=60, stale-while-revalidate=30",
                "",
                None,
                80,
                Reuse::StaleWhileRevalidate,
            ),
            (
                "max-age=60, stale-while-revalidate=30",
                "",
                None,
                100,
                Reuse::Revalidate,
            ),
            ("max-age=60", "", Some(30), 80, Reuse::StaleWhileRevalidate),
            // must-revalidate and s-maxage: never stale, whatever the client accepts.
            (
                "max-age=60, must-revalidate",
                "max-stale",
                None,
                80,
                Reuse::MustRevalidate,
            ),
            (
                "s-maxage=60, stale-while-revalidate=30",
                "",
                None,
                80,
                Reuse::MustRevalidate,
            ),
            ("max-age=60, must-revalidate", "", None, 10, Reuse::Fresh),
        ];
        for (cc, rc, swr, at, want) in cases {
            assert_eq!(
                reuse(&stored(cc), &t, &req(rc), *swr, T0 + at),
                *want,
                "stored {cc:?}, request {rc:?}, policy swr {swr:?}, at +{at}"
            );
        }
    }

    #[test]
    fn stale_if_error_window() {
        let stored =
            |cc: &str| ResponseDirectives::from_headers(&headers(&[("cache-control", cc)]));
        let t = Timing {
            request_time: T0,
            response_time: T0,
            date: T0,
            age: 0,
            lifetime: 60,
        };
        assert!(stale_if_error(
            &stored("max-age=60, stale-if-error=300"),
            &t,
            None,
            T0 + 300
        ));
        assert!(!stale_if_error(
            &stored("max-age=60, stale-if-error=300"),
            &t,
            None,
            T0 + 400
        ));
        assert!(stale_if_error(
            &stored("max-age=60"),
            &t,
            Some(600),
            T0 + 400
        ));
        assert!(!stale_if_error(&stored("max-age=60"), &t, None, T0 + 61));
        assert!(!stale_if_error(
            &stored("max-age=60, must-revalidate, stale-if-error=300"),
            &t,
            Some(600),
            T0 + 100
        ));
    }
}
