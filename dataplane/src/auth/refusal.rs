//! How a policy says no: its own outcome ([`Refusal`]), counted by decision and turned into
//! the gateway's answer in one place.

use crate::body::LocalReply;
use crate::errors::ProxyError;
use crate::metrics::AuthDecision;
use http::{HeaderValue, StatusCode};

/// Why a policy did not let a request pass; the policy's own outcome, counted by decision and
/// turned into the gateway's answer ([`LocalReply`]) in one place.
#[derive(Debug)]
pub enum Refusal {
    /// No valid credentials (RFC 9110 §15.5.2): one `WWW-Authenticate` challenge per scheme.
    Unauthenticated {
        reason: String,
        challenges: Vec<HeaderValue>,
    },
    /// Authenticated, but the policy's rules do not allow this request.
    Forbidden { challenge: Option<HeaderValue> },
    /// The external auth service said no: its answer goes to the client.
    Denied(Box<LocalReply>),
    /// The external auth or introspection service failed and the policy fails closed.
    Unavailable,
    /// Every verification slot is busy (password hashing, calls to a service): 503 at once.
    Busy,
    /// This client failed password verification too often lately: 429.
    Throttled,
    /// The policy could not be compiled: refuse rather than serve unprotected.
    Invalid,
}

impl Refusal {
    pub(super) fn decision(&self) -> AuthDecision {
        match self {
            Refusal::Unauthenticated { .. } => AuthDecision::Unauthenticated,
            Refusal::Forbidden { .. } => AuthDecision::Forbidden,
            Refusal::Denied(_) => AuthDecision::Denied,
            Refusal::Unavailable => AuthDecision::Unavailable,
            Refusal::Busy => AuthDecision::Busy,
            Refusal::Throttled => AuthDecision::Throttled,
            Refusal::Invalid => AuthDecision::Invalid,
        }
    }

    pub(super) fn into_error(self, policy: &str) -> ProxyError {
        match self {
            Refusal::Unauthenticated { reason, challenges } => {
                let mut r = LocalReply::text(
                    StatusCode::UNAUTHORIZED,
                    format!("auth={reason}"),
                    "authentication required\n",
                );
                for c in challenges {
                    r.headers.append(http::header::WWW_AUTHENTICATE, c);
                }
                ProxyError::Denied(Box::new(r))
            }
            Refusal::Forbidden { challenge } => {
                let r = LocalReply::text(StatusCode::FORBIDDEN, "auth=forbidden", "forbidden\n");
                ProxyError::Denied(Box::new(match challenge {
                    Some(c) => r.header(http::header::WWW_AUTHENTICATE, c),
                    None => r,
                }))
            }
            Refusal::Denied(r) => ProxyError::Denied(r),
            Refusal::Unavailable => ProxyError::PolicyUnavailable(Box::new(LocalReply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth=service_unavailable",
                "authorization service unavailable\n",
            ))),
            Refusal::Busy => ProxyError::PolicyUnavailable(Box::new(
                LocalReply::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "auth=busy",
                    "too many logins in progress; retry shortly\n",
                )
                .header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
            )),
            Refusal::Throttled => ProxyError::Denied(Box::new(
                LocalReply::text(
                    StatusCode::TOO_MANY_REQUESTS,
                    "auth=throttled",
                    "too many failed logins; retry later\n",
                )
                .header(http::header::RETRY_AFTER, HeaderValue::from_static("60")),
            )),
            Refusal::Invalid => ProxyError::PolicyInvalid {
                policy: "auth",
                id: policy.to_string(),
            },
        }
    }
}
