//! Reading the YAML a user would `kubectl apply` into [`Inputs`], remembering which file each
//! object came from so that every problem can name its file.
//!
//! Text in, objects out: the caller reads the files. Multi-document files and `kind: List`
//! are accepted; any other kind is an error naming the document.
//!
//! Decoding is strict, as `kubectl apply` validates fields: a field the schema does not have
//! (`backendRef:` for `backendRefs:`) is an error naming its path, not silently dropped
//! (which used to leave a route answering 500 while `check` passed). [`UnknownFields::Warn`]
//! downgrades that to a warning. A value of the wrong type names its path, line and column.
//!
//! An AuthPolicy that does not decode (a value or field of a newer release) fails the load
//! like any other object, which is already fail-closed: a running gateway keeps its last good
//! configuration, where the policy's previous version still protects its targets, and a
//! gateway starting on it does not start. Under [`UnknownFields::Warn`] the unknown spec fields
//! of an AuthPolicy or a BackendTLSPolicy are not ignored but load it as unreadable
//! ([`crate::unreadable`]): its targets' requests answer 500, as the controller does with it.

use crate::backend::annotation_errors;
use crate::inputs::Inputs;
use crate::refs::object_ref;
use crate::unreadable::{ProtectivePolicy, UnreadablePolicy, field_path, with_unknown_fields};
use portico_crds::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portico_model::ObjectRef;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;

/// A document that could not be read. It makes the whole load fail, so that a half-read
/// directory never replaces a good configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub file: String,
    /// `Kind namespace/name` when the document got far enough to say, else `document N`;
    /// empty for a file that could not be read at all.
    pub object: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.object.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.object, self.message)
        }
    }
}

/// Where each object came from: `(kind, namespace/name)` → file.
#[derive(Clone, Debug, Default)]
pub struct Origins(BTreeMap<(String, ObjectRef), String>);

impl Origins {
    pub fn file_of(&self, kind: &str, id: &ObjectRef) -> Option<&str> {
        self.0
            .get(&(kind.to_string(), id.clone()))
            .map(String::as_str)
    }

    /// The file of the object a status problem names (`Kind ns/name ...`).
    pub fn file_of_problem(&self, object: &str) -> Option<&str> {
        let mut words = object.split_whitespace();
        let kind = words.next()?;
        let id = words.next()?;
        let id = match id.split_once('/') {
            Some((ns, name)) => ObjectRef::new(ns, name),
            // Cluster-scoped kinds are remembered with an empty namespace.
            None => ObjectRef::new("", id),
        };
        self.file_of(kind, &id)
    }
}

/// What a field the schema does not know is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownFields {
    /// An error: the configuration is not loaded (the default).
    #[default]
    Error,
    /// A warning, and the field is ignored; in an AuthPolicy's spec, the policy loads as
    /// unreadable and refuses its targets' requests instead (ignoring the field could enforce
    /// less than it says).
    Warn,
}

/// Accumulates objects from any number of files.
#[derive(Debug, Default)]
pub struct ManifestSet {
    pub inputs: Inputs,
    pub origins: Origins,
    pub errors: Vec<ManifestError>,
    /// Unknown fields, under [`UnknownFields::Warn`].
    pub warnings: Vec<ManifestError>,
    pub unknown_fields: UnknownFields,
}

impl ManifestSet {
    /// Parses one file's text. Problems are collected in `errors`.
    pub fn add_file(&mut self, file: &str, text: &str) {
        use serde::Deserialize;
        // A second reading of the same documents, to decode each into its type straight
        // from the text: errors then carry their line and column.
        let mut typed = serde_yaml::Deserializer::from_str(text);
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let label = format!("document {}", i + 1);
            let source = typed.next();
            match serde_yaml::Value::deserialize(doc) {
                Ok(serde_yaml::Value::Null) => {}
                Ok(value) => self.add_value(file, &label, value, source),
                Err(e) => {
                    self.error(file, &label, format!("malformed YAML: {e}"));
                    // The YAML stream cannot be resumed after a syntax error.
                    return;
                }
            }
        }
    }

    fn error(&mut self, file: &str, object: &str, message: String) {
        self.errors.push(ManifestError {
            file: file.to_string(),
            object: object.to_string(),
            message,
        });
    }

    fn add_value(
        &mut self,
        file: &str,
        label: &str,
        value: serde_yaml::Value,
        source: Option<serde_yaml::Deserializer<'_>>,
    ) {
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let kind = value
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let object = if name.is_empty() {
            label.to_string()
        } else {
            format!("{kind} {name}")
        };
        if kind.is_empty() || api_version.is_empty() {
            return self.error(file, &object, "apiVersion and kind are required".into());
        }
        if name.is_empty() && kind != "List" {
            return self.error(file, &object, format!("{kind} has no metadata.name"));
        }
        if (api_version.as_str(), kind.as_str()) == ("v1", "List") {
            match value.get("items").and_then(|v| v.as_sequence()).cloned() {
                Some(items) => {
                    for (n, item) in items.into_iter().enumerate() {
                        self.add_value(file, &format!("{label} item {}", n + 1), item, None);
                    }
                }
                None => self.error(file, &object, "a List needs items".into()),
            }
            return;
        }
        let i = &mut self.inputs;
        let mut ignored: Vec<String> = Vec::new();
        // An AuthPolicy or BackendTLSPolicy loaded as unreadable for its unknown fields (see
        // their arms below).
        let mut refused_policy = false;
        let mut from = Source {
            value,
            text: source,
            ignored: &mut ignored,
        };
        let added = match (api_version.as_str(), kind.as_str()) {
            (
                "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1",
                "GatewayClass",
            ) => push(&mut i.gateway_classes, &mut from, |o| &o.metadata, true),
            ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1", "Gateway") => {
                push(&mut i.gateways, &mut from, |o| &o.metadata, false)
            }
            ("gateway.networking.k8s.io/v1", "ListenerSet") => {
                push(&mut i.listener_sets, &mut from, |o| &o.metadata, false)
            }
            ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1", "HTTPRoute") => {
                push(&mut i.http_routes, &mut from, |o| &o.metadata, false)
            }
            ("gateway.networking.k8s.io/v1", "GRPCRoute") => {
                push(&mut i.grpc_routes, &mut from, |o| &o.metadata, false)
            }
            ("gateway.networking.k8s.io/v1", "TCPRoute") => {
                push(&mut i.tcp_routes, &mut from, |o| &o.metadata, false)
            }
            ("gateway.networking.k8s.io/v1", "TLSRoute") => {
                push(&mut i.tls_routes, &mut from, |o| &o.metadata, false)
            }
            ("gateway.networking.k8s.io/v1", "UDPRoute") => {
                push(&mut i.udp_routes, &mut from, |o| &o.metadata, false)
            }
            ("gateway.networking.k8s.io/v1", "BackendTLSPolicy") => {
                let added = push(
                    &mut i.backend_tls_policies,
                    &mut from,
                    |o| &o.metadata,
                    false,
                );
                refused_policy = added.is_ok()
                    && self.unknown_fields == UnknownFields::Warn
                    && read_in_part(
                        &mut i.backend_tls_policies,
                        &mut i.unreadable_backend_tls_policies,
                        from.ignored,
                    );
                added
            }
            ("v1", "ConfigMap") => push(&mut i.config_maps, &mut from, |o| &o.metadata, false),
            ("v1", "Secret") => {
                // serde's message may quote the value it choked on, which could be key
                // material: say where to look, not what is there.
                push(&mut i.secrets, &mut from, |o| &o.metadata, false).map_err(|_| {
                    "invalid Secret: data values must be base64 and stringData values text \
                     (details withheld, they may contain key material)"
                        .to_string()
                })
            }
            (
                "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1",
                "ReferenceGrant",
            ) => push(&mut i.reference_grants, &mut from, |o| &o.metadata, false),
            ("v1", "Service") => {
                push(&mut i.services, &mut from, |o| &o.metadata, false).and_then(|id| {
                    let errors = i.services.last().map(annotation_errors).unwrap_or_default();
                    if errors.is_empty() {
                        Ok(id)
                    } else {
                        Err(errors.join("; "))
                    }
                })
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                push(&mut i.endpoint_slices, &mut from, |o| &o.metadata, false)
            }
            ("v1", "Namespace") => push(&mut i.namespaces, &mut from, |o| &o.metadata, true),
            ("portico.dev/v1alpha1", "AuthPolicy") => {
                let added = push(&mut i.auth_policies, &mut from, |o| &o.metadata, false);
                refused_policy = added.is_ok()
                    && self.unknown_fields == UnknownFields::Warn
                    && read_in_part(
                        &mut i.auth_policies,
                        &mut i.unreadable_auth_policies,
                        from.ignored,
                    );
                added
            }
            ("portico.dev/v1alpha1", "RateLimitPolicy") => push(
                &mut i.rate_limit_policies,
                &mut from,
                |o| &o.metadata,
                false,
            ),
            ("portico.dev/v1alpha1", "CachePolicy") => {
                push(&mut i.cache_policies, &mut from, |o| &o.metadata, false)
            }
            ("portico.dev/v1alpha1", "CacheInvalidation") => push(
                &mut i.cache_invalidations,
                &mut from,
                |o| &o.metadata,
                false,
            ),
            ("portico.dev/v1alpha1", "BackendPolicy") => {
                push(&mut i.backend_policies, &mut from, |o| &o.metadata, false)
            }
            ("portico.dev/v1alpha1", "GatewayConfig") => {
                push(&mut i.gateway_configs, &mut from, |o| &o.metadata, false)
            }
            _ => Err(format!(
                "unsupported kind {kind} ({api_version}); standalone mode reads GatewayClass, Gateway, ListenerSet, \
                 HTTPRoute, GRPCRoute, TCPRoute, TLSRoute, UDPRoute, ReferenceGrant, BackendTLSPolicy (gateway.networking.k8s.io/v1), Service, Secret, ConfigMap, Namespace (v1) \
                 EndpointSlice (discovery.k8s.io/v1), AuthPolicy, RateLimitPolicy, CachePolicy, CacheInvalidation, BackendPolicy and GatewayConfig \
                 (portico.dev/v1alpha1)"
            )),
        };
        let unknown = ignored.iter().map(|path| format!("unknown field {path}"));
        match self.unknown_fields {
            UnknownFields::Error => {
                for m in unknown.collect::<Vec<_>>() {
                    self.error(file, &object, m);
                }
            }
            UnknownFields::Warn => {
                let effect = if refused_policy {
                    "the policy cannot be read whole: its targets are refused"
                } else {
                    "ignored"
                };
                for m in unknown.collect::<Vec<_>>() {
                    self.warnings.push(ManifestError {
                        file: file.to_string(),
                        object: object.clone(),
                        message: format!("{m} ({effect})"),
                    });
                }
            }
        }
        match added {
            Ok(id) => {
                if let Some(first) = self
                    .origins
                    .0
                    .insert((kind.clone(), id.clone()), file.to_string())
                {
                    let shown = if id.namespace.is_empty() {
                        id.name.clone()
                    } else {
                        id.to_string()
                    };
                    self.error(
                        file,
                        &object,
                        format!("{kind} {shown} is also defined in {first}"),
                    );
                }
            }
            Err(message) => self.error(file, &object, message),
        }
    }
}

/// One document to decode: its text when it has its own (errors then have a line and
/// column), else its value (an item of a List); the paths of fields the type does not have
/// go to `ignored`.
struct Source<'d, 'i> {
    value: serde_yaml::Value,
    text: Option<serde_yaml::Deserializer<'d>>,
    ignored: &'i mut Vec<String>,
}

impl Source<'_, '_> {
    fn decode<T: DeserializeOwned>(&mut self) -> Result<T, String> {
        let ignored = &mut *self.ignored;
        let record = |path: serde_ignored::Path<'_>| {
            let path = field_path(&path);
            // The type meta is read before decoding; some types keep it, some do not.
            if path != "apiVersion" && path != "kind" {
                ignored.push(path);
            }
        };
        let result = match self.text.take() {
            Some(text) => serde_ignored::deserialize(text, record),
            None => serde_ignored::deserialize(self.value.clone(), record),
        };
        result.map_err(|e| e.to_string())
    }
}

/// A policy that protects something, just pushed onto `readable`, whose spec has fields this
/// version does not know (among `ignored`): enforced without them it would protect less than
/// it says, so it moves to `unreadable` and refuses its targets' requests, as the controller
/// does with it. Whether it moved.
fn read_in_part<P: ProtectivePolicy>(
    readable: &mut Vec<P>,
    unreadable: &mut Vec<UnreadablePolicy>,
    ignored: &[String],
) -> bool {
    let unknown: Vec<String> = ignored
        .iter()
        .filter(|p| p.starts_with("spec."))
        .cloned()
        .collect();
    if unknown.is_empty() {
        return false;
    }
    let Some(policy) = readable.pop() else {
        return false;
    };
    unreadable.push(with_unknown_fields(policy, &unknown));
    true
}

/// Deserialises one object into its typed list and returns its identity (namespace empty for
/// cluster-scoped kinds).
fn push<T: DeserializeOwned>(
    list: &mut Vec<T>,
    from: &mut Source<'_, '_>,
    meta: impl Fn(&T) -> &ObjectMeta,
    cluster_scoped: bool,
) -> Result<ObjectRef, String> {
    let object: T = from.decode().map_err(|e| format!("invalid object: {e}"))?;
    let m = meta(&object);
    let id = if cluster_scoped {
        ObjectRef::new("", m.name.clone().unwrap_or_default())
    } else {
        object_ref(m)
    };
    list.push(object);
    Ok(id)
}
