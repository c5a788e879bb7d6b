//! Which stored variant answers a request (RFC 9111 §4.1): the values of the request
//! headers the response varies on, normalised only where that keeps their meaning.

use http::HeaderMap;

/// A request's values for the header names a response varies on, in the names' order:
/// `None` where the request did not send the header (absent and empty differ).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Variant(Vec<Option<String>>);

impl Variant {
    /// The variant of `request` for the names a response varies on ([`super::storable::vary_names`]).
    pub fn of(request: &HeaderMap, names: &[String]) -> Self {
        Self(names.iter().map(|n| value(request, n)).collect())
    }
}

/// One varied header's value: every line joined by `,`, whitespace around list items
/// dropped and runs of it inside an item made one space; for the content-negotiation
/// headers, whose tokens are case-insensitive, lowercased as well. A value that is not text
/// is kept byte for byte (escaped), so it only matches itself.
fn value(request: &HeaderMap, name: &str) -> Option<String> {
    let mut lines = request.get_all(name).iter().peekable();
    lines.peek()?;
    let case_insensitive = matches!(name, "accept-encoding" | "accept-charset");
    let mut items: Vec<String> = Vec::new();
    for line in lines {
        let text = match line.to_str() {
            Ok(t) => t.to_string(),
            Err(_) => line.as_bytes().escape_ascii().to_string(),
        };
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
    Some(items.join(","))
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
