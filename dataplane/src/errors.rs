//! Every way a proxied request can fail, and the one place that turns a failure into a
//! response (so 500 vs 502 vs 503 vs 504 is decided here and nowhere else). A leaf above
//! [`crate::body`]: policies answer through [`LocalReply`], so this module names none of
//! them.
//!
//! gRPC requests get gRPC answers: HTTP 200 with `grpc-status` and `grpc-message` in a
//! trailers-only response (the gRPC over HTTP/2 spec), since a gRPC client reads the status
//! from there and maps a bare HTTP status only roughly.

use crate::body::{BodyFault, LocalReply, ProxyBody, text_response};
use http::{HeaderValue, Response, StatusCode, header};

/// Who caused the failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something we cannot serve, or a policy refused it.
    Downstream,
    /// The backend failed or is missing, or a policy's dependency did.
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
    /// A circuit breaker of the backend's BackendPolicy is at its limit (`limit`: the
    /// field's name, `maxRequests`): answered at once, never sent.
    #[error("backend {backend} is at its {limit} limit")]
    Overloaded {
        backend: String,
        limit: &'static str,
    },
    /// No connection to the endpoint: the backend never saw the request.
    #[error("cannot connect to backend {backend}: {source}")]
    Connect {
        backend: String,
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed once the request was on its way (the connection broke, the
    /// backend broke the protocol).
    #[error("backend {backend} failed: {source}")]
    Upstream {
        backend: String,
        #[source]
        source: crate::body::BoxError,
        /// How, for the access log and metrics: `failed`, `closed`, `truncated`,
        /// `invalid_response`.
        kind: &'static str,
    },
    /// The client's request body was malformed or too slow.
    #[error("the request body failed: {}", .0.as_str())]
    ClientBody(BodyFault),
    /// The backend switched protocols although nothing asked it to.
    #[error("backend {0} answered 101 to a request without Upgrade")]
    UnexpectedUpgrade(String),
    /// A WebSocket the backend could not or did not take as asked.
    #[error("backend {0} cannot carry this WebSocket: {1}")]
    BadUpgrade(String, &'static str),
    #[error("backend {0} did not answer within the backendRequest timeout")]
    BackendTimeout(String),
    #[error("the request timeout elapsed")]
    RequestTimeout,
    /// A policy answered the request itself (401, 403, 429, an external service's denial).
    #[error("refused by a policy ({})", .0.reason)]
    Denied(Box<LocalReply>),
    /// A policy's dependency failed or is saturated, and the policy fails closed (an auth
    /// service, Redis): its 503.
    #[error("a policy's dependency is unavailable ({})", .0.reason)]
    PolicyUnavailable(Box<LocalReply>),
    /// The route's policy could not be built: refuse rather than serve unprotected.
    #[error("{policy} policy {id} is invalid")]
    PolicyInvalid { policy: &'static str, id: String },
}

/// gRPC status codes the gateway answers with (grpc/grpc `doc/statuscodes.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GrpcStatus {
    Unknown = 2,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Internal = 13,
    Unimplemented = 12,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl GrpcStatus {
    /// The code for an HTTP status the gateway chose, as gRPC's HTTP-to-gRPC mapping has it,
    /// except that 429 is RESOURCE_EXHAUSTED (a quota, not an outage: clients must not
    /// retry it at once) and 504 DEADLINE_EXCEEDED.
    pub fn for_http(status: StatusCode) -> Self {
        match status.as_u16() {
            400 | 408 => GrpcStatus::Internal,
            401 => GrpcStatus::Unauthenticated,
            403 => GrpcStatus::PermissionDenied,
            404 | 421 => GrpcStatus::Unimplemented,
            429 => GrpcStatus::ResourceExhausted,
            502 | 503 => GrpcStatus::Unavailable,
            504 => GrpcStatus::DeadlineExceeded,
            _ => GrpcStatus::Unknown,
        }
    }
}

/// Whether a request speaks gRPC (`content-type: application/grpc`, `+proto`, `+json`, …).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/grpc") && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

impl ProxyError {
    /// Why the gateway answered itself, as the access log's `reason`: `area=detail`
    /// (`auth=expired_token`, `ratelimit=default/api/per-client`, `route=none`,
    /// `upstream=connect_refused`).
    pub fn reason(&self) -> String {
        fn connect_kind(e: &std::io::Error) -> &'static str {
            match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "connect_refused",
                std::io::ErrorKind::TimedOut => "connect_timeout",
                std::io::ErrorKind::ConnectionReset => "connect_reset",
                _ => "connect_error",
            }
        }
        match self {
            ProxyError::BadRequest(_) => "request=invalid".into(),
            ProxyError::NoRoute => "route=none".into(),
            ProxyError::Misdirected => "route=misdirected".into(),
            ProxyError::NoBackend => "route=no_backend".into(),
            ProxyError::NoEndpoints(_) => "upstream=no_endpoints".into(),
            ProxyError::Overloaded { .. } => "upstream=overloaded".into(),
            ProxyError::Connect { source, .. } => format!("upstream={}", connect_kind(source)),
            ProxyError::Upstream { kind, .. } => format!("upstream={kind}"),
            ProxyError::ClientBody(f) => format!("client=body_{}", f.as_str()),
            ProxyError::UnexpectedUpgrade(_) => "upstream=unexpected_upgrade".into(),
            ProxyError::BadUpgrade(..) => "upstream=bad_upgrade".into(),
            ProxyError::BackendTimeout(_) => "upstream=timeout".into(),
            ProxyError::RequestTimeout => "route=request_timeout".into(),
            ProxyError::Denied(r) | ProxyError::PolicyUnavailable(r) => r.reason.to_string(),
            ProxyError::PolicyInvalid { policy, .. } => format!("{policy}=policy_invalid"),
        }
    }

    pub fn source_kind(&self) -> ErrorSource {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::ClientBody(_)
            | ProxyError::Misdirected
            | ProxyError::Denied(_) => ErrorSource::Downstream,
            ProxyError::NoRoute | ProxyError::NoBackend | ProxyError::PolicyInvalid { .. } => {
                ErrorSource::Config
            }
            ProxyError::PolicyUnavailable(_)
            | ProxyError::NoEndpoints(_)
            | ProxyError::Overloaded { .. }
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UnexpectedUpgrade(_)
            | ProxyError::BadUpgrade(..)
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
            ProxyError::ClientBody(BodyFault::Framing) => StatusCode::BAD_REQUEST,
            ProxyError::ClientBody(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UnexpectedUpgrade(_) | ProxyError::BadUpgrade(..) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            // The Gateway API: traffic for an invalid or missing backendRef gets 500.
            ProxyError::NoBackend => StatusCode::INTERNAL_SERVER_ERROR,
            // ...and a Service without endpoints 503, as does a backend we cannot reach.
            ProxyError::NoEndpoints(_)
            | ProxyError::Connect { .. }
            | ProxyError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::BackendTimeout(_) | ProxyError::RequestTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Denied(r) | ProxyError::PolicyUnavailable(r) => r.status,
            ProxyError::PolicyInvalid { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status a gRPC client gets for this failure. GRPCRoute: an invalid backendRef
    /// (and so any missing or unreachable backend) is UNAVAILABLE, not the HTTP 500's UNKNOWN.
    pub fn grpc_status(&self) -> GrpcStatus {
        match self {
            ProxyError::NoBackend
            | ProxyError::NoEndpoints(_)
            | ProxyError::Overloaded { .. }
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UnexpectedUpgrade(_)
            | ProxyError::BadUpgrade(..) => GrpcStatus::Unavailable,
            ProxyError::BackendTimeout(_) | ProxyError::RequestTimeout => {
                GrpcStatus::DeadlineExceeded
            }
            ProxyError::NoRoute | ProxyError::Misdirected => GrpcStatus::Unimplemented,
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => GrpcStatus::Internal,
            ProxyError::PolicyInvalid { .. } => GrpcStatus::Internal,
            ProxyError::Denied(r) | ProxyError::PolicyUnavailable(r) => {
                GrpcStatus::for_http(r.status)
            }
        }
    }

    /// The response: a short plain-text one that names the failure class, never backend
    /// addresses; or, to a gRPC client, the same as a gRPC status.
    pub fn into_response(self, grpc: bool) -> Response<ProxyBody> {
        let status = self.status();
        let code = self.grpc_status();
        let text: &str = match &self {
            ProxyError::Denied(_) | ProxyError::PolicyUnavailable(_) => "",
            ProxyError::PolicyInvalid { .. } => "this route's policy is invalid; see its status",
            ProxyError::BadRequest(why) => why,
            ProxyError::ClientBody(BodyFault::Framing) => "malformed request body",
            ProxyError::ClientBody(_) => "request body timeout",
            ProxyError::UnexpectedUpgrade(_) | ProxyError::Upstream { .. } => "upstream error",
            ProxyError::BadUpgrade(..) => "the backend cannot carry this WebSocket",
            ProxyError::NoRoute => "no route matches this request",
            ProxyError::Misdirected => {
                "this connection's TLS server name does not cover the requested host"
            }
            ProxyError::NoBackend => "this route has no usable backend",
            ProxyError::NoEndpoints(_) => "no healthy upstream",
            ProxyError::Overloaded { .. } => "upstream overloaded",
            ProxyError::Connect { .. } => "upstream connect error",
            ProxyError::BackendTimeout(_) | ProxyError::RequestTimeout => {
                "upstream request timeout"
            }
        };
        match self {
            ProxyError::Denied(reply) | ProxyError::PolicyUnavailable(reply) if grpc => {
                let message = match reply.status.canonical_reason() {
                    Some(r) => r.to_ascii_lowercase(),
                    None => reply.status.as_str().to_string(),
                };
                let mut resp = grpc_status(code, &message);
                // The policy's headers (challenges, Retry-After, RateLimit) still apply;
                // its body and content type do not.
                for (name, value) in reply.headers {
                    if let Some(name) = name
                        && name != header::CONTENT_TYPE
                        && name != header::CONTENT_LENGTH
                    {
                        resp.headers_mut().append(name, value);
                    }
                }
                resp
            }
            ProxyError::Denied(reply) | ProxyError::PolicyUnavailable(reply) => {
                reply.into_response()
            }
            ProxyError::Overloaded { limit, .. } => {
                let mut resp = if grpc {
                    grpc_status(code, text)
                } else {
                    text_response(status, format!("{text}\n"))
                };
                resp.headers_mut()
                    .insert(&OVERLOADED, HeaderValue::from_static(limit));
                resp
            }
            _ if grpc => grpc_status(code, text),
            ProxyError::BadRequest(_) => text_response(status, format!("bad request: {text}\n")),
            _ => text_response(status, format!("{text}\n")),
        }
    }
}

/// Which circuit-breaker limit refused a request (clients and dashboards tell it apart from
/// a backend with no endpoints, which is 503 too).
pub static OVERLOADED: header::HeaderName = header::HeaderName::from_static("x-portico-overloaded");

/// A trailers-only gRPC response: HTTP 200, the status in the headers, no body.
pub fn grpc_status(code: GrpcStatus, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(u16::from(code as u8)));
    // grpc-message is percent-encoded; ours are plain ASCII without '%'.
    if let Ok(v) = HeaderValue::from_str(message) {
        h.insert("grpc-message", v);
    }
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

    #[test]
    fn grpc_clients_get_a_trailers_only_status() {
        use http_body::Body;
        let resp = ProxyError::NoRoute.into_response(true);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "12");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert!(
            resp.body().is_end_stream(),
            "no body, so the headers end the stream"
        );
        let resp = ProxyError::NoEndpoints("b".into()).into_response(true);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "no healthy upstream");
        let resp = ProxyError::NoBackend.into_response(true);
        assert_eq!(
            resp.headers()["grpc-status"],
            "14",
            "GRPCRoute: an invalid backend is UNAVAILABLE"
        );
        let resp = ProxyError::RequestTimeout.into_response(true);
        assert_eq!(resp.headers()["grpc-status"], "4");
        let resp = ProxyError::NoRoute.into_response(false);
        assert_eq!(resp.status(), 404);

        let mut reply = LocalReply::text(
            StatusCode::TOO_MANY_REQUESTS,
            "ratelimit=x",
            "too many requests\n",
        );
        reply
            .headers
            .insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        let resp = ProxyError::Denied(Box::new(reply)).into_response(true);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "8");
        assert_eq!(resp.headers()["retry-after"], "3");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        let h = |v: &'static str| {
            let mut m = http::HeaderMap::new();
            m.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            m
        };
        assert!(is_grpc(&h("application/grpc")));
        assert!(is_grpc(&h("application/grpc+proto")));
        assert!(is_grpc(&h("application/grpc;charset=utf-8")));
        assert!(!is_grpc(&h("application/grpc-web")));
        assert!(!is_grpc(&h("application/json")));
        assert!(!is_grpc(&http::HeaderMap::new()));
    }
}
