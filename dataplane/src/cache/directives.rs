//! `Cache-Control` (RFC 9111 §5.2) parsed into what a shared cache acts on, for responses
//! and for requests.
//!
//! Parsing is strict where being lax would store what the origin did not mean to share: an
//! unreadable or repeated-and-different `max-age`/`s-maxage` counts as 0 (stale at once,
//! §4.2.1: "the response should be considered stale"), `private` or `no-cache` with a field
//! list counts as the unqualified directive (we keep no partial responses), and an unknown
//! directive is ignored (§5.2.3). A delta-seconds past what 31 bits hold is 2^31 (§1.2.2).

use http::HeaderMap;
use http::header::{CACHE_CONTROL, PRAGMA};

/// The largest delta-seconds a cache must represent; larger values are taken as this.
pub const DELTA_MAX: u64 = 2_147_483_648;

/// The response directives a shared cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// `s-maxage` was there but unreadable or given twice differently (`s_maxage` is then
    /// `Some(0)`).
    pub s_maxage_unreadable: bool,
    pub no_store: bool,
    /// Store, but validate with the origin before every reuse.
    pub no_cache: bool,
    /// For one user's cache only: a shared cache never stores it.
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub no_transform: bool,
    pub immutable: bool,
    /// RFC 5861: how long past its freshness it may be served while refreshed behind.
    pub stale_while_revalidate: Option<u64>,
    /// RFC 5861: how long past its freshness it may be served when the origin fails.
    pub stale_if_error: Option<u64>,
}

impl ResponseDirectives {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        let mut max_age = Seen::default();
        let mut s_maxage = Seen::default();
        let (all, broken) = directives(headers);
        // Part of a line is unreadable: it may have said `no-store` or `private`.
        d.no_store = broken;
        for (name, value) in all {
            match name.as_str() {
                "max-age" => max_age.add(value.as_deref()),
                "s-maxage" => s_maxage.add(value.as_deref()),
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "no-transform" => d.no_transform = true,
                "immutable" => d.immutable = true,
                "stale-while-revalidate" => {
                    d.stale_while_revalidate = value.as_deref().and_then(delta_seconds);
                }
                "stale-if-error" => d.stale_if_error = value.as_deref().and_then(delta_seconds),
                _ => {}
            }
        }
        d.max_age = max_age.value();
        d.s_maxage = s_maxage.value();
        d.s_maxage_unreadable = s_maxage.conflict;
        d
    }

    /// Whether the origin said a response to a request with credentials may be shared
    /// (RFC 9111 §3.5): `public`, `must-revalidate`, or an `s-maxage` that reads (one that
    /// does not is stale at once, but is no permission).
    pub fn shareable_with_credentials(&self) -> bool {
        self.public
            || self.must_revalidate
            || (self.s_maxage.is_some() && !self.s_maxage_unreadable)
    }

    /// Whether the origin said how long the response stays fresh for a shared cache, in
    /// `Cache-Control` (`Expires` is the caller's to look at).
    pub fn explicit_lifetime(&self) -> Option<u64> {
        self.s_maxage.or(self.max_age)
    }

    /// Whether a stale copy may never be served without the origin's word (§4.2.4):
    /// `must-revalidate`, `proxy-revalidate`, and `s-maxage` (which implies the latter for a
    /// shared cache, §5.2.2.10).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

/// The request directives a shared cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// Accept no copy older than this.
    pub max_age: Option<u64>,
    /// Accept a stale copy: `Some(None)` however stale, `Some(Some(n))` up to `n` seconds.
    pub max_stale: Option<Option<u64>>,
    /// Accept only a copy fresh for at least this much longer.
    pub min_fresh: Option<u64>,
    /// Validate with the origin before using a stored copy.
    pub no_cache: bool,
    /// Store nothing of this exchange.
    pub no_store: bool,
    /// Answer from the cache or with 504.
    pub only_if_cached: bool,
}

impl RequestDirectives {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        let mut any = false;
        let mut max_age = Seen::default();
        for (name, value) in directives(headers).0 {
            any = true;
            match name.as_str() {
                "max-age" => max_age.add(value.as_deref()),
                "max-stale" => {
                    // An unreadable value accepts nothing stale rather than everything.
                    d.max_stale = Some(value.as_deref().map(|v| delta_seconds(v).unwrap_or(0)));
                }
                "min-fresh" => {
                    d.min_fresh = Some(value.as_deref().and_then(delta_seconds).unwrap_or(0))
                }
                "no-cache" => d.no_cache = true,
                "no-store" => d.no_store = true,
                "only-if-cached" => d.only_if_cached = true,
                _ => {}
            }
        }
        d.max_age = max_age.value();
        // HTTP/1.0's `Pragma: no-cache`, when there is no Cache-Control to say otherwise.
        if !any
            && headers
                .get_all(PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| {
                    v.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case("no-cache"))
                })
        {
            d.no_cache = true;
        }
        d
    }
}

/// A delta-seconds directive seen once or more: its value, or 0 when unreadable or given
/// twice with different values.
#[derive(Default)]
struct Seen {
    value: Option<u64>,
    conflict: bool,
}

impl Seen {
    fn add(&mut self, raw: Option<&str>) {
        let v = raw.and_then(delta_seconds);
        match (self.value, v) {
            (_, None) => self.conflict = true,
            (None, Some(v)) if !self.conflict => self.value = Some(v),
            (Some(old), Some(v)) if old != v => self.conflict = true,
            _ => {}
        }
    }

    fn value(&self) -> Option<u64> {
        if self.conflict { Some(0) } else { self.value }
    }
}

/// `1*DIGIT`, capped at [`DELTA_MAX`].
pub fn delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits only: a parse failure is an overflow.
    Some(s.parse::<u64>().map_or(DELTA_MAX, |v| v.min(DELTA_MAX)))
}

/// Every directive of every `Cache-Control` line: lowercased name, and its value unquoted.
/// Commas inside a quoted string do not split. Bytes past ASCII (obs-text, legal inside a
/// quoted string) are read leniently, so they cost the line nothing else. The second value
/// says whether a line could not be read whole (a quote left open): what came after it is
/// lost, so a response must then be taken as `no-store`.
fn directives(headers: &HeaderMap) -> (Vec<(String, Option<String>)>, bool) {
    let mut out = Vec::new();
    let mut broken = false;
    for line in headers.get_all(CACHE_CONTROL) {
        let line = String::from_utf8_lossy(line.as_bytes());
        let (items, open_quote) = split_list(&line);
        broken |= open_quote;
        for item in items {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
                None => (item.trim(), None),
            };
            if name.is_empty() {
                continue;
            }
            out.push((name.to_ascii_lowercase(), value));
        }
    }
    (out, broken)
}

/// `a, b="x, y", c` into its items, outside quotes only; and whether a quote was left open.
fn split_list(line: &str) -> (Vec<&str>, bool) {
    let mut items = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&line[start..]);
    let items = items.into_iter().filter(|s| !s.trim().is_empty()).collect();
    (items, quoted)
}

/// A quoted-string's content (backslash escapes removed), or a token as it is.
fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_headers as headers;

    fn response(cc: &[&str]) -> ResponseDirectives {
        let lines: Vec<(&str, &str)> = cc.iter().map(|v| ("cache-control", *v)).collect();
        ResponseDirectives::from_headers(&headers(&lines))
    }

    #[test]
    fn response_directives_table() {
        let cases: &[(&[&str], ResponseDirectives)] = &[
            (&[], ResponseDirectives::default()),
            (
                &["max-age=60, public"],
                ResponseDirectives {
                    max_age: Some(60),
                    public: true,
                    ..Default::default()
                },
            ),
            // Names are case-insensitive; lines add up.
            (
                &["Max-Age=5", "S-MAXAGE=10, Must-Revalidate"],
                ResponseDirectives {
                    max_age: Some(5),
                    s_maxage: Some(10),
                    must_revalidate: true,
                    ..Default::default()
                },
            ),
            // A quoted value, and a comma inside quotes that does not split.
            (
                &["max-age=\"30\", private=\"set-cookie, x-user\", no-store"],
                ResponseDirectives {
                    max_age: Some(30),
                    private: true,
                    no_store: true,
                    ..Default::default()
                },
            ),
            // Unreadable: stale at once, not "no max-age".
            (
                &["max-age=abc"],
                ResponseDirectives {
                    max_age: Some(0),
                    ..Default::default()
                },
            ),
            (
                &["max-age=-1"],
                ResponseDirectives {
                    max_age: Some(0),
                    ..Default::default()
                },
            ),
            // Two different values: stale; the same twice: that value.
            (
                &["max-age=60", "max-age=3600"],
                ResponseDirectives {
                    max_age: Some(0),
                    ..Default::default()
                },
            ),
            (
                &["max-age=60, max-age=60"],
                ResponseDirectives {
                    max_age: Some(60),
                    ..Default::default()
                },
            ),
            // Past 31 bits: 2^31.
            (
                &["max-age=99999999999999999999999"],
                ResponseDirectives {
                    max_age: Some(DELTA_MAX),
                    ..Default::default()
                },
            ),
            (
                &[
                    "no-cache=\"set-cookie\", stale-while-revalidate=30, stale-if-error=600, immutable, no-transform, proxy-revalidate, x-unknown=1",
                ],
                ResponseDirectives {
                    no_cache: true,
                    stale_while_revalidate: Some(30),
                    stale_if_error: Some(600),
                    immutable: true,
                    no_transform: true,
                    proxy_revalidate: true,
                    ..Default::default()
                },
            ),
            // Empty items and stray commas are nothing.
            (
                &[", ,max-age=1,,"],
                ResponseDirectives {
                    max_age: Some(1),
                    ..Default::default()
                },
            ),
        ];
        for (lines, want) in cases {
            assert_eq!(&response(lines), want, "{lines:?}");
        }
    }

    #[test]
    fn an_unreadable_s_maxage_is_stale_and_no_permission_to_share() {
        let d = response(&["s-maxage=soon"]);
        assert_eq!(d.s_maxage, Some(0));
        assert!(d.forbids_stale() && !d.shareable_with_credentials());
        assert!(response(&["s-maxage=0"]).shareable_with_credentials());
        assert!(response(&["public"]).shareable_with_credentials());
        assert!(!response(&["max-age=60"]).shareable_with_credentials());
    }

    #[test]
    fn s_maxage_wins_and_forbids_stale_for_a_shared_cache() {
        let d = response(&["max-age=10, s-maxage=100"]);
        assert_eq!(d.explicit_lifetime(), Some(100));
        assert!(d.forbids_stale());
        assert!(!response(&["max-age=10"]).forbids_stale());
        assert!(response(&["max-age=10, must-revalidate"]).forbids_stale());
    }

    #[test]
    fn request_directives_table() {
        let req = |lines: &[(&str, &str)]| RequestDirectives::from_headers(&headers(lines));
        assert_eq!(req(&[]), RequestDirectives::default());
        assert_eq!(
            req(&[("cache-control", "max-stale")]).max_stale,
            Some(None),
            "any staleness"
        );
        assert_eq!(
            req(&[("cache-control", "max-stale=30, min-fresh=5, max-age=60")]),
            RequestDirectives {
                max_stale: Some(Some(30)),
                min_fresh: Some(5),
                max_age: Some(60),
                ..Default::default()
            }
        );
        assert_eq!(
            req(&[("cache-control", "max-stale=soon")]).max_stale,
            Some(Some(0)),
            "unreadable: nothing stale"
        );
        let d = req(&[("cache-control", "no-cache, no-store, only-if-cached")]);
        assert!(d.no_cache && d.no_store && d.only_if_cached);
        // Pragma only without Cache-Control.
        assert!(req(&[("pragma", "no-cache")]).no_cache);
        assert!(!req(&[("pragma", "no-cache"), ("cache-control", "max-age=5")]).no_cache);
    }

    #[test]
    fn bytes_past_ascii_cost_nothing_else_and_an_open_quote_is_no_store() {
        let mut h = HeaderMap::new();
        h.append(
            CACHE_CONTROL,
            http::HeaderValue::from_bytes(b"private, x=\"caf\xc3\xa9\", max-age=\xff")
                .expect("value"),
        );
        let d = ResponseDirectives::from_headers(&h);
        assert!(d.private, "read past the obs-text");
        assert_eq!(d.max_age, Some(0), "an unreadable max-age is stale");
        assert!(!d.no_store);
        // An unterminated quote swallows what follows: whatever it hid, do not store.
        let d = response(&["foo=\"a, private"]);
        assert!(d.no_store && !d.private);
    }
}
