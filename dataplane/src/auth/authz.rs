//! Authorization rules: any rule allows; every condition of a rule must hold.

use super::jwt::Claims;
use http::Method;
use portico_model::auth as model;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::Arc;

/// Who a request authenticated as.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    pub consumer: Option<Arc<str>>,
    /// `consumer` as a header value, when it was prepared ahead (API keys, cached tokens).
    pub consumer_value: Option<http::HeaderValue>,
    /// `claimsToHeaders` prepared with a cached token.
    pub claim_headers: Option<Arc<[(http::HeaderName, http::HeaderValue)]>>,
    pub claims: Option<Arc<Claims>>,
    /// No credentials (allowed by `allowAnonymous`).
    pub anonymous: bool,
    /// Authenticated by a bearer token (JWT or introspection): denials use RFC 6750's
    /// challenge.
    pub bearer: bool,
}

#[derive(Clone, Debug)]
struct Rule {
    claims: Vec<(Vec<String>, Vec<String>)>,
    scopes: Vec<String>,
    consumers: Vec<String>,
    methods: Vec<Method>,
    paths: Vec<String>,
    cidrs: Vec<(IpAddr, u8)>,
    anonymous: bool,
}

#[derive(Debug)]
pub struct Rules(Vec<Rule>);

fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, l) = s.split_once('/').ok_or_else(|| format!("CIDR {s:?}"))?;
    let ip: IpAddr = a.parse().map_err(|_| format!("CIDR {s:?}"))?;
    let len: u8 = l.parse().map_err(|_| format!("CIDR {s:?}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("CIDR {s:?}: a prefix of at most {max} bits"));
    }
    Ok((ip, len))
}

/// Whether `ip` is in the network. The prefix length is clamped to the family's width, so a
/// length that slipped past validation narrows the match instead of widening it.
fn in_cidr(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = u32::from(len.min(32));
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let len = u32::from(len.min(128));
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => a
            .to_ipv4_mapped()
            .is_some_and(|a| in_cidr(IpAddr::V4(a), (net, len))),
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// Segment-wise: `/admin` covers `/admin` and `/admin/x`, not `/administrator`.
fn under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A claim by dotted path.
fn claim<'c>(claims: &'c Claims, path: &[String]) -> Option<&'c Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for p in rest {
        v = v.get(p)?;
    }
    Some(v)
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The values of a claim as strings: a string, a number, a boolean, or a list of those.
pub fn claim_values(claims: &Claims, path: &[String]) -> Vec<String> {
    match claim(claims, path) {
        Some(Value::Array(items)) => items.iter().filter_map(scalar).collect(),
        Some(v) => scalar(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// OAuth2 scopes: `scope` (space-separated, RFC 8693) or `scp` (a list or a string).
fn scopes(claims: &Claims) -> Vec<&str> {
    let mut out = Vec::new();
    for key in ["scope", "scp"] {
        match claims.get(key) {
            Some(Value::String(s)) => out.extend(s.split_whitespace()),
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

impl Rules {
    pub fn new(rules: &[model::AuthzRule]) -> Result<Self, String> {
        rules
            .iter()
            .map(|r| {
                Ok(Rule {
                    claims: r
                        .claims
                        .iter()
                        .map(|c| {
                            (
                                c.name.split('.').map(str::to_string).collect(),
                                c.values.clone(),
                            )
                        })
                        .collect(),
                    scopes: r.scopes.clone(),
                    consumers: r.consumers.clone(),
                    methods: r
                        .methods
                        .iter()
                        .map(|m| {
                            Method::from_bytes(m.as_bytes())
                                .map_err(|e| format!("method {m:?}: {e}"))
                        })
                        .collect::<Result<_, String>>()?,
                    paths: r.paths.clone(),
                    cidrs: r
                        .client_cidrs
                        .iter()
                        .map(|c| parse_cidr(c))
                        .collect::<Result<_, _>>()?,
                    anonymous: r.anonymous,
                })
            })
            .collect::<Result<_, String>>()
            .map(Rules)
    }

    /// `client`: the client's address, `None` when the proxies in front did not say it
    /// (then no rule with `clientCidrs` allows the request).
    pub fn allows(
        &self,
        who: &Identity,
        method: &Method,
        path: &str,
        client: Option<IpAddr>,
    ) -> bool {
        self.0.iter().any(|r| r.allows(who, method, path, client))
    }
}

impl Rules {
    /// The scopes a rule that would otherwise allow the request asks for, when the token
    /// lacks them: what a 403 names in its `scope` attribute (RFC 6750 §3).
    pub fn missing_scopes(
        &self,
        who: &Identity,
        method: &Method,
        path: &str,
        client: Option<IpAddr>,
    ) -> Option<Vec<String>> {
        self.0.iter().find_map(|r| {
            if r.scopes.is_empty() {
                return None;
            }
            let without = Rule {
                scopes: Vec::new(),
                ..r.clone()
            };
            without
                .allows(who, method, path, client)
                .then(|| r.scopes.clone())
        })
    }
}

impl Rule {
    fn allows(&self, who: &Identity, method: &Method, path: &str, client: Option<IpAddr>) -> bool {
        if who.anonymous && !self.anonymous {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        if !self.paths.is_empty() && !self.paths.iter().any(|p| under(path, p)) {
            return false;
        }
        if !self.cidrs.is_empty()
            && !client.is_some_and(|client| self.cidrs.iter().any(|c| in_cidr(client, *c)))
        {
            return false;
        }
        if !self.consumers.is_empty()
            && !who
                .consumer
                .as_deref()
                .is_some_and(|c| self.consumers.iter().any(|w| w == c))
        {
            return false;
        }
        if self.claims.is_empty() && self.scopes.is_empty() {
            return true;
        }
        let Some(claims) = &who.claims else {
            return false;
        };
        let have = scopes(claims);
        self.scopes.iter().all(|s| have.contains(&s.as_str()))
            && self
                .claims
                .iter()
                .all(|(path, want)| claim_values(claims, path).iter().any(|v| want.contains(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn who(claims: Value, consumer: Option<&str>) -> Identity {
        Identity {
            consumer: consumer.map(Arc::from),
            claims: claims.as_object().cloned().map(Arc::new),
            bearer: true,
            ..Identity::default()
        }
    }

    #[test]
    fn rules_combine_conditions() {
        let rules = Rules::new(&[
            model::AuthzRule {
                claims: vec![model::ClaimRequirement {
                    name: "realm_access.roles".into(),
                    values: vec!["admin".into()],
                }],
                scopes: vec!["write".into()],
                methods: vec!["POST".into()],
                paths: vec!["/admin".into()],
                ..Default::default()
            },
            model::AuthzRule {
                consumers: vec!["ci".into()],
                client_cidrs: vec!["10.0.0.0/8".into()],
                ..Default::default()
            },
            model::AuthzRule {
                anonymous: true,
                methods: vec!["GET".into()],
                paths: vec!["/public".into()],
                ..Default::default()
            },
        ])
        .expect("rules");
        let admin = who(
            json!({"realm_access": {"roles": ["user", "admin"]}, "scope": "read write"}),
            None,
        );
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(rules.allows(&admin, &Method::POST, "/admin/users", Some(ip)));
        assert!(!rules.allows(&admin, &Method::POST, "/administrator", Some(ip)));
        assert!(!rules.allows(&admin, &Method::GET, "/admin", Some(ip)));
        let reader = who(
            json!({"realm_access": {"roles": ["admin"]}, "scp": ["read"]}),
            None,
        );
        assert!(!rules.allows(&reader, &Method::POST, "/admin", Some(ip)));
        let ci = who(json!({}), Some("ci"));
        assert!(rules.allows(&ci, &Method::DELETE, "/x", "10.1.2.3".parse().ok()));
        assert!(!rules.allows(&ci, &Method::DELETE, "/x", Some(ip)));
        let anon = Identity {
            anonymous: true,
            ..Identity::default()
        };
        assert!(rules.allows(&anon, &Method::GET, "/public/a", Some(ip)));
        assert!(!rules.allows(&anon, &Method::POST, "/public/a", Some(ip)));
        assert!(!rules.allows(&anon, &Method::DELETE, "/x", "10.1.2.3".parse().ok()));
        // A client nobody vouched for matches no client range.
        assert!(!rules.allows(&ci, &Method::DELETE, "/x", None));
        assert!(in_cidr(
            "::ffff:10.0.0.1".parse().expect("ip"),
            ("10.0.0.0".parse().expect("ip"), 8)
        ));
        assert!(in_cidr(
            "2001:db8::1".parse().expect("ip"),
            ("2001:db8::".parse().expect("ip"), 32)
        ));
        assert!(in_cidr(
            "1.2.3.4".parse().expect("ip"),
            ("0.0.0.0".parse().expect("ip"), 0)
        ));
    }

    #[test]
    fn prefixes_longer_than_the_address_are_refused_or_narrow() {
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("2001:db8::/129").is_err());
        assert!(parse_cidr("10.0.0.1/32").is_ok());
        // Should one reach the matcher anyway, it matches one address, never everything.
        let net = ("10.0.0.1".parse().expect("ip"), 200);
        assert!(in_cidr("10.0.0.1".parse().expect("ip"), net));
        assert!(!in_cidr("10.9.9.9".parse().expect("ip"), net));
        let net6 = ("2001:db8::1".parse().expect("ip"), 255);
        assert!(!in_cidr("2001:db8::2".parse().expect("ip"), net6));
    }
}
