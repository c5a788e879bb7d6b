//! Every way a proxied request can fail, and the one place that turns a failure into a
//! response (so 500 vs 502 vs 503 vs 504 is decided here and nowhere else).

use crate::proxy::ProxyBody;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};

/// The answer of an external auth service that denied a request.
#[derive(Debug)]
pub struct AuthAnswer {
    pub status: StatusCode,
    /// The headers the policy copies to the client.
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Who caused the failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something we cannot serve.
    Downstream,
    /// The backend failed or is missing.
    Upstream,
    /// Our configuration has no way to serve the request.
    Config,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no route matches the request")]
    NoRoute,
    /// The Host belongs to another listener than the TLS server name chose (RFC 9110 §15.5.20).
    #[error("the request's host is served by another listener than the TLS server name")]
    Misdirected,
    /// The rule has no backend with weight, or the chosen backendRef is unresolved.
    #[error("the route has no usable backend")]
    NoBackend,
    #[error("backend {0} has no ready endpoints")]
    NoEndpoints(String),
    #[error("cannot connect to backend {backend}: {source}")]
    Connect {
        backend: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("backend {backend} failed: {source}")]
    Upstream {
        backend: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The client's request body was malformed or too slow.
    #[error("the request body failed: {}", .0.as_str())]
    ClientBody(crate::body::BodyFault),
    /// The backend switched protocols although nothing asked it to.
    #[error("backend {0} answered 101 to a request without Upgrade")]
    UnexpectedUpgrade(String),
    #[error("backend {0} did not answer within the backendRequest timeout")]
    BackendTimeout(String),
    #[error("the request timeout elapsed")]
    RequestTimeout,
    /// No valid credentials (RFC 9110 §15.5.2): one `WWW-Authenticate` challenge per scheme.
    #[error("authentication required: {reason}")]
    Unauthenticated {
        reason: String,
        challenges: Vec<HeaderValue>,
    },
    /// Authenticated, but the policy's rules do not allow this request.
    #[error("forbidden by the auth policy")]
    Forbidden { challenge: Option<HeaderValue> },
    /// The external auth service said no: its answer goes to the client.
    #[error("denied by the external auth service ({})", .0.status)]
    AuthDenied(Box<AuthAnswer>),
    /// The external auth or introspection service failed and the policy fails closed.
    #[error("auth service unavailable: {0}")]
    AuthUnavailable(String),
    /// Every password-verification slot is busy and the queue is full: 503 at once.
    #[error("too many password verifications in progress")]
    AuthBusy,
    /// This client failed password verification too often lately: 429.
    #[error("too many failed password verifications from this client")]
    AuthThrottled,
    /// The route's auth policy could not be compiled: refuse rather than serve unprotected.
    #[error("auth policy {0} is invalid")]
    AuthPolicyInvalid(String),
    /// Over a rate limit: 429 with `Retry-After`.
    #[error("rate limited")]
    RateLimited(Box<crate::ratelimit::RateHeaders>),
    /// Redis is unreachable and the policy fails closed.
    #[error("rate limit store unavailable: {0}")]
    RateLimitUnavailable(String),
}

impl ProxyError {
    /// Why the gateway answered itself, as the access log's `reason`: `area=detail`
    /// (`auth=expired_token`, `ratelimit=default/api/per-client`, `route=none`,
    /// `upstream=connect_refused`).
    pub fn reason(&self) -> String {
        fn connect_kind(e: &hyper_util::client::legacy::Error) -> &'static str {
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    return match io.kind() {
                        std::io::ErrorKind::ConnectionRefused => "connect_refused",
                        std::io::ErrorKind::TimedOut => "connect_timeout",
                        std::io::ErrorKind::ConnectionReset => "connect_reset",
                        _ => "connect_error",
                    };
                }
                source = s.source();
            }
            "connect_error"
        }
        match self {
            ProxyError::BadRequest(_) => "request=invalid".into(),
            ProxyError::NoRoute => "route=none".into(),
            ProxyError::Misdirected => "route=misdirected".into(),
            ProxyError::NoBackend => "route=no_backend".into(),
            ProxyError::NoEndpoints(_) => "upstream=no_endpoints".into(),
            ProxyError::Connect { source, .. } => format!("upstream={}", connect_kind(source)),
            ProxyError::Upstream { source, .. } => {
                if source.is_connect() {
                    format!("upstream={}", connect_kind(source))
                } else {
                    "upstream=failed".into()
                }
            }
            ProxyError::ClientBody(f) => format!("client=body_{}", f.as_str()),
            ProxyError::UnexpectedUpgrade(_) => "upstream=unexpected_upgrade".into(),
            ProxyError::BackendTimeout(_) => "upstream=timeout".into(),
            ProxyError::RequestTimeout => "route=request_timeout".into(),
            ProxyError::Unauthenticated { reason, .. } => format!("auth={reason}"),
            ProxyError::Forbidden { .. } => "auth=forbidden".into(),
            ProxyError::AuthDenied(_) => "auth=denied_by_service".into(),
            ProxyError::AuthUnavailable(_) => "auth=service_unavailable".into(),
            ProxyError::AuthBusy => "auth=busy".into(),
            ProxyError::AuthThrottled => "auth=throttled".into(),
            ProxyError::AuthPolicyInvalid(_) => "auth=policy_invalid".into(),
            ProxyError::RateLimited(h) => {
                format!("ratelimit={}", h.refused_by.as_deref().unwrap_or("limited"))
            }
            ProxyError::RateLimitUnavailable(_) => "ratelimit=store_unavailable".into(),
        }
    }

    pub fn source_kind(&self) -> ErrorSource {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::ClientBody(_)
            | ProxyError::Misdirected
            | ProxyError::Unauthenticated { .. }
            | ProxyError::Forbidden { .. }
            | ProxyError::AuthDenied(_)
            | ProxyError::AuthThrottled
            | ProxyError::RateLimited(_) => ErrorSource::Downstream,
            ProxyError::NoRoute | ProxyError::NoBackend | ProxyError::AuthPolicyInvalid(_) => {
                ErrorSource::Config
            }
            ProxyError::AuthUnavailable(_)
            | ProxyError::AuthBusy
            | ProxyError::RateLimitUnavailable(_) => ErrorSource::Upstream,
            ProxyError::NoEndpoints(_)
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UnexpectedUpgrade(_)
            | ProxyError::BackendTimeout(_)
            | ProxyError::RequestTimeout => ErrorSource::Upstream,
        }
    }

    /// Whether another attempt (at another endpoint) could succeed without the backend having
    /// seen the request. Used by retries once they exist.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::NoEndpoints(_)
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::ClientBody(crate::body::BodyFault::Framing) => StatusCode::BAD_REQUEST,
            ProxyError::ClientBody(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UnexpectedUpgrade(_) => StatusCode::BAD_GATEWAY,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            // The Gateway API: traffic for an invalid or missing backendRef gets 500.
            ProxyError::NoBackend => StatusCode::INTERNAL_SERVER_ERROR,
            // ...and a Service without endpoints 503, as does a backend we cannot reach.
            ProxyError::NoEndpoints(_) | ProxyError::Connect { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::BackendTimeout(_) | ProxyError::RequestTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::AuthDenied(a) => a.status,
            ProxyError::AuthUnavailable(_) | ProxyError::AuthBusy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::AuthThrottled => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::AuthPolicyInvalid(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::RateLimitUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short plain-text response. It names the failure class, never backend addresses.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let text = match self {
            ProxyError::Unauthenticated { challenges, .. } => {
                let mut resp = text_response(status, "authentication required\n".into());
                for c in challenges {
                    resp.headers_mut().append(header::WWW_AUTHENTICATE, c);
                }
                return resp;
            }
            ProxyError::Forbidden { challenge } => {
                let mut resp = text_response(status, "forbidden\n".into());
                if let Some(c) = challenge {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
                }
                return resp;
            }
            ProxyError::AuthDenied(answer) => {
                let AuthAnswer { headers, body, .. } = *answer;
                let mut resp = Response::new(Either::Right(Full::new(body)));
                *resp.status_mut() = status;
                *resp.headers_mut() = headers;
                return resp;
            }
            ProxyError::AuthUnavailable(_) => "authorization service unavailable\n".into(),
            ProxyError::AuthBusy | ProxyError::AuthThrottled => {
                let (status_text, retry) = if status == StatusCode::TOO_MANY_REQUESTS {
                    ("too many failed logins; retry later\n", "60")
                } else {
                    ("too many logins in progress; retry shortly\n", "1")
                };
                let mut resp = text_response(status, status_text.into());
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static(retry));
                return resp;
            }
            ProxyError::RateLimited(headers) => {
                let mut resp = text_response(status, "too many requests\n".into());
                headers.apply(resp.headers_mut());
                return resp;
            }
            ProxyError::RateLimitUnavailable(_) => {
                let mut resp = text_response(status, "rate limit service unavailable\n".into());
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return resp;
            }
            ProxyError::AuthPolicyInvalid(_) => {
                "this route's auth policy is invalid; see its status\n".into()
            }
            ProxyError::BadRequest(why) => format!("bad request: {why}\n"),
            ProxyError::ClientBody(crate::body::BodyFault::Framing) => {
                "bad request: malformed request body\n".into()
            }
            ProxyError::ClientBody(_) => "request body timeout\n".into(),
            ProxyError::UnexpectedUpgrade(_) => "upstream error\n".into(),
            ProxyError::NoRoute => "no route matches this request\n".into(),
            ProxyError::Misdirected => {
                "this connection's TLS server name does not cover the requested host\n".into()
            }
            ProxyError::NoBackend => "this route has no usable backend\n".into(),
            ProxyError::NoEndpoints(_) => "no healthy upstream\n".into(),
            ProxyError::Connect { .. } => "upstream connect error\n".into(),
            ProxyError::Upstream { .. } => "upstream error\n".into(),
            ProxyError::BackendTimeout(_) | ProxyError::RequestTimeout => {
                "upstream request timeout\n".into()
            }
        };
        text_response(status, text)
    }
}

pub fn text_response(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_follow_the_gateway_api() {
        assert_eq!(ProxyError::NoRoute.status(), 404);
        assert_eq!(ProxyError::Misdirected.status(), 421);
        assert_eq!(ProxyError::NoBackend.status(), 500);
        assert_eq!(ProxyError::NoEndpoints("b".into()).status(), 503);
        assert_eq!(ProxyError::RequestTimeout.status(), 504);
        assert_eq!(
            ProxyError::BadRequest("x").source_kind(),
            ErrorSource::Downstream
        );
        assert!(ProxyError::NoEndpoints("b".into()).retryable());
        assert!(!ProxyError::RequestTimeout.retryable());
    }
}
