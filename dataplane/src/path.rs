//! Request path normalisation, done once before routing so that the path a route (and its
//! auth policy) was chosen for is the path the backend receives.
//!
//! - percent-encoded unreserved characters are decoded (`%2e` → `.`, `%41` → `A`), other
//!   escapes are kept with upper-case hex;
//! - an encoded `/` or `\`, any double encoding (`%252f`, `%2561`), an encoded NUL, a raw
//!   `\` and a malformed escape are refused (400): backends disagree on what they mean;
//! - repeated slashes are merged and `.`/`..` segments removed (RFC 3986 §5.2.4; `..` at the
//!   root stays at the root);
//! - matching ignores `;parameters` inside a segment (`/admin;x` is matched as `/admin`), the
//!   way servlet containers read them, while the path is forwarded as normalised. A segment
//!   that is empty or a dot segment once its parameters are gone (`..;`, `.;x`, `;x`) is
//!   refused: a servlet container resolves it (`/public/..;/admin` is its `/admin`) after
//!   the router has matched another path, so no single path would be what the router, the
//!   policies and every backend see.
//!
//! Case is never changed: path matches are case-sensitive, as the Gateway API says.

use std::borrow::Cow;

/// The path to forward and the path to match.
#[derive(Debug, PartialEq, Eq)]
pub struct Normalized<'a> {
    pub forward: Cow<'a, str>,
    /// Differs from `forward` only when a segment has `;parameters`.
    pub matching: Cow<'a, str>,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether the path can be used as it is (the common case: no allocation). One pass: no
/// escape, backslash or parameter, no empty segment before the end, no `.` or `..` segment.
fn is_plain(path: &str) -> bool {
    let b = path.as_bytes();
    // Length of the current segment, and whether it is all dots so far.
    let mut seg_len = 0usize;
    let mut dots = true;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' | b'\\' | b';' => return false,
            b'/' => {
                if i > 0 && (seg_len == 0 || (dots && seg_len <= 2)) {
                    return false;
                }
                seg_len = 0;
                dots = true;
            }
            _ => {
                seg_len += 1;
                dots &= c == b'.';
            }
        }
    }
    !(dots && (1..=2).contains(&seg_len))
}

/// Normalises an origin-form path (starting with `/`).
pub fn normalize(path: &str) -> Result<Normalized<'_>, &'static str> {
    if !path.starts_with('/') {
        return Err("request target must be an absolute path");
    }
    if is_plain(path) {
        return Ok(Normalized {
            forward: Cow::Borrowed(path),
            matching: Cow::Borrowed(path),
        });
    }
    // 1. Escapes.
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err("backslash in path"),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err("malformed percent-encoding in path");
                };
                let byte = hi * 16 + lo;
                match byte {
                    b'/' | b'\\' => return Err("encoded slash or backslash in path"),
                    0 => return Err("encoded NUL in path"),
                    // Kept encoded; whether it encodes an escape is checked on the result.
                    b'%' => decoded.push_str("%25"),
                    c if is_unreserved(c) => decoded.push(char::from(c)),
                    c => {
                        decoded.push('%');
                        decoded.push(char::from(b"0123456789ABCDEF"[usize::from(c >> 4)]));
                        decoded.push(char::from(b"0123456789ABCDEF"[usize::from(c & 15)]));
                    }
                }
                i += 3;
            }
            _ => {
                // Everything else is ASCII (hyper has validated the request target); copy
                // runs of plain bytes at once.
                let start = i;
                while i < b.len() && !matches!(b[i], b'%' | b'\\') {
                    i += 1;
                }
                decoded.push_str(&path[start..i]);
            }
        }
    }
    // A double encoding (`%25` and two hex digits: `%252f`, `%2561`), looked for in what
    // decoding produced (`%25%32%66` decodes to `%252f` too). A backend that decodes twice
    // would see a path the router never saw (`/%2561dmin` is its `/admin`).
    let d = decoded.as_bytes();
    for w in d.windows(5) {
        if w[..3] == *b"%25" && hex(w[3]).is_some() && hex(w[4]).is_some() {
            return Err("double-encoded character in path");
        }
    }
    // 2. Dot segments and repeated slashes.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut forward = String::with_capacity(decoded.len());
    for s in &out {
        forward.push('/');
        forward.push_str(s);
    }
    if forward.is_empty() || trailing {
        forward.push('/');
    }
    // 3. The path to match: without `;parameters`. It must need no normalising of its own.
    let matching = if forward.contains(';') {
        let mut m = String::with_capacity(forward.len());
        for (n, s) in forward.split('/').enumerate() {
            if n > 0 {
                m.push('/');
            }
            let Some((head, _)) = s.split_once(';') else {
                m.push_str(s);
                continue;
            };
            if matches!(head, "" | "." | "..") {
                return Err("path parameters on an empty or dot segment");
            }
            m.push_str(head);
        }
        Cow::Owned(m)
    } else {
        Cow::Owned(forward.clone())
    };
    Ok(Normalized {
        forward: Cow::Owned(forward),
        matching,
    })
}

#[cfg(test)]
mod tests {
    use super::normalize;

    fn fwd(p: &str) -> Result<String, &'static str> {
        normalize(p).map(|n| n.forward.into_owned())
    }

    fn matching(p: &str) -> String {
        normalize(p)
            .map(|n| n.matching.into_owned())
            .unwrap_or_default()
    }

    #[test]
    fn plain_paths_are_borrowed() {
        for p in [
            "/",
            "/admin",
            "/a/b/c",
            "/a/b/",
            "/a.b/c-d_e~f",
            "/.well-known/x",
            "/a/..b/...",
            "/v1.2/",
        ] {
            let n = normalize(p).expect("valid");
            assert!(matches!(n.forward, std::borrow::Cow::Borrowed(_)), "{p}");
            assert_eq!(n.forward, p);
        }
    }

    #[test]
    fn the_attack_matrix() {
        assert_eq!(fwd("/%2e%2e/admin"), Ok("/admin".into()));
        assert_eq!(fwd("/public/../admin"), Ok("/admin".into()));
        assert_eq!(fwd("//admin"), Ok("/admin".into()));
        assert_eq!(fwd("/public//..//admin"), Ok("/admin".into()));
        assert_eq!(fwd("/./admin/./"), Ok("/admin/".into()));
        assert_eq!(fwd("/%61dmin"), Ok("/admin".into()));
        assert_eq!(fwd("/ADMIN"), Ok("/ADMIN".into()), "case is kept");
        assert!(fwd("/admin/..%2fadmin").is_err());
        assert!(fwd("/public/..%2Fadmin").is_err());
        assert!(fwd("/public/..%5cadmin").is_err());
        assert!(fwd("/public%252f..%252fadmin").is_err());
        assert!(fwd("/%252e%252e/admin").is_err());
        // Found by fuzzing: unreserved escapes after a kept `%25` make a double encoding.
        assert!(fwd("/a%25%32%46b").is_err());
        assert!(fwd("/a%25%32%65%32%65/b").is_err());
        assert!(fwd("/a%25%34%31").is_err());
        assert!(fwd("/%2561dmin").is_err(), "a letter double-encoded");
        assert_eq!(fwd("/100%25"), Ok("/100%25".into()));
        assert_eq!(fwd("/100%25x"), Ok("/100%25x".into()));
        assert!(fwd("/a%00b").is_err());
        assert!(fwd("/a%zz").is_err());
        assert!(fwd("/a%2").is_err());
        assert!(fwd("/a\\b").is_err());
        assert_eq!(fwd("/../../.."), Ok("/".into()));
        assert_eq!(fwd("/a/b/.."), Ok("/a/".into()));
        assert_eq!(fwd("/100%25"), Ok("/100%25".into()));
        for p in ["/a/.", "/a/..", "/./a", "/../a", "//", "/a//b", "/a/./b"] {
            assert!(!super::is_plain(p), "{p} needs normalising");
        }
        assert_eq!(fwd("/caf%c3%a9"), Ok("/caf%C3%A9".into()));
    }

    #[test]
    fn parameters_are_ignored_for_matching_only() {
        let n = normalize("/admin;x/users;y=1").expect("valid");
        assert_eq!(n.forward, "/admin;x/users;y=1");
        assert_eq!(n.matching, "/admin/users");
        assert_eq!(matching("/admin;jsessionid=1"), "/admin");
    }

    #[test]
    fn parameters_cannot_hide_dot_or_empty_segments() {
        for p in [
            "/public/..;/admin",
            "/public/..;x=1/admin",
            "/.;/admin",
            "/.;x/admin",
            "/;x/exact",
            "/a/;/b",
            "/public/%2e%2e;/admin",
            "/public/%2E.;jsessionid=1/admin",
            "/admin/..;",
            "/;",
        ] {
            assert!(normalize(p).is_err(), "{p} must be refused");
        }
        // Parameters on an ordinary segment are fine, and the matched path is normalised.
        for (p, m) in [
            ("/a;x/b", "/a/b"),
            ("/a..;x/b", "/a../b"),
            ("/...;x", "/..."),
            ("/a/b;", "/a/b"),
        ] {
            assert_eq!(matching(p), m, "{p}");
        }
    }
}
