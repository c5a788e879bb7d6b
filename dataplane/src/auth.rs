//! Authentication and authorization of requests, as an AuthPolicy says.
//!
//! ```text
//!  request ─▶ AuthEngine::check
//!              ├─ strip client-sent identity headers (consumer, claim headers)
//!              ├─ client certificate (mtls, verified by the listener) ─┐
//!              ├─ API key ─┤
//!              ├─ Basic ───┤ any one that accepts the credentials it finds authenticates;
//!              ├─ JWT ─────┤ credentials present but refused → 401; none → 401, or
//!              ├─ introspection   anonymous when the policy allows it
//!              ├─ external ┘
//!              ├─ rules (deny by default once present): 401 anonymous / 403 authenticated
//!              └─ identity headers for the backend; token / API key stripped
//! ```
//!
//! One engine per policy per snapshot; what must survive a snapshot swap (JWKS caches, verified
//! Basic credentials, introspection answers, the HTTP client) lives in [`AuthShared`].

pub mod authz;
pub mod cache;
pub mod credentials;
mod extract;
pub mod jwks;
pub mod jwt;
mod refusal;
pub mod remote;

use extract::token_from;
pub use refusal::Refusal;

use crate::errors::ProxyError;
use crate::metrics::{AuthDecision, AuthMetrics, Metrics};
use crate::request::{Authenticated, RequestCtx};
use authz::Identity;
use cache::{Digest, TtlCache};
use http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use jwks::JwksCache;
use jwt::{Alg, Claims, KeySet};
use parking_lot::Mutex;
use portico_model::auth::{self as model, JwtKeys, TokenSource};
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The client for JWKS, external auth and introspection calls (http and https).
use crate::upstream::HttpClient;

/// Verified tokens are remembered at most this long (and never past their `exp`), so that a
/// key removed from a JWKS stops working soon after.
const MAX_TOKEN_CACHE: Duration = Duration::from_secs(300);
const CACHE_ENTRIES: usize = 100_000;

/// What auth keeps across snapshots.
#[derive(Debug)]
pub struct AuthShared {
    client: HttpClient,
    jwks: Mutex<HashMap<String, Weak<JwksCache>>>,
    basic: Arc<TtlCache<Digest, ()>>,
    introspection: Arc<TtlCache<Digest, remote::Introspected>>,
}

impl Default for AuthShared {
    fn default() -> Self {
        Self {
            client: HttpClient::new(),
            jwks: Mutex::new(HashMap::new()),
            basic: Arc::new(TtlCache::new(CACHE_ENTRIES)),
            introspection: Arc::new(TtlCache::new(CACHE_ENTRIES)),
        }
    }
}

impl AuthShared {
    fn jwks(&self, uri: &str, refresh: Duration) -> Arc<JwksCache> {
        let mut map = self.jwks.lock();
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(c) = map.get(uri).and_then(Weak::upgrade) {
            return c;
        }
        let c = JwksCache::new(uri, refresh, self.client.clone());
        map.insert(uri.to_string(), Arc::downgrade(&c));
        c
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn header(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header {name:?}: {e}"))
}

#[derive(Debug)]
enum Keys {
    Static(Arc<KeySet>),
    Remote(Arc<JwksCache>),
}

/// A verified token with what it puts on the request, prepared once per token.
#[derive(Debug)]
struct Verified {
    claims: Arc<Claims>,
    consumer: Option<Arc<str>>,
    consumer_value: Option<HeaderValue>,
    claim_headers: Arc<[(HeaderName, HeaderValue)]>,
}

#[derive(Debug)]
struct JwtAuth {
    rules: jwt::Rules,
    keys: Keys,
    sources: Vec<TokenSource>,
    claims_to_headers: Vec<(Vec<String>, HeaderName)>,
    strip: bool,
    /// Keyed by the token itself (compared whole on a hit).
    verified: TtlCache<Box<str>, Arc<Verified>>,
}

impl JwtAuth {
    fn new(m: &model::Jwt, shared: &AuthShared) -> Result<Self, String> {
        let algorithms = m
            .algorithms
            .iter()
            .map(|a| Alg::parse(a).ok_or_else(|| format!("unknown algorithm {a:?}")))
            .collect::<Result<_, _>>()?;
        let keys = match &m.keys {
            JwtKeys::Remote {
                uri,
                refresh_seconds,
            } => Keys::Remote(shared.jwks(uri, Duration::from_secs(u64::from(*refresh_seconds)))),
            JwtKeys::Set(text) => Keys::Static(Arc::new(
                KeySet::from_jwks(text.0.as_bytes())
                    .map_err(|e| format!("jwks: {e}"))?
                    .0,
            )),
            JwtKeys::Hmac(b64) => {
                use base64::Engine as _;
                let key = base64::engine::general_purpose::STANDARD
                    .decode(&b64.0)
                    .map_err(|_| "hmac key is not base64".to_string())?;
                Keys::Static(Arc::new(KeySet::hmac(key)))
            }
        };
        Ok(Self {
            rules: jwt::Rules {
                algorithms,
                issuer: m.issuer.clone(),
                audiences: m.audiences.clone(),
                leeway: u64::from(m.leeway_seconds),
            },
            keys,
            sources: m.sources.clone(),
            claims_to_headers: m
                .claims_to_headers
                .iter()
                .map(|c| {
                    Ok((
                        c.claim.split('.').map(str::to_string).collect(),
                        header(&c.header)?,
                    ))
                })
                .collect::<Result<_, String>>()?,
            strip: m.strip_token,
            verified: TtlCache::new(CACHE_ENTRIES / 10),
        })
    }

    /// The token and where it came from.
    fn token<'r>(
        &self,
        headers: &'r HeaderMap,
        query: Option<&'r str>,
    ) -> Option<(Cow<'r, str>, &TokenSource)> {
        self.sources
            .iter()
            .find_map(|s| Some((token_from(s, headers, query)?, s)))
    }

    async fn verify(&self, token: &str) -> Result<Arc<Verified>, jwt::JwtError> {
        if let Some(v) = self.verified.get(token) {
            return Ok(v);
        }
        let now = unix_now();
        let parsed = jwt::parse(token, &self.rules)?;
        let keys = match &self.keys {
            Keys::Static(k) => k.clone(),
            Keys::Remote(c) => c.keys_for(parsed.kid.as_deref()).await,
        };
        let claims = Arc::new(parsed.verify(&keys, &self.rules, now)?);
        let left = Duration::from_secs(jwt::expiry(&claims).saturating_sub(now));
        let consumer: Option<Arc<str>> = claims.get("sub").and_then(|s| s.as_str()).map(Arc::from);
        let verified = Arc::new(Verified {
            consumer_value: consumer
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok()),
            consumer,
            claim_headers: self
                .claims_to_headers
                .iter()
                .filter_map(|(path, name)| {
                    let values = authz::claim_values(&claims, path);
                    if values.is_empty() {
                        return None;
                    }
                    Some((name.clone(), HeaderValue::from_str(&values.join(",")).ok()?))
                })
                .collect(),
            claims,
        });
        self.verified
            .insert(token.into(), verified.clone(), left.min(MAX_TOKEN_CACHE));
        Ok(verified)
    }
}

/// What a decision reads of the client besides the headers.
struct ClientFacts<'a> {
    /// The client as far as known (the peer when the trusted proxies did not say): what
    /// budgets and the external service are told.
    client: IpAddr,
    /// The client as the trusted proxies said it, `None` when they did not (a chain shorter
    /// than `--trusted-hops`, or not addresses): `clientCidrs` fail closed without it.
    trusted_client: Option<IpAddr>,
    scheme: &'a str,
    /// The certificate the client presented in the TLS handshake.
    client_cert: Option<&'a crate::request::ClientCert>,
}

/// One AuthPolicy, ready to enforce.
#[derive(Debug)]
pub struct AuthEngine {
    pub id: String,
    metrics: AuthMetrics,
    invalid: Option<String>,
    anonymous: bool,
    consumer_header: HeaderName,
    jwt: Option<JwtAuth>,
    api_keys: Option<credentials::ApiKeys>,
    basic: Option<credentials::Basic>,
    external: Option<remote::External>,
    introspection: Option<remote::Introspection>,
    /// Client certificates: the name of one that is the consumer.
    mtls: Option<model::CertificateName>,
    rules: Option<authz::Rules>,
    challenges: Vec<HeaderValue>,
    /// Where introspection reads its token, built once rather than per request.
    bearer: TokenSource,
    /// Where a query-parameter API key is stripped from, likewise.
    api_key_query: Option<TokenSource>,
}

/// `Bearer ... error="insufficient_scope", scope="read write"`: the scopes the request needs
/// (RFC 6750 §3), those that are valid scope tokens (RFC 6749 §3.3) only.
fn insufficient_scope(scopes: &[String]) -> Option<HeaderValue> {
    let valid: Vec<&str> = scopes
        .iter()
        .map(String::as_str)
        .filter(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        })
        .collect();
    if valid.is_empty() {
        return None;
    }
    HeaderValue::from_str(&format!(
        "Bearer realm=\"portico\", error=\"insufficient_scope\", scope=\"{}\"",
        valid.join(" ")
    ))
    .ok()
}

fn bearer_source() -> TokenSource {
    TokenSource::Header {
        name: "authorization".into(),
        prefix: "Bearer ".into(),
    }
}

const BEARER: HeaderValue = HeaderValue::from_static("Bearer realm=\"portico\"");
const BEARER_INVALID: HeaderValue =
    HeaderValue::from_static("Bearer realm=\"portico\", error=\"invalid_token\"");
const BEARER_SCOPE: HeaderValue =
    HeaderValue::from_static("Bearer realm=\"portico\", error=\"insufficient_scope\"");
const API_KEY: HeaderValue = HeaderValue::from_static("ApiKey realm=\"portico\"");

impl AuthEngine {
    /// Builds the engine. A policy that cannot be built refuses every request (500) rather
    /// than let it through.
    pub fn new(m: &model::AuthPolicy, shared: &AuthShared, metrics: &Metrics) -> Self {
        let id = m.id.to_string();
        let built = Self::build(m, shared, metrics.auth(&id));
        match built {
            Ok(engine) => engine,
            Err(e) => {
                tracing::warn!(policy = %id, error = %e, "auth policy cannot be enforced; its routes answer 500");
                Self {
                    metrics: metrics.auth(&id),
                    id,
                    invalid: Some(e),
                    anonymous: false,
                    consumer_header: HeaderName::from_static(model::DEFAULT_CONSUMER_HEADER),
                    jwt: None,
                    api_keys: None,
                    basic: None,
                    external: None,
                    introspection: None,
                    mtls: None,
                    rules: None,
                    challenges: Vec::new(),
                    bearer: bearer_source(),
                    api_key_query: None,
                }
            }
        }
    }

    fn build(
        m: &model::AuthPolicy,
        shared: &AuthShared,
        metrics: AuthMetrics,
    ) -> Result<Self, String> {
        if let Some(reason) = &m.invalid {
            return Err(reason.clone());
        }
        let jwt = m
            .jwt
            .as_ref()
            .map(|j| JwtAuth::new(j, shared))
            .transpose()?;
        let basic = m
            .basic
            .as_ref()
            .map(|b| credentials::Basic::new(b, shared.basic.clone()))
            .transpose()?;
        let introspection = m.introspection.as_ref().map(|i| {
            remote::Introspection::new(i, shared.client.clone(), shared.introspection.clone())
        });
        let mut challenges = Vec::new();
        if jwt.is_some() || introspection.is_some() {
            challenges.push(BEARER);
        }
        if let Some(b) = &basic {
            challenges.push(b.challenge.clone());
        }
        if m.api_keys.is_some() {
            challenges.push(API_KEY);
        }
        Ok(Self {
            id: m.id.to_string(),
            metrics,
            invalid: None,
            anonymous: m.allow_anonymous,
            consumer_header: header(&m.consumer_header)?,
            jwt,
            api_keys: m
                .api_keys
                .as_ref()
                .map(credentials::ApiKeys::new)
                .transpose()?,
            basic,
            external: m
                .external
                .as_ref()
                .map(|e| remote::External::new(e, shared.client.clone()))
                .transpose()?,
            introspection,
            mtls: m.mtls,
            rules: m.rules.as_deref().map(authz::Rules::new).transpose()?,
            challenges,
            bearer: bearer_source(),
            api_key_query: m
                .api_keys
                .as_ref()
                .and_then(|k| k.query.clone())
                .map(TokenSource::Query),
        })
    }

    fn unauthenticated(&self, reason: &str, invalid_token: bool) -> Refusal {
        let challenges = self
            .challenges
            .iter()
            .map(|c| {
                if invalid_token && *c == BEARER {
                    BEARER_INVALID
                } else {
                    c.clone()
                }
            })
            .collect();
        Refusal::Unauthenticated {
            reason: reason.to_string(),
            challenges,
        }
    }

    /// Decides about `req` and, when it may pass, prepares it for the backend. Returns the
    /// consumer it authenticated as. `matching` is the path routing matched when it differs
    /// from the request's (normalised) path.
    pub async fn check<B>(
        &self,
        req: &mut Request<B>,
        cx: &RequestCtx,
    ) -> Result<Authenticated, ProxyError> {
        // The client as the trusted proxies in front say (`--trusted-hops`), as rate limits
        // see it: clientCidrs and the password-failure budget are about the client, not the
        // load balancer.
        let trusted_client =
            crate::sanitize::trusted_client(req.headers(), cx.peer(), cx.trusted_hops);
        let facts = ClientFacts {
            client: trusted_client.unwrap_or(cx.peer()),
            trusted_client,
            scheme: cx.down.scheme,
            client_cert: cx.down.client_cert.as_deref(),
        };
        let result = self.decide(req, cx.matching.as_deref(), &facts).await;
        self.metrics.record(match &result {
            Ok((_, true)) => AuthDecision::Anonymous,
            Ok((_, false)) => AuthDecision::Allowed,
            Err(r) => r.decision(),
        });
        match result {
            Ok((who, _)) => Ok(who),
            Err(r) => Err(r.into_error(&self.id)),
        }
    }

    /// The decision, and whether the request passed as anonymous.
    async fn decide<B>(
        &self,
        req: &mut Request<B>,
        matching: Option<&str>,
        facts: &ClientFacts<'_>,
    ) -> Result<(Authenticated, bool), Refusal> {
        if let Some(reason) = &self.invalid {
            tracing::debug!(policy = %self.id, reason = %reason, "refusing: the auth policy is invalid");
            return Err(Refusal::Invalid);
        }
        // Identity headers come from us only.
        let headers = req.headers_mut();
        // (The proxy has removed the default consumer header from every request already.)
        if self.consumer_header != model::DEFAULT_CONSUMER_HEADER {
            headers.remove(&self.consumer_header);
        }
        if let Some(j) = &self.jwt {
            for (_, h) in &j.claims_to_headers {
                headers.remove(h);
            }
        }
        let mut presented = false;
        let mut failure: Option<Refusal> = None;
        let mut who: Option<Identity> = None;
        let mut backend_headers = HeaderMap::new();
        let query = req.uri().query();
        let headers = req.headers();

        // A client certificate is the first credential: the connection carries it, and the
        // listener verified it (or, falling back insecurely, says it did not).
        if let Some(name) = self.mtls
            && let Some(cert) = facts.client_cert
        {
            presented = true;
            let consumer = match name {
                model::CertificateName::CommonName => cert.common_name.as_deref(),
                model::CertificateName::DnsName => cert.dns_names.first().map(String::as_str),
                model::CertificateName::Uri => cert.uris.first().map(String::as_str),
            };
            match (cert.verified, consumer) {
                (true, Some(c)) => {
                    who = Some(Identity {
                        consumer: Some(Arc::from(c)),
                        consumer_value: HeaderValue::from_str(c).ok(),
                        ..Identity::default()
                    });
                }
                (true, None) => {
                    failure = Some(self.unauthenticated("client_certificate_without_name", false));
                }
                (false, _) => {
                    failure = Some(self.unauthenticated("invalid_client_certificate", false));
                }
            }
        }
        if who.is_none()
            && let Some(k) = &self.api_keys
            && let Some(key) = k.credential(headers, query)
        {
            presented = true;
            match k.verify(&key) {
                Some((consumer, consumer_value)) => {
                    who = Some(Identity {
                        consumer: Some(consumer),
                        consumer_value,
                        ..Identity::default()
                    })
                }
                None => failure = Some(self.unauthenticated("invalid_api_key", false)),
            }
        }
        let mut basic_passed = false;
        if who.is_none()
            && let Some(b) = &self.basic
            && let Some(credential) = credentials::Basic::credential(headers)
        {
            presented = true;
            let outcome = match credential {
                Ok((user, password)) => match b.verify(&user, &password, facts.client).await {
                    credentials::Verdict::Valid => {
                        basic_passed = true;
                        who = Some(Identity {
                            consumer: Some(Arc::from(user.as_str())),
                            ..Identity::default()
                        });
                        None
                    }
                    credentials::Verdict::Invalid => None,
                    credentials::Verdict::Busy => Some(Refusal::Busy),
                    credentials::Verdict::Throttled => Some(Refusal::Throttled),
                },
                // Undecodable, not UTF-8 or without a `:`: wrong credentials.
                Err(()) => None,
            };
            if let Some(e) = outcome {
                return Err(e);
            }
            if who.is_none() {
                failure = Some(self.unauthenticated("invalid_password", false));
            }
        }
        let mut token_source: Option<TokenSource> = None;
        if who.is_none()
            && let Some(j) = &self.jwt
            && let Some((token, source)) = j.token(headers, query)
        {
            presented = true;
            match j.verify(&token).await {
                Ok(v) => {
                    token_source = Some(source.clone());
                    who = Some(Identity {
                        consumer: v.consumer.clone(),
                        consumer_value: v.consumer_value.clone(),
                        claim_headers: Some(v.claim_headers.clone()),
                        claims: Some(v.claims.clone()),
                        anonymous: false,
                        bearer: true,
                    });
                }
                Err(e) => {
                    tracing::debug!(policy = %self.id, error = %e, "token refused");
                    failure = Some(self.unauthenticated(e.code(), true));
                }
            }
        }
        if who.is_none()
            && let Some(i) = &self.introspection
            && let Some(token) = token_from(&self.bearer, headers, query)
        {
            presented = true;
            let answer = if token.is_empty() {
                Ok(remote::Introspected::Inactive)
            } else {
                i.introspect(&token).await
            };
            match answer {
                Ok(remote::Introspected::Active(claims)) => {
                    let consumer = ["sub", "username", "client_id"]
                        .iter()
                        .find_map(|k| claims.get(*k).and_then(|v| v.as_str()))
                        .map(Arc::from);
                    who = Some(Identity {
                        consumer,
                        claims: Some(claims),
                        bearer: true,
                        ..Identity::default()
                    });
                }
                Ok(remote::Introspected::Inactive) => {
                    failure = Some(self.unauthenticated("inactive_token", true));
                }
                Err(e) => failure = Some(e),
            }
        }
        if who.is_none()
            && let Some(x) = &self.external
        {
            presented = true;
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let host = crate::util::request_host(req.uri(), headers).unwrap_or_default();
            let asked = remote::Asked {
                method: req.method(),
                path_and_query: pq,
                headers,
                client: facts.client,
                scheme: facts.scheme,
                host: &host,
            };
            match x.check(&asked).await {
                Ok(h) => {
                    backend_headers = h;
                    who = Some(Identity::default());
                }
                Err(e) => failure = Some(e),
            }
        }
        let who = match who {
            Some(w) => w,
            None if presented => {
                return Err(
                    failure.unwrap_or_else(|| self.unauthenticated("invalid_credentials", false))
                );
            }
            None if self.anonymous => Identity {
                anonymous: true,
                ..Identity::default()
            },
            None => return Err(self.unauthenticated("no_credentials", false)),
        };

        if let Some(rules) = &self.rules
            && !rules.allows(
                &who,
                req.method(),
                matching.unwrap_or(req.uri().path()),
                facts.trusted_client,
            )
        {
            return Err(if who.anonymous {
                self.unauthenticated("credentials_required", false)
            } else {
                let path = matching.unwrap_or(req.uri().path());
                let challenge = who.bearer.then(|| {
                    rules
                        .missing_scopes(&who, req.method(), path, facts.trusted_client)
                        .and_then(|scopes| insufficient_scope(&scopes))
                        .unwrap_or(BEARER_SCOPE)
                });
                Refusal::Forbidden { challenge }
            });
        }

        // The request as the backend sees it.
        let headers = req.headers_mut();
        let consumer_value = who.consumer_value.clone().or_else(|| {
            who.consumer
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
        });
        if let Some(v) = consumer_value {
            headers.insert(self.consumer_header.clone(), v);
        }
        for (name, value) in who.claim_headers.iter().flat_map(|h| h.iter()) {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(j) = &self.jwt
            && j.strip
            && let Some(source) = &token_source
        {
            strip(req, source);
        }
        if basic_passed && self.basic.as_ref().is_some_and(|b| !b.forward_credentials) {
            // The backend knows the user from the consumer header; the password is ours.
            req.headers_mut().remove(header::AUTHORIZATION);
        }
        if let Some(k) = &self.api_keys {
            // The backend has no use for the key, and its logs should not see it.
            match (&k.header, &self.api_key_query) {
                (Some(h), _) => {
                    req.headers_mut().remove(h);
                }
                (None, Some(q)) => strip(req, q),
                (None, None) => {}
            }
        }
        // What the external service may hand the backend is the service's word alone: a
        // client's own copy (`x-user-id`) never reaches the backend, whether the answer has
        // one or not. Last, so a service that swaps the client's credential for its own
        // (`Authorization`) is not undone by the strips above.
        if let Some(e) = &self.external {
            let headers = req.headers_mut();
            for h in e.backend_headers() {
                headers.remove(h);
            }
            for (name, value) in backend_headers.iter() {
                headers.append(name.clone(), value.clone());
            }
        }
        let anonymous = who.anonymous;
        Ok((
            Authenticated {
                consumer: who.consumer,
                claims: who.claims,
            },
            anonymous,
        ))
    }
}

/// Removes a credential from where it was found.
fn strip<B>(req: &mut Request<B>, source: &TokenSource) {
    match source {
        TokenSource::Header { name, .. } => {
            req.headers_mut().remove(name.as_str());
        }
        TokenSource::Cookie(name) => {
            let kept: Vec<String> = req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .map(str::trim)
                .filter(|c| c.split_once('=').is_none_or(|(k, _)| k.trim() != name))
                .map(str::to_string)
                .collect();
            req.headers_mut().remove(header::COOKIE);
            if !kept.is_empty()
                && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
            {
                req.headers_mut().insert(header::COOKIE, v);
            }
        }
        TokenSource::Query(name) => {
            let Some(query) = req.uri().query() else {
                return;
            };
            // Names compare decoded, as they were read (`api%5Fkey` is `api_key`).
            let kept: Vec<&str> = query
                .split('&')
                .filter(|p| {
                    crate::util::percent_decode(p.split('=').next().unwrap_or_default())
                        != name.as_str()
                })
                .collect();
            let path = req.uri().path();
            let pq = if kept.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", kept.join("&"))
            };
            let mut parts = req.uri().clone().into_parts();
            if let Ok(pq) = pq.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
    }
}
