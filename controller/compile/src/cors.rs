//! The HTTPRoute CORS filter, checked and put in the model's form: origins lower-case with
//! the scheme's default port left out, header names lower-case, methods as written (they
//! are case-sensitive). A leaf.

use crate::values::http_token;
use portico_crds::gateway_api::experimental::httproutes::HttpRouteRulesFiltersCors;
use portico_model::Cors;

/// `c` in the model, or what to fix.
pub(crate) fn translate(c: &HttpRouteRulesFiltersCors) -> Result<Cors, String> {
    let mut allow_origins = Vec::new();
    for o in c.allow_origins.iter().flatten() {
        allow_origins.push(origin(o)?);
    }
    let names = |field: &str, items: &Option<Vec<String>>, lower: bool| {
        items
            .iter()
            .flatten()
            .map(|i| {
                if i == "*" || http_token(i) {
                    Ok(if lower {
                        i.to_ascii_lowercase()
                    } else {
                        i.clone()
                    })
                } else {
                    Err(format!("cors.{field}: {i:?} is not a name or *"))
                }
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let max_age_seconds = match c.max_age {
        None => Cors::DEFAULT_MAX_AGE_SECONDS,
        Some(n) => u32::try_from(n).map_err(|_| format!("cors.maxAge is {n}; at least 0"))?,
    };
    Ok(Cors {
        allow_origins,
        allow_methods: names("allowMethods", &c.allow_methods, false)?,
        allow_headers: names("allowHeaders", &c.allow_headers, true)?,
        expose_headers: names("exposeHeaders", &c.expose_headers, true)?,
        allow_credentials: c.allow_credentials == Some(true),
        max_age_seconds,
    })
}

/// `*`, or `scheme://host[:port]` with an http(s) scheme, a host that is a name, an
/// address, `*` or `*.suffix`, and a port in range; lower-case, the default port left out.
fn origin(o: &str) -> Result<String, String> {
    if o == "*" {
        return Ok(o.into());
    }
    let bad = |why: &str| format!("cors.allowOrigins: {o:?} {why}");
    let (scheme, rest) = o
        .split_once("://")
        .ok_or_else(|| bad("is not scheme://host[:port] or *"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(bad("must start with http:// or https://")),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("has a port that is not 1-65535"))?;
            (h, port)
        }
        _ => (rest, default),
    };
    let host = host.to_ascii_lowercase();
    let name = host.strip_prefix("*.").unwrap_or(&host);
    let valid = host == "*"
        || (!name.is_empty()
            && !name.contains('*')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b)));
    if !valid {
        return Err(bad(
            "has a host that is not a name, an address, * or *.suffix",
        ));
    }
    Ok(if port == default {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_and_checked() {
        assert_eq!(
            origin("HTTPS://WWW.Foo.com:443").as_deref(),
            Ok("https://www.foo.com")
        );
        assert_eq!(
            origin("https://*.bar.com").as_deref(),
            Ok("https://*.bar.com")
        );
        assert_eq!(
            origin("http://local:8080").as_deref(),
            Ok("http://local:8080")
        );
        assert_eq!(
            origin("http://[::1]:8080").as_deref(),
            Ok("http://[::1]:8080")
        );
        assert_eq!(origin("https://*").as_deref(), Ok("https://*"));
        for bad in [
            "ftp://x.com",
            "x.com",
            "https://a.*.com",
            "https://x.com:0",
            "https://x.com:99999",
            "https://",
            "https://x.com/path",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
    }
}
