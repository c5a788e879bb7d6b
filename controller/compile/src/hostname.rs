//! Hostnames: validation, wildcard matching and the listener × route intersection.

/// Checks a Gateway API hostname: a lower-case RFC 1123 DNS name, optionally with a single
/// leading `*.` label, and not an IP address.
pub(crate) fn validate(hostname: &str) -> Result<(), String> {
    let name = hostname.strip_prefix("*.").unwrap_or(hostname);
    if name.is_empty() || hostname.len() > 253 {
        return Err(format!("hostname {hostname:?} must be 1 to 253 characters"));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "hostname {hostname:?} is an IP address; use a DNS name"
        ));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "hostname {hostname:?} is not a lower-case DNS name (a wildcard is only allowed as the whole first label, `*.`)"
            ));
        }
    }
    Ok(())
}

/// Whether `pattern` (exact or `*.suffix`) covers `host` (itself exact or a wildcard). A
/// wildcard matches one or more labels, never the bare suffix.
pub(crate) fn covers(pattern: &str, host: &str) -> bool {
    if pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => false,
    }
}

/// The hostnames a route serves on a listener.
///
/// `None`: no overlap, so the route cannot attach to this listener. `Some(empty)`: every host.
pub(crate) fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    match (listener, route.is_empty()) {
        (None, _) => Some(route.to_vec()),
        (Some(l), true) => Some(vec![l.to_string()]),
        (Some(l), false) => {
            let mut out: Vec<String> = Vec::new();
            for h in route {
                let narrowed = if covers(l, h) {
                    h.as_str()
                } else if covers(h, l) {
                    l
                } else {
                    continue;
                };
                if !out.iter().any(|o| o == narrowed) {
                    out.push(narrowed.to_string());
                }
            }
            (!out.is_empty()).then_some(out)
        }
    }
}

/// Whether two routes' effective hostnames on one listener share a host (empty: every host).
pub(crate) fn overlap(a: &[String], b: &[String]) -> bool {
    a.is_empty()
        || b.is_empty()
        || a.iter()
            .any(|x| b.iter().any(|y| covers(x, y) || covers(y, x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlap_of_effective_hostnames() {
        assert!(overlap(&v(&[]), &v(&["a.example.com"])));
        assert!(overlap(&v(&["*.example.com"]), &v(&["a.example.com"])));
        assert!(overlap(&v(&["a.example.com"]), &v(&["*.example.com"])));
        assert!(!overlap(&v(&["a.example.com"]), &v(&["b.example.com"])));
        assert!(!overlap(&v(&["*.example.com"]), &v(&["example.com"])));
    }

    #[test]
    fn validation_accepts_dns_names_and_one_leading_wildcard() {
        assert!(validate("example.com").is_ok());
        assert!(validate("*.example.com").is_ok());
        assert!(validate("a-b.c0").is_ok());
        for bad in [
            "",
            "*",
            "Example.com",
            "a.*.com",
            "*.*.com",
            "-a.com",
            "a..com",
            "1.2.3.4",
            "a_b.com",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn wildcard_covers_one_or_more_labels_but_not_the_suffix() {
        assert!(covers("*.example.com", "foo.example.com"));
        assert!(covers("*.example.com", "foo.bar.example.com"));
        assert!(covers("*.example.com", "*.bar.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("foo.example.com", "*.example.com"));
        assert!(!covers("*.example.com", "fooexample.com"));
    }

    #[test]
    fn intersection_table() {
        // (listener, route hostnames, expected)
        type Case<'a> = (Option<&'a str>, &'a [&'a str], Option<&'a [&'a str]>);
        let cases: &[Case<'_>] = &[
            (None, &[], Some(&[])),
            (None, &["a.com"], Some(&["a.com"])),
            (Some("a.com"), &[], Some(&["a.com"])),
            (Some("a.com"), &["a.com", "b.com"], Some(&["a.com"])),
            (Some("a.com"), &["b.com"], None),
            (
                Some("*.example.com"),
                &["foo.example.com"],
                Some(&["foo.example.com"]),
            ),
            (
                Some("foo.example.com"),
                &["*.example.com"],
                Some(&["foo.example.com"]),
            ),
            (
                Some("*.example.com"),
                &["*.example.com"],
                Some(&["*.example.com"]),
            ),
            (
                Some("*.example.com"),
                &["*.foo.example.com"],
                Some(&["*.foo.example.com"]),
            ),
            (
                Some("*.foo.example.com"),
                &["*.example.com"],
                Some(&["*.foo.example.com"]),
            ),
            (Some("*.example.com"), &["example.com"], None),
            (
                Some("*.example.com"),
                &["*.example.net", "x.example.com"],
                Some(&["x.example.com"]),
            ),
        ];
        for (listener, route, want) in cases {
            let got = intersect(*listener, &v(route));
            assert_eq!(got, want.map(v), "listener {listener:?} route {route:?}");
        }
    }
}
