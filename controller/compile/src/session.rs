//! Session persistence (Gateway API `sessionPersistence` on HTTPRoute and GRPCRoute rules,
//! and the same field of a BackendPolicy): each check the CRDs' CEL makes, repeated for
//! standalone mode, and the model form. A leaf.

use crate::values::{HOUR, SECOND, millis};
use portico_crds::backend as crd;
use portico_model::backend::{SessionKind, SessionPersistence};
use serde::Serialize;

/// The longest session: a year.
const MAX_TIMEOUT: u64 = 365 * 24 * HOUR;

/// `sp` in the model, or what to fix. `scope` names the rule or policy it belongs to: the
/// name made up when `sessionName` is not given depends on it, so that two rules or policies
/// never share a cookie by accident.
pub(crate) fn compile(
    sp: &crd::SessionPersistence,
    scope: &str,
) -> Result<SessionPersistence, String> {
    let kind = match sp.type_ {
        None | Some(crd::SessionType::Cookie) => SessionKind::Cookie,
        Some(crd::SessionType::Header) => SessionKind::Header,
    };
    let name = match &sp.session_name {
        Some(n) => {
            if n.is_empty() || n.len() > 128 || !n.bytes().all(name_byte) {
                return Err(format!(
                    "sessionPersistence.sessionName {n:?} must be 1 to 128 letters, digits or !#$%&*+-.^_|~"
                ));
            }
            let lower = n.to_ascii_lowercase();
            if kind == SessionKind::Header
                && (crd::RESERVED_SESSION_HEADERS.contains(&lower.as_str())
                    || lower.starts_with("x-forwarded-")
                    || lower.starts_with("x-portico-"))
            {
                return Err(format!(
                    "sessionPersistence.sessionName {n:?} is a header the gateway reads or sets itself; choose another name"
                ));
            }
            n.clone()
        }
        None => format!("portico-session-{:08x}", fnv1a(scope)),
    };
    let timeout = |field: &str, v: Option<&String>| {
        v.map(|v| {
            millis(
                &format!("sessionPersistence.{field}"),
                v,
                SECOND,
                MAX_TIMEOUT,
            )
        })
        .transpose()
    };
    let absolute_timeout_ms = timeout("absoluteTimeout", sp.absolute_timeout.as_ref())?;
    let idle_timeout_ms = timeout("idleTimeout", sp.idle_timeout.as_ref())?;
    let lifetime = sp.cookie_config.as_ref().and_then(|c| c.lifetime_type);
    if lifetime.is_some() && kind != SessionKind::Cookie {
        return Err("sessionPersistence.cookieConfig applies only to the Cookie type".into());
    }
    let permanent = lifetime == Some(crd::CookieLifetime::Permanent);
    if permanent && absolute_timeout_ms.is_none() {
        return Err(
            "sessionPersistence: a Permanent cookie needs absoluteTimeout (its Max-Age)".into(),
        );
    }
    Ok(SessionPersistence {
        kind,
        name,
        absolute_timeout_ms,
        idle_timeout_ms,
        permanent,
    })
}

/// A route's `sessionPersistence` (the same schema as the BackendPolicy field), compiled.
pub(crate) fn from_route<T: Serialize>(sp: &T, scope: &str) -> Result<SessionPersistence, String> {
    let sp: crd::SessionPersistence = serde_json::to_value(sp)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("sessionPersistence: {e}"))?;
    compile(&sp, scope)
}

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&*+-.^_|~".contains(&b)
}

/// FNV-1a (32 bits): stable across releases, unlike std's hasher.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}
