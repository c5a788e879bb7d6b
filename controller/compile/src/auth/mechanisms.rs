//! Each mechanism of an AuthPolicy checked and compiled into its snapshot form, with the
//! Secrets it names read: everything the API server's CEL rules check is checked again here
//! (standalone mode has no API server); a Secret that cannot be read is reported and leaves
//! its mechanism without those credentials.

use crate::inputs::Secrets;
use base64::Engine as _;
use portico_crds::auth::{AuthPolicySpec, JwtAlgorithm};
use portico_crds::k8s_openapi::api::core::v1::Secret;
use portico_crds::policy::SecretKeyRef;
use portico_model::ObjectRef;
use portico_model::auth::{self as model, DEFAULT_CONSUMER_HEADER, Sensitive};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Reads one key of a Secret, or says why it cannot.
fn secret_value<'a>(
    secrets: &Secrets<'a>,
    ns: &str,
    r: &SecretKeyRef,
    default_key: &str,
) -> Result<&'a [u8], String> {
    let key = r.key.as_deref().unwrap_or(default_key);
    let secret = secrets.find(ns, &r.name)?;
    entries(secret)
        .remove(key)
        .ok_or_else(|| format!("Secret {ns}/{} has no key {key:?}", r.name))
}

/// A Secret's entries: `data`, with `stringData` over it as the API server merges them
/// (standalone manifests often use `stringData`).
fn entries(secret: &Secret) -> BTreeMap<&str, &[u8]> {
    let mut out: BTreeMap<&str, &[u8]> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.0.as_slice()))
        .collect();
    out.extend(
        secret
            .string_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_bytes())),
    );
    out
}

/// An HTTP header name as RFC 9110 allows it, lower-cased.
fn header_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("{name:?} is not a valid header name"))
    }
}

fn http_url(url: &str, what: &str) -> Result<String, String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.to_string())
    } else {
        Err(format!("{what} {url:?} must be an http:// or https:// URL"))
    }
}

/// A JSON Web Key Set must at least be an object with a `keys` array.
fn check_jwks(text: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    match v.get("keys") {
        Some(serde_json::Value::Array(_)) => Ok(()),
        _ => Err("not a JSON Web Key Set (no \"keys\" array)".to_string()),
    }
}

/// A CIDR in canonical form, or a bare address as a /32 or /128.
fn parse_cidr(s: &str) -> Result<String, String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not a CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = match len {
        Some(l) => l
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
        None => max,
    };
    Ok(format!("{ip}/{len}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The policy in snapshot form. Problems with the spec make it `invalid`; problems reading
/// Secrets go to `unresolved` and leave the mechanism without those credentials.
pub(super) fn compile_policy(
    id: &ObjectRef,
    spec: &AuthPolicySpec,
    secrets: &Secrets<'_>,
    unresolved: &mut Vec<String>,
) -> model::AuthPolicy {
    let mut out = model::AuthPolicy {
        id: id.clone(),
        allow_anonymous: spec.allow_anonymous,
        consumer_header: DEFAULT_CONSUMER_HEADER.to_string(),
        ..Default::default()
    };
    if let Err(e) = compile_into(&mut out, spec, secrets, unresolved) {
        out = refusing(id, e);
    }
    out
}

/// A policy that refuses every request of its targets (the dataplane answers 500), for one
/// that cannot be enforced as written: `reason` says why.
pub(super) fn refusing(id: &ObjectRef, reason: String) -> model::AuthPolicy {
    model::AuthPolicy {
        id: id.clone(),
        invalid: Some(reason),
        consumer_header: DEFAULT_CONSUMER_HEADER.to_string(),
        ..Default::default()
    }
}

fn compile_into(
    out: &mut model::AuthPolicy,
    spec: &AuthPolicySpec,
    secrets: &Secrets<'_>,
    unresolved: &mut Vec<String>,
) -> Result<(), String> {
    let ns = out.id.namespace.clone();
    if spec.jwt.is_none()
        && spec.api_key.is_none()
        && spec.basic.is_none()
        && spec.external.is_none()
        && spec.introspection.is_none()
        && spec.mtls.is_none()
        && spec.authorization.is_none()
    {
        return Err("configure at least one of jwt, apiKey, basic, external, introspection, mtls or authorization".into());
    }
    if let Some(m) = &spec.mtls {
        out.mtls = Some(
            match m
                .consumer_from
                .unwrap_or(portico_crds::auth::CertificateName::CommonName)
            {
                portico_crds::auth::CertificateName::CommonName => {
                    model::CertificateName::CommonName
                }
                portico_crds::auth::CertificateName::DnsName => model::CertificateName::DnsName,
                portico_crds::auth::CertificateName::Uri => model::CertificateName::Uri,
            },
        );
    }
    if spec.target_refs.is_empty() {
        return Err("targetRefs is empty".into());
    }
    if let Some(h) = &spec.consumer_header {
        out.consumer_header = header_name(h).map_err(|e| format!("consumerHeader: {e}"))?;
    }
    if let Some(j) = &spec.jwt {
        out.jwt = Some(compile_jwt(j, &ns, secrets, unresolved)?);
    }
    if let Some(k) = &spec.api_key {
        if k.header.is_some() && k.query.is_some() {
            return Err("apiKey: read the key from a header or a query parameter, not both".into());
        }
        let header = match (&k.header, &k.query) {
            (_, Some(_)) => None,
            (Some(h), None) => Some(header_name(h).map_err(|e| format!("apiKey.header: {e}"))?),
            (None, None) => Some("x-api-key".to_string()),
        };
        let mut keys = Vec::new();
        let mut seen = BTreeSet::new();
        for r in &k.secret_refs {
            let secret = match secrets.find(&ns, &r.name) {
                Ok(s) => s,
                Err(why) => {
                    unresolved.push(format!("{why}: its API keys are not accepted"));
                    continue;
                }
            };
            for (consumer, value) in entries(secret) {
                let key = String::from_utf8_lossy(value);
                let key = key.trim();
                if key.is_empty() {
                    continue;
                }
                let digest =
                    hex(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref());
                if !seen.insert(digest.clone()) {
                    unresolved.push(format!(
                        "Secret {ns}/{}: consumer {consumer:?} has the same key as another consumer; it is not accepted",
                        r.name
                    ));
                    keys.retain(|k: &model::ApiKey| k.sha256 != digest);
                    continue;
                }
                keys.push(model::ApiKey {
                    consumer: consumer.to_string(),
                    sha256: digest,
                });
            }
        }
        keys.sort_by(|a, b| {
            a.consumer
                .cmp(&b.consumer)
                .then_with(|| a.sha256.cmp(&b.sha256))
        });
        out.api_keys = Some(model::ApiKeys {
            header,
            query: k.query.clone(),
            keys,
        });
    }
    if let Some(b) = &spec.basic {
        let realm = b.realm.clone().unwrap_or_else(|| "portico".to_string());
        if realm.contains('"') || realm.contains('\\') {
            return Err("basic.realm may not contain quotes or backslashes".into());
        }
        let mut users = Vec::new();
        match secret_value(secrets, &ns, &b.secret_ref, "htpasswd") {
            Err(e) => unresolved.push(format!("{e}: basic auth accepts nobody")),
            Ok(bytes) => {
                let text = String::from_utf8_lossy(bytes);
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let Some((user, hash)) = line.split_once(':') else {
                        unresolved.push(format!("htpasswd line {}: not user:hash", n + 1));
                        continue;
                    };
                    let bcrypt = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
                        && hash.len() == 60;
                    if !bcrypt {
                        // Never quote the hash.
                        unresolved.push(format!(
                            "htpasswd line {} (user {user:?}): only bcrypt hashes ($2y$, $2b$, $2a$) are accepted",
                            n + 1
                        ));
                        continue;
                    }
                    let cost = hash.get(4..6).and_then(|c| c.parse::<u32>().ok());
                    if cost.is_none_or(|c| c > model::MAX_BCRYPT_COST) {
                        // Every verification costs the gateway 2^cost rounds, for any client.
                        unresolved.push(format!(
                            "htpasswd line {} (user {user:?}): bcrypt cost {} is above {}, the highest accepted",
                            n + 1,
                            cost.map_or_else(|| "?".to_string(), |c| c.to_string()),
                            model::MAX_BCRYPT_COST
                        ));
                        continue;
                    }
                    users.push(model::BasicUser {
                        user: user.to_string(),
                        hash: Sensitive(hash.to_string()),
                    });
                }
            }
        }
        users.sort_by(|a, b| a.user.cmp(&b.user));
        users.dedup_by(|a, b| a.user == b.user);
        out.basic = Some(model::Basic {
            realm,
            cache_seconds: b.cache_seconds.unwrap_or(300).min(3600),
            users,
            forward_credentials: b.forward_credentials,
        });
    }
    if let Some(e) = &spec.external {
        let names =
            |list: &[String], default: &[&str], what: &str| -> Result<Vec<String>, String> {
                if list.is_empty() {
                    return Ok(default.iter().map(|s| s.to_string()).collect());
                }
                list.iter()
                    .map(|h| header_name(h).map_err(|err| format!("external.{what}: {err}")))
                    .collect()
            };
        out.external = Some(model::External {
            url: http_url(&e.url, "external.url")?,
            headers_to_send: names(
                &e.headers_to_send,
                &["authorization", "cookie"],
                "headersToSend",
            )?,
            headers_to_backend: names(&e.headers_to_backend, &[], "headersToBackend")?,
            headers_to_client: names(
                &e.headers_to_client,
                &["www-authenticate", "location", "set-cookie"],
                "headersToClient",
            )?,
            timeout_ms: e.timeout_ms.unwrap_or(1000).clamp(1, 60_000),
            fail_open: e.fail_open,
        });
    }
    if let Some(i) = &spec.introspection {
        let url = http_url(&i.url, "introspection.url")?;
        let (client_id, client_secret) = match secrets.find(&ns, &i.client_secret_ref.name) {
            Err(why) => {
                unresolved.push(format!("{why}: introspection accepts no token"));
                (String::new(), String::new())
            }
            Ok(s) => {
                let e = entries(s);
                let get = |k: &str| {
                    e.get(k)
                        .map(|v| String::from_utf8_lossy(v).trim().to_string())
                };
                match (get("clientId"), get("clientSecret")) {
                    (Some(id), Some(secret)) => (id, secret),
                    _ => {
                        unresolved.push(format!(
                            "Secret {ns}/{} needs keys clientId and clientSecret: introspection accepts no token",
                            i.client_secret_ref.name
                        ));
                        (String::new(), String::new())
                    }
                }
            }
        };
        out.introspection = Some(model::Introspection {
            url,
            client_id,
            client_secret: Sensitive(client_secret),
            cache_seconds: i.cache_seconds.unwrap_or(60).min(3600),
            timeout_ms: i.timeout_ms.unwrap_or(1000).clamp(1, 60_000),
        });
    }
    if let Some(a) = &spec.authorization {
        if a.rules.is_empty() {
            return Err("authorization.rules is empty".into());
        }
        let mut rules = Vec::new();
        for (n, r) in a.rules.iter().enumerate() {
            let at = |e: String| format!("authorization.rules[{n}]: {e}");
            if r.anonymous && !spec.allow_anonymous {
                return Err(at("anonymous needs allowAnonymous on the policy".into()));
            }
            for p in &r.paths {
                if !p.starts_with('/') {
                    return Err(at(format!("path {p:?} must start with /")));
                }
            }
            rules.push(model::AuthzRule {
                claims: r
                    .claims
                    .iter()
                    .map(|c| model::ClaimRequirement {
                        name: c.name.clone(),
                        values: c.values.clone(),
                    })
                    .collect(),
                scopes: r.scopes.clone(),
                consumers: r.consumers.clone(),
                methods: r.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                paths: r
                    .paths
                    .iter()
                    .map(|p| {
                        let t = p.trim_end_matches('/');
                        if t.is_empty() {
                            "/".to_string()
                        } else {
                            t.to_string()
                        }
                    })
                    .collect(),
                client_cidrs: r
                    .client_cidrs
                    .iter()
                    .map(|c| parse_cidr(c).map_err(at))
                    .collect::<Result<_, _>>()?,
                anonymous: r.anonymous,
            });
        }
        out.rules = Some(rules);
    }
    Ok(())
}

fn compile_jwt(
    j: &portico_crds::auth::JwtAuth,
    ns: &str,
    secrets: &Secrets<'_>,
    unresolved: &mut Vec<String>,
) -> Result<model::Jwt, String> {
    if j.issuer.is_empty() {
        return Err("jwt.issuer is empty".into());
    }
    if j.algorithms.is_empty() {
        return Err("jwt.algorithms is empty".into());
    }
    let hs = |a: &JwtAlgorithm| {
        matches!(
            a,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    };
    let all_hs = j.algorithms.iter().all(hs);
    let any_hs = j.algorithms.iter().any(hs);
    let sources = [
        j.jwks_uri.is_some(),
        j.jwks.is_some(),
        j.jwks_secret_ref.is_some(),
        j.hmac_secret_ref.is_some(),
    ];
    if sources.iter().filter(|x| **x).count() != 1 {
        return Err(
            "jwt: set exactly one of jwksUri, jwks, jwksSecretRef and hmacSecretRef".into(),
        );
    }
    if j.hmac_secret_ref.is_some() != all_hs || (any_hs && !all_hs) {
        return Err("jwt: HS256/HS384/HS512 need hmacSecretRef, and hmacSecretRef allows only HS algorithms".into());
    }
    let keys = if let Some(uri) = &j.jwks_uri {
        model::JwtKeys::Remote {
            uri: http_url(uri, "jwt.jwksUri")?,
            refresh_seconds: j.jwks_refresh_seconds.unwrap_or(300).clamp(10, 86_400),
        }
    } else if let Some(inline) = &j.jwks {
        check_jwks(inline).map_err(|e| format!("jwt.jwks: {e}"))?;
        model::JwtKeys::Set(Sensitive(inline.clone()))
    } else if let Some(r) = &j.jwks_secret_ref {
        let text = secret_value(secrets, ns, r, "jwks").and_then(|b| {
            let t = String::from_utf8_lossy(b).to_string();
            check_jwks(&t).map_err(|e| format!("Secret {ns}/{}: {e}", r.name))?;
            Ok(t)
        });
        match text {
            Ok(t) => model::JwtKeys::Set(Sensitive(t)),
            Err(e) => {
                unresolved.push(format!("{e}: no token verifies"));
                model::JwtKeys::Set(Sensitive(r#"{"keys":[]}"#.to_string()))
            }
        }
    } else {
        let r = j
            .hmac_secret_ref
            .as_ref()
            .expect("one key source is set (checked above)");
        match secret_value(secrets, ns, r, "key") {
            Ok(b) if b.len() >= 32 => model::JwtKeys::Hmac(Sensitive(
                base64::engine::general_purpose::STANDARD.encode(b),
            )),
            Ok(_) => {
                unresolved.push(format!(
                    "Secret {ns}/{}: the HMAC key is shorter than 32 bytes: no token verifies",
                    r.name
                ));
                model::JwtKeys::Hmac(Sensitive(String::new()))
            }
            Err(e) => {
                unresolved.push(format!("{e}: no token verifies"));
                model::JwtKeys::Hmac(Sensitive(String::new()))
            }
        }
    };
    let mut sources = Vec::new();
    for (n, s) in j.token_sources.iter().enumerate() {
        let at = |e: &str| format!("jwt.tokenSources[{n}]: {e}");
        let set = [s.header.is_some(), s.cookie.is_some(), s.query.is_some()];
        if set.iter().filter(|x| **x).count() != 1 {
            return Err(at(
                "a token source is exactly one of header, cookie and query",
            ));
        }
        if s.prefix.is_some() && s.header.is_none() {
            return Err(at("prefix applies only to a header"));
        }
        sources.push(if let Some(h) = &s.header {
            model::TokenSource::Header {
                name: header_name(h).map_err(|e| at(&e))?,
                prefix: s.prefix.clone().unwrap_or_default(),
            }
        } else if let Some(c) = &s.cookie {
            model::TokenSource::Cookie(c.clone())
        } else {
            model::TokenSource::Query(s.query.clone().unwrap_or_default())
        });
    }
    if sources.is_empty() {
        sources.push(model::TokenSource::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        });
    }
    let claims_to_headers = j
        .claims_to_headers
        .iter()
        .map(|c| {
            Ok(model::ClaimHeader {
                claim: c.claim.clone(),
                header: header_name(&c.header).map_err(|e| format!("jwt.claimsToHeaders: {e}"))?,
            })
        })
        .collect::<Result<_, String>>()?;
    let mut algorithms: Vec<String> = j
        .algorithms
        .iter()
        .map(|a| {
            serde_json::to_value(a)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    algorithms.sort();
    algorithms.dedup();
    Ok(model::Jwt {
        issuer: j.issuer.clone(),
        audiences: j.audiences.clone(),
        algorithms,
        keys,
        leeway_seconds: j.leeway_seconds.unwrap_or(30).min(300),
        sources,
        claims_to_headers,
        strip_token: j.strip_token,
    })
}
