//! Which stored variant answers a request (RFC 9111 §4.1): the values of the request
//! headers the response varies on, normalised only where that keeps their meaning.

use http::HeaderMap;

/// A request's values for the header names a response varies on, with those names (two
/// responses varying on different headers are different variants): `None` where the
/// request did not send the header (absent and empty differ).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Variant {
    names: Vec<String>,
    values: Vec<Option<Vec<u8>>>,
}

impl Variant {
    /// The variant of `request` for the names a response varies on ([`super::storable::vary_names`]).
    pub fn of(request: &HeaderMap, names: &[String]) -> Self {
        Self {
            names: names.to_vec(),
            values: names.iter().map(|n| value(request, n)).collect(),
        }
    }

    /// A variant from the names and values [`Variant::values`] gave (the shared tier's).
    pub fn from_parts(names: Vec<String>, values: Vec<Option<Vec<u8>>>) -> Self {
        Self { names, values }
    }

    /// The request's values, one per name (`None`: not sent).
    pub fn values(&self) -> &[Option<Vec<u8>>] {
        &self.values
    }

    /// Bytes it holds (for the store's budget).
    pub fn size(&self) -> usize {
        self.names.iter().map(String::len).sum::<usize>()
            + self.values.iter().flatten().map(Vec::len).sum::<usize>()
    }
}

/// Marks a value kept as raw bytes: normalised text never holds this byte (a header value
/// that is text is visible ASCII), so raw bytes never equal a normalised text.
const RAW: u8 = 0xff;

/// One varied header's value: every line joined by `,`, whitespace around list items
/// dropped and runs of it inside an item made one space; for the content-negotiation
/// headers, whose tokens are case-insensitive, lowercased as well. A value with a line that
/// is not text is kept byte for byte, marked [`RAW`], so it only matches itself.
fn value(request: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    let mut lines = request.get_all(name).iter().peekable();
    lines.peek()?;
    if request.get_all(name).iter().any(|l| l.to_str().is_err()) {
        let mut raw = vec![RAW];
        for (i, line) in request.get_all(name).iter().enumerate() {
            if i > 0 {
                raw.push(b'\n');
            }
            raw.extend_from_slice(line.as_bytes());
        }
        return Some(raw);
    }
    let case_insensitive = matches!(name, "accept-encoding" | "accept-charset");
    let mut items: Vec<String> = Vec::new();
    for line in lines {
        let text = line.to_str().unwrap_or_default();
        for item in text.split(',') {
            let item = item.split_whitespace().collect::<Vec<_>>().join(" ");
            if item.is_empty() {
                continue;
            }
            items.push(if case_insensitive {
                item.to_ascii_lowercase()
            } else {
                item
            });
        }
    }
    Some(items.join(",").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_headers as req;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn equivalent_requests_share_a_variant_and_different_ones_do_not() {
        let n = names(&["accept-encoding", "accept-language"]);
        let v = |lines: &[(&str, &str)]| Variant::of(&req(lines), &n);
        // Whitespace and case of encodings do not matter; line splits do not either.
        assert_eq!(
            v(&[("accept-encoding", "gzip, br"), ("accept-language", "en")]),
            v(&[("accept-encoding", "GZIP,br"), ("accept-language", " en ")])
        );
        assert_eq!(
            v(&[("accept-encoding", "gzip"), ("accept-encoding", "br")]),
            v(&[("accept-encoding", "gzip, br")])
        );
        // The order of items counts (it can carry preference), and so does the case of
        // anything but the encoding tokens.
        assert_ne!(
            v(&[("accept-encoding", "gzip, br")]),
            v(&[("accept-encoding", "br, gzip")])
        );
        assert_ne!(
            v(&[("accept-language", "en")]),
            v(&[("accept-language", "EN")])
        );
        // Absent is not empty.
        assert_ne!(v(&[]), v(&[("accept-encoding", "")]));
        assert_ne!(v(&[("accept-encoding", "gzip")]), v(&[]));
    }

    #[test]
    fn raw_bytes_match_only_themselves() {
        let n = names(&["x-v"]);
        let mut raw = HeaderMap::new();
        raw.insert(
            "x-v",
            http::HeaderValue::from_bytes(b"\xff").expect("value"),
        );
        assert_ne!(
            Variant::of(&raw, &n),
            Variant::of(&req(&[("x-v", "\\xff")]), &n)
        );
        assert_eq!(Variant::of(&raw, &n), Variant::of(&raw.clone(), &n));
        // Different names are different variants, even with no values.
        assert_ne!(
            Variant::of(&req(&[]), &n),
            Variant::of(&req(&[]), &names(&["x-w"]))
        );
    }

    #[test]
    fn an_unkeyed_header_never_reaches_another_client() {
        // A response varying on X-Forwarded-Host: two clients sending different values get
        // different variants (no poisoning through a reflected header).
        let n = names(&["x-forwarded-host"]);
        assert_ne!(
            Variant::of(&req(&[("x-forwarded-host", "evil.example")]), &n),
            Variant::of(&req(&[("x-forwarded-host", "shop.example")]), &n)
        );
        assert_ne!(
            Variant::of(&req(&[("x-forwarded-host", "evil.example")]), &n),
            Variant::of(&req(&[]), &n)
        );
    }
}
