//! Asking other services: external authorization (an HTTP call per request) and OAuth2 token
//! introspection (RFC 7662, cached until the token's expiry or the policy's bound).

use super::cache::{Digest, TtlCache, digest};
use super::jwt::Claims;
use super::refusal::Refusal;
use crate::body::LocalReply;
use crate::upstream::HttpClient;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use portico_model::auth as model;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Calls to one external auth or introspection service in flight at once, per policy. Beyond,
/// a request waits for a place up to the policy's timeout, then is answered 503 (counted as
/// `busy`): a flood of garbage tokens must not become a flood on the identity provider,
/// whatever the policy's failure mode, and a burst of real traffic waits rather than fails.
pub const MAX_CALLS_IN_FLIGHT: usize = 64;

fn call_slots() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(MAX_CALLS_IN_FLIGHT))
}

fn names(list: &[String]) -> Result<Vec<HeaderName>, String> {
    list.iter()
        .map(|h| HeaderName::from_bytes(h.as_bytes()).map_err(|e| format!("header {h:?}: {e}")))
        .collect()
}

/// Percent-encoding for `application/x-www-form-urlencoded` values.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug)]
pub struct External {
    base: String,
    send: Vec<HeaderName>,
    to_backend: Vec<HeaderName>,
    to_client: Vec<HeaderName>,
    timeout: Duration,
    fail_open: bool,
    client: HttpClient,
    slots: Arc<tokio::sync::Semaphore>,
}

impl External {
    /// The headers the service's answer may set on the request to the backend.
    pub fn backend_headers(&self) -> &[HeaderName] {
        &self.to_backend
    }
}

/// What the request looks like to the external service.
pub struct Asked<'a> {
    pub method: &'a Method,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub client: IpAddr,
    pub scheme: &'a str,
    pub host: &'a str,
}

impl External {
    pub fn new(m: &model::External, client: HttpClient) -> Result<Self, String> {
        Ok(Self {
            base: m.url.trim_end_matches('/').to_string(),
            send: names(&m.headers_to_send)?,
            to_backend: names(&m.headers_to_backend)?,
            to_client: names(&m.headers_to_client)?,
            timeout: Duration::from_millis(u64::from(m.timeout_ms)),
            fail_open: m.fail_open,
            client,
            slots: call_slots(),
        })
    }

    /// `Ok(headers for the backend)` when the service allows the request.
    pub async fn check(&self, r: &Asked<'_>) -> Result<HeaderMap, Refusal> {
        let Ok(Ok(_slot)) =
            tokio::time::timeout(self.timeout, self.slots.clone().acquire_owned()).await
        else {
            tracing::debug!(service = %self.base, "external auth saturated; refusing");
            return Err(Refusal::Busy);
        };
        let mut req = Request::builder()
            .method(r.method.clone())
            .uri(format!("{}{}", self.base, r.path_and_query));
        if let Some(h) = req.headers_mut() {
            for name in &self.send {
                for v in r.headers.get_all(name) {
                    h.append(name.clone(), v.clone());
                }
            }
            let mut set = |n: &'static str, v: &str| {
                if let Ok(v) = HeaderValue::from_str(v) {
                    h.insert(HeaderName::from_static(n), v);
                }
            };
            set("x-forwarded-for", &r.client.to_string());
            set("x-forwarded-proto", r.scheme);
            set("x-forwarded-host", r.host);
            set("x-forwarded-method", r.method.as_str());
            set("x-forwarded-uri", r.path_and_query);
        }
        let req = req.body(Full::new(Bytes::new())).map_err(|e| {
            tracing::warn!(service = %self.base, error = %e, "cannot build the auth request");
            Refusal::Unavailable
        })?;
        let fail = |why: String| {
            if self.fail_open {
                tracing::warn!(service = %self.base, error = %why, "external auth failed; failing open as configured");
                Ok(HeaderMap::new())
            } else {
                tracing::warn!(service = %self.base, error = %why, "external auth failed; refusing (fail closed)");
                Err(Refusal::Unavailable)
            }
        };
        let work = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("reading the answer: {e}"))?;
            Ok::<_, String>((status, headers, body))
        };
        let (status, headers, body) = match tokio::time::timeout(self.timeout, work).await {
            Err(_) => return fail(format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) => return fail(e),
            Ok(Ok(answer)) => answer,
        };
        if status.is_server_error() {
            return fail(format!("status {status}"));
        }
        let pick = |list: &[HeaderName]| {
            let mut out = HeaderMap::new();
            for name in list {
                for v in headers.get_all(name) {
                    out.append(name.clone(), v.clone());
                }
            }
            out
        };
        if status.is_success() {
            return Ok(pick(&self.to_backend));
        }
        let mut to_client = pick(&self.to_client);
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            to_client.insert(header::CONTENT_TYPE, ct.clone());
        }
        // Informational and redirection answers are denials too; 3xx keeps its Location.
        let status = if status.is_informational() {
            StatusCode::FORBIDDEN
        } else {
            status
        };
        Err(Refusal::Denied(Box::new(LocalReply {
            status,
            headers: to_client,
            body,
            reason: "auth=denied_by_service".into(),
        })))
    }
}

/// An introspection answer: the token's claims when it is active.
#[derive(Clone, Debug)]
pub enum Introspected {
    Active(Arc<Claims>),
    Inactive,
}

#[derive(Debug)]
pub struct Introspection {
    url: String,
    client_id: String,
    authorization: Option<HeaderValue>,
    max_cache: Duration,
    timeout: Duration,
    client: HttpClient,
    cache: Arc<TtlCache<Digest, Introspected>>,
    slots: Arc<tokio::sync::Semaphore>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Introspection {
    pub fn new(
        m: &model::Introspection,
        client: HttpClient,
        cache: Arc<TtlCache<Digest, Introspected>>,
    ) -> Self {
        // RFC 6749 §2.3.1: form-encode, then Basic.
        let authorization = (!m.client_id.is_empty()).then(|| {
            let raw = format!(
                "{}:{}",
                form_encode(&m.client_id),
                form_encode(&m.client_secret.0)
            );
            let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
            HeaderValue::from_str(&format!("Basic {b64}"))
                .ok()
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                })
        });
        Self {
            url: m.url.clone(),
            client_id: m.client_id.clone(),
            authorization: authorization.flatten(),
            max_cache: Duration::from_secs(u64::from(m.cache_seconds)),
            timeout: Duration::from_millis(u64::from(m.timeout_ms)),
            client,
            cache,
            slots: call_slots(),
        }
    }

    pub async fn introspect(&self, token: &str) -> Result<Introspected, Refusal> {
        let Some(authorization) = &self.authorization else {
            // Without client credentials (an unresolved Secret) no token is accepted.
            return Ok(Introspected::Inactive);
        };
        let key = digest(&[
            self.url.as_bytes(),
            self.client_id.as_bytes(),
            token.as_bytes(),
        ]);
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit);
        }
        let Ok(Ok(_slot)) =
            tokio::time::timeout(self.timeout, self.slots.clone().acquire_owned()).await
        else {
            tracing::debug!(url = %self.url, "token introspection saturated; refusing");
            return Err(Refusal::Busy);
        };
        let body = format!("token={}&token_type_hint=access_token", form_encode(token));
        let req = Request::post(&self.url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, authorization.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| {
                tracing::warn!(url = %self.url, error = %e, "cannot build the introspection request");
                Refusal::Unavailable
            })?;
        let work = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("status {}", resp.status()));
            }
            Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("reading the answer: {e}"))
        };
        let answer = match tokio::time::timeout(self.timeout, work).await {
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            Ok(r) => r,
        }
        .and_then(|b| {
            serde_json::from_slice::<Claims>(&b)
                .map_err(|_| "the answer is not a JSON object".to_string())
        })
        .map_err(|e| {
            tracing::warn!(url = %self.url, error = %e, "token introspection failed");
            Refusal::Unavailable
        })?;
        let now = unix_now();
        let exp = answer.get("exp").and_then(serde_json::Value::as_u64);
        let active = answer.get("active") == Some(&serde_json::Value::Bool(true))
            && exp.is_none_or(|e| e > now);
        let (result, ttl) = if active {
            let left = exp.map_or(self.max_cache, |e| Duration::from_secs(e - now));
            (
                Introspected::Active(Arc::new(answer)),
                self.max_cache.min(left),
            )
        } else {
            (Introspected::Inactive, self.max_cache)
        };
        self.cache.insert(key, result.clone(), ttl);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_encoding_escapes_everything_but_unreserved() {
        assert_eq!(super::form_encode("a b+c/d~e"), "a%20b%2Bc%2Fd~e");
    }
}
