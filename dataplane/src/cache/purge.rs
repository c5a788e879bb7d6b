//! What a purge removes, from a CacheInvalidation or the admin port: a leaf both tiers and
//! the request path's step share.

use portico_model::cache::{PurgeKind, canonical_url};

/// What a purge removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purge {
    /// One URL (`https://host:port/path?query`), every variant and key part.
    Url(String),
    /// Every URL that starts with this.
    Prefix(String),
    /// Every response that carried this tag (`Cache-Tag`, `Surrogate-Key`).
    Tag(String),
}

impl Purge {
    /// A purge from its kind (`url`, `prefix`, `tag`) and value, or why it is not one. URLs
    /// and prefixes are written the way the key holds them ([`canonical_url`]).
    pub fn parse(kind: &str, value: &str) -> Result<Self, String> {
        if value.is_empty() || value.len() > 4096 || value.contains(char::is_control) {
            return Err(format!(
                "a {kind} is 1 to 4096 bytes, without control characters"
            ));
        }
        match kind {
            "url" => Ok(Purge::Url(canonical_url(value)?)),
            "prefix" => Ok(Purge::Prefix(canonical_url(value)?)),
            "tag" => Ok(Purge::Tag(value.to_string())),
            other => Err(format!("unknown purge kind {other:?}: url, prefix or tag")),
        }
    }

    /// A CacheInvalidation's purge (compile wrote its URL canonically).
    pub fn of(p: &portico_model::cache::Purge) -> Self {
        match p.kind {
            PurgeKind::Url => Purge::Url(p.value.clone()),
            PurgeKind::Prefix => Purge::Prefix(p.value.clone()),
            PurgeKind::Tag => Purge::Tag(p.value.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_urls_are_written_as_keys_hold_them() {
        for (kind, value, expected) in [
            (
                "url",
                "HTTP://Api.Test/a?b=1",
                Purge::Url("http://api.test:80/a?b=1".into()),
            ),
            (
                "url",
                "https://api.test:8443/x",
                Purge::Url("https://api.test:8443/x".into()),
            ),
            (
                "prefix",
                "https://api.test/img/",
                Purge::Prefix("https://api.test:443/img/".into()),
            ),
            (
                "prefix",
                "https://[::1]/",
                Purge::Prefix("https://[::1]:443/".into()),
            ),
            ("tag", "product-42", Purge::Tag("product-42".into())),
        ] {
            assert_eq!(Purge::parse(kind, value), Ok(expected), "{kind} {value}");
        }
        for (kind, value) in [
            ("url", "/relative"),
            ("url", "ftp://x/"),
            ("url", "http://:80/"),
            ("url", "http://h:port/"),
            ("tag", ""),
            ("ban", "x"),
        ] {
            assert!(Purge::parse(kind, value).is_err(), "{kind} {value}");
        }
    }
}
