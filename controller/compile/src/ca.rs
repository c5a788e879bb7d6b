//! CA certificates named by reference (a ConfigMap's or Secret's `ca.crt`): what
//! BackendTLSPolicies trust for backends and what a Gateway's `spec.tls.frontend` trusts for
//! clients. Read and checked in one place, so both say the same about a bad one.

use crate::inputs::Secrets;
use crate::refs::namespace_of;
use portico_crds::k8s_openapi::api::core::v1::ConfigMap;

/// The key of a ConfigMap or Secret that holds the PEM CA certificates.
pub(crate) const CA_KEY: &str = "ca.crt";

/// What CA certificates may be read from.
#[derive(Clone, Copy)]
pub(crate) struct CaSources<'a> {
    pub(crate) config_maps: &'a [ConfigMap],
    pub(crate) secrets: Secrets<'a>,
}

/// Why a reference gives no CA certificate.
pub(crate) enum CaProblem {
    /// Neither a ConfigMap nor a Secret (the message names what it is).
    Kind(String),
    /// Missing, without `ca.crt`, or not PEM certificates.
    Invalid(String),
}

impl CaSources<'_> {
    /// The checked PEM of `kind` `ns/name` (group `""`), ending in a newline.
    pub(crate) fn read(
        &self,
        group: &str,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<String, CaProblem> {
        match (group, kind) {
            ("", "ConfigMap") => self.config_map(ns, name).map_err(CaProblem::Invalid),
            ("", "Secret") => self.secret(ns, name).map_err(CaProblem::Invalid),
            (group, kind) => {
                let shown = if group.is_empty() {
                    kind.to_string()
                } else {
                    format!("{group}/{kind}")
                };
                Err(CaProblem::Kind(format!(
                    "caCertificateRefs {name:?}: kind {shown} is not supported; use a ConfigMap or a Secret"
                )))
            }
        }
    }

    fn config_map(&self, ns: &str, name: &str) -> Result<String, String> {
        let cm = self
            .config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name) && namespace_of(&c.metadata) == ns)
            .ok_or_else(|| format!("ConfigMap {ns}/{name} not found"))?;
        let pem = cm
            .data
            .as_ref()
            .and_then(|d| d.get(CA_KEY))
            .ok_or_else(|| format!("ConfigMap {ns}/{name} has no {CA_KEY}"))?;
        checked(pem, &format!("ConfigMap {ns}/{name}"))
    }

    fn secret(&self, ns: &str, name: &str) -> Result<String, String> {
        let secret = self.secrets.find(ns, name)?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(CA_KEY))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(CA_KEY))
                    .map(|s| s.clone().into_bytes())
            })
            .ok_or_else(|| format!("Secret {ns}/{name} has no {CA_KEY}"))?;
        let pem = String::from_utf8(bytes)
            .map_err(|_| format!("Secret {ns}/{name}: {CA_KEY} is not PEM text"))?;
        checked(&pem, &format!("Secret {ns}/{name}"))
    }
}

fn checked(pem: &str, what: &str) -> Result<String, String> {
    portico_model::tls::ca_certificates(pem).map_err(|e| format!("{what}: {CA_KEY} {e}"))?;
    let mut pem = pem.to_string();
    if !pem.ends_with('\n') {
        pem.push('\n');
    }
    Ok(pem)
}
