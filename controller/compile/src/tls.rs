//! Listener certificates: `kubernetes.io/tls` Secrets read into PEM pairs, checked the way the
//! dataplane will load them, so a bad certificate is reported in the listener's status instead
//! of failing at the proxy.

use crate::grants::{GroupKind, ReferenceGrants};
use crate::inputs::Secrets;
use crate::refs::namespace_of;
use crate::status::reasons;
use portico_crds::GATEWAY_GROUP;
use portico_crds::gateway_api::gateways::GatewayListenersTlsCertificateRefs;
use portico_crds::k8s_openapi::api::core::v1::Secret;
use portico_model::tls::{TLS_CERT_KEY, TLS_PRIVATE_KEY_KEY, certified_key};
use portico_model::{Certificate, ObjectRef};
use std::collections::BTreeMap;

/// Secrets by namespace/name, for listeners' `certificateRefs`.
pub(crate) struct SecretIndex<'a> {
    secrets: BTreeMap<(String, String), &'a Secret>,
    /// For why one is missing.
    view: Secrets<'a>,
    grants: &'a ReferenceGrants<'a>,
}

/// Why a certificateRef could not be used: a ResolvedRefs reason and a message.
pub(crate) type RefProblem = (&'static str, String);

impl<'a> SecretIndex<'a> {
    pub(crate) fn new(view: Secrets<'a>, grants: &'a ReferenceGrants<'a>) -> Self {
        let secrets = view
            .iter()
            .map(|s| {
                (
                    (
                        namespace_of(&s.metadata),
                        s.metadata.name.clone().unwrap_or_default(),
                    ),
                    s,
                )
            })
            .collect();
        Self {
            secrets,
            view,
            grants,
        }
    }

    /// The Secret a `from_kind` (Gateway or ListenerSet) in `gw_ns` may use through this
    /// reference, or why it may not. A reference to a Secret that merely does not exist is
    /// still `Ok` here: its name is what the controller must watch.
    pub(crate) fn permitted(
        &self,
        from_kind: &str,
        gw_ns: &str,
        r: &GatewayListenersTlsCertificateRefs,
    ) -> Result<ObjectRef, RefProblem> {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        if !(group.is_empty() || group == "core") || kind != "Secret" {
            return Err((
                reasons::INVALID_CERTIFICATE_REF,
                format!(
                    "certificateRef {}: kind {kind:?} in group {group:?} is not supported; use a core Secret",
                    r.name
                ),
            ));
        }
        let ns = r.namespace.as_deref().unwrap_or(gw_ns);
        let from = GroupKind {
            group: GATEWAY_GROUP,
            kind: from_kind,
        };
        let to = GroupKind {
            group: "",
            kind: "Secret",
        };
        if !self.grants.allows(from, gw_ns, to, ns, &r.name) {
            return Err((
                reasons::REF_NOT_PERMITTED,
                format!(
                    "certificateRef to Secret {ns}/{} is not permitted: no ReferenceGrant in namespace {ns} allows {from_kind}s from {gw_ns}",
                    r.name
                ),
            ));
        }
        Ok(ObjectRef::new(ns, r.name.clone()))
    }

    /// Resolves and checks one certificateRef of a `from_kind` in `gw_ns`.
    pub(crate) fn resolve(
        &self,
        from_kind: &str,
        gw_ns: &str,
        r: &GatewayListenersTlsCertificateRefs,
    ) -> Result<Certificate, RefProblem> {
        let id = self.permitted(from_kind, gw_ns, r)?;
        let invalid = |m: String| (reasons::INVALID_CERTIFICATE_REF, m);
        let Some(secret) = self.secrets.get(&(id.namespace.clone(), id.name.clone())) else {
            let why = match self.view.find(&id.namespace, &id.name) {
                Err(why) => why,
                Ok(_) => format!("Secret {id} not found"),
            };
            return Err(invalid(why));
        };
        let field = |key: &str| -> Result<String, RefProblem> {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| b.0.clone())
                .or_else(|| {
                    secret
                        .string_data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|s| s.clone().into_bytes())
                })
                .ok_or_else(|| invalid(format!("Secret {id} has no {key}")))?;
            String::from_utf8(bytes).map_err(|_| invalid(format!("Secret {id}: {key} is not PEM")))
        };
        let cert_pem = field(TLS_CERT_KEY)?;
        let key_pem = field(TLS_PRIVATE_KEY_KEY)?;
        certified_key(&cert_pem, &key_pem).map_err(|e| invalid(format!("Secret {id}: {e}")))?;
        Ok(Certificate {
            secret: id,
            cert_pem,
            key_pem,
        })
    }
}
