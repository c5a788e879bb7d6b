//! Turns compile's status report into Gateway API status and writes it, only where it changed.
//!
//! GatewayClass, Gateway and ListenerSet status belong to us alone and are written by
//! server-side apply with our field manager. A route's (HTTPRoute, GRPCRoute) `status.parents` is an atomic
//! list shared with other controllers, so it is written with a merge patch that keeps their entries, guarded by the
//! object's `resourceVersion` (a conflict just waits for the next round).
//!
//! `lastTransitionTime` is kept from the current condition while its status stays the same, so
//! a recompute that changes nothing writes nothing.

use crate::index::{AuthPolicyObject, Index};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use portico_compile::StatusReport;
use portico_compile::status::{self as compiled, ParentRef};
use portico_crds::GATEWAY_GROUP;
use portico_crds::backend::BackendPolicy;
use portico_crds::cache::{CacheInvalidation, CachePolicy};
use portico_crds::gateway_api::experimental::httproutes::{
    HttpRouteStatus, HttpRouteStatusParents, HttpRouteStatusParentsParentRef,
};
use portico_crds::gateway_api::gatewayclasses::{
    GatewayClass, GatewayClassStatus, GatewayClassStatusSupportedFeatures,
};
use portico_crds::gateway_api::gateways::{
    Gateway, GatewayStatus, GatewayStatusAddresses, GatewayStatusListeners,
    GatewayStatusListenersSupportedKinds,
};
use portico_crds::gateway_api::listenersets::{
    ListenerSet, ListenerSetStatus, ListenerSetStatusListeners,
    ListenerSetStatusListenersSupportedKinds,
};
use portico_crds::policy::{AncestorRef, PolicyAncestorStatus, PolicyCondition, PolicyStatus};
use portico_crds::ratelimit::RateLimitPolicy;
use portico_model::{ObjectRef, PolicyKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::BTreeMap;

/// A namespaced object whose status this writer patches. (Only decoded, never encoded: the
/// patch carries just the status, so a type that can read an object it cannot write back,
/// such as [`AuthPolicyObject`], qualifies.)
trait Namespaced:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType: Default>
    + DeserializeOwned
    + Clone
    + std::fmt::Debug
{
}

impl<K> Namespaced for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType: Default>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug
{
}

/// The Gateway API features Portico implements, as GatewayClass `status.supportedFeatures`
/// reports them (names from the conformance suite's feature list). A feature is listed only
/// once every conformance test of it passes (`make conformance`, docs/conformance/): the
/// suite takes this list as the features to test.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "BackendTLSPolicy",
    "BackendTLSPolicySANValidation",
    "Gateway",
    "GatewayAddressEmpty",
    "GatewayBackendClientCertificate",
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "GatewayHTTPListenerIsolation",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "GatewayInfrastructure",
    "GatewayPort8080",
    "GatewayStaticAddresses",
    "GRPCRoute",
    "GRPCRouteNamedRouteRule",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout",
    "HTTPRouteCORS",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteRetry",
    // No conformance test of their own in v1.6.3: dataplane/tests/proxy.rs
    // `a_route_retries_broken_exchanges_and_backend_timeouts` covers them.
    "HTTPRouteRetryBackendTimeout",
    "HTTPRouteRetryConnectionError",
    "HTTPRouteSchemeRedirect",
    "ListenerSet",
    "ReferenceGrant",
    "TCPRoute",
    "TLSRoute",
    "TLSRouteModeMixed",
    "TLSRouteModeTerminate",
    "UDPRoute",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status of {kind} {name}: {source}")]
    Write {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Converts compile's conditions, keeping `lastTransitionTime` where the status is unchanged.
fn conditions(
    desired: &[compiled::Condition],
    current: &[Condition],
    now: &Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let since = current
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == d.status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: d.type_.clone(),
                status: d.status.clone(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: d.observed_generation,
                last_transition_time: since,
            }
        })
        .collect()
}

fn now() -> Time {
    // Whole seconds: that is what the API server stores, so a round trip compares equal.
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

pub fn class_status(
    report: &compiled::GatewayClassStatus,
    current: Option<&GatewayClassStatus>,
    now: &Time,
) -> GatewayClassStatus {
    let existing = current
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    GatewayClassStatus {
        conditions: Some(conditions(&report.conditions, existing, now)),
        supported_features: Some(
            SUPPORTED_FEATURES
                .iter()
                .map(|f| GatewayClassStatusSupportedFeatures {
                    name: f.to_string(),
                })
                .collect(),
        ),
    }
}

pub fn gateway_status(gw: &Gateway, report: &compiled::GatewayStatus, now: &Time) -> GatewayStatus {
    let current = gw.status.as_ref();
    let existing = current
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let addresses: Vec<GatewayStatusAddresses> = report
        .addresses
        .iter()
        .map(|a| GatewayStatusAddresses {
            r#type: Some(a.type_.clone()),
            value: a.value.clone(),
        })
        .collect();
    let listeners = listener_statuses(
        &report.listeners,
        |name| {
            current
                .and_then(|s| s.listeners.as_ref())
                .and_then(|ls| ls.iter().find(|x| x.name == name))
                .map(|x| x.conditions.as_slice())
        },
        now,
    );
    GatewayStatus {
        addresses: (!addresses.is_empty()).then_some(addresses),
        // Unset when none: nil reads as 0, and a Gateway CRD older than ListenerSets prunes
        // the field (a 0 written there would never read back, and be rewritten forever).
        attached_listener_sets: (report.attached_listener_sets > 0)
            .then_some(report.attached_listener_sets),
        conditions: Some(conditions(&report.conditions, existing, now)),
        listeners: Some(listeners),
    }
}

/// Each listener's status as compile reported it, keeping `lastTransitionTime` from the
/// conditions `current` gives for a listener name.
fn listener_statuses<'a>(
    report: &[compiled::ListenerStatus],
    current: impl Fn(&str) -> Option<&'a [Condition]>,
    now: &Time,
) -> Vec<GatewayStatusListeners> {
    report
        .iter()
        .map(|l| GatewayStatusListeners {
            name: l.name.clone(),
            attached_routes: l.attached_routes,
            conditions: conditions(&l.conditions, current(&l.name).unwrap_or_default(), now),
            supported_kinds: Some(
                l.supported_kinds
                    .iter()
                    .map(|k| GatewayStatusListenersSupportedKinds {
                        group: Some(GATEWAY_GROUP.into()),
                        kind: k.clone(),
                    })
                    .collect(),
            ),
        })
        .collect()
}

/// A ListenerSet's status: its conditions and its listeners', as compile reported them.
pub fn listener_set_status(
    ls: &ListenerSet,
    report: &compiled::ListenerSetStatus,
    now: &Time,
) -> ListenerSetStatus {
    let current = ls.status.as_ref();
    let existing = current
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let current_of = |name: &str| {
        current
            .and_then(|s| s.listeners.as_ref())
            .and_then(|ls| ls.iter().find(|x| x.name == name))
            .map(|x| x.conditions.as_slice())
    };
    // The same schema as a Gateway's listeners, in another generated type.
    let listeners = listener_statuses(&report.listeners, current_of, now)
        .into_iter()
        .map(|l| ListenerSetStatusListeners {
            name: l.name,
            attached_routes: l.attached_routes,
            conditions: l.conditions,
            supported_kinds: l.supported_kinds.map(|kinds| {
                kinds
                    .into_iter()
                    .map(|k| ListenerSetStatusListenersSupportedKinds {
                        group: k.group,
                        kind: k.kind,
                    })
                    .collect()
            }),
        })
        .collect();
    ListenerSetStatus {
        conditions: Some(conditions(&report.conditions, existing, now)),
        listeners: Some(listeners),
    }
}

/// Our parent entries (from compile) plus every other controller's, in a stable order. Route
/// kinds share the status schema, so GRPCRoutes go through the HTTPRoute type.
pub fn route_status(
    current: &HttpRouteStatus,
    ours: &[compiled::RouteParentStatus],
    controller: &str,
    now: &Time,
) -> HttpRouteStatus {
    let current: &[HttpRouteStatusParents] = &current.parents;
    let mut parents: Vec<HttpRouteStatusParents> = current
        .iter()
        .filter(|p| p.controller_name != controller)
        .cloned()
        .collect();
    for p in ours {
        let existing = current
            .iter()
            .find(|c| c.controller_name == controller && same_parent(&c.parent_ref, &p.parent_ref))
            .map(|c| c.conditions.as_slice())
            .unwrap_or_default();
        parents.push(HttpRouteStatusParents {
            conditions: conditions(&p.conditions, existing, now),
            controller_name: controller.to_string(),
            parent_ref: HttpRouteStatusParentsParentRef {
                group: Some(GATEWAY_GROUP.into()),
                kind: Some(p.parent_ref.kind.clone()),
                name: p.parent_ref.name.clone(),
                namespace: Some(p.parent_ref.namespace.clone()),
                port: p.parent_ref.port,
                section_name: p.parent_ref.section_name.clone(),
            },
        });
    }
    HttpRouteStatus { parents }
}

fn same_parent(a: &HttpRouteStatusParentsParentRef, b: &ParentRef) -> bool {
    a.kind.as_deref().unwrap_or("Gateway") == b.kind
        && a.name == b.name
        && a.namespace.as_deref() == Some(b.namespace.as_str())
        && a.section_name == b.section_name
        && a.port == b.port
}

/// Writes status for every object compile reported on, where it differs from the cluster's.
pub struct StatusWriter {
    client: Client,
    controller: String,
    params: PatchParams,
    /// A shared status list changed under a write (409): the write is tried again, since
    /// the change that caused it (another controller's status) may wake nothing here.
    conflicted: std::sync::atomic::AtomicBool,
}

impl StatusWriter {
    pub fn new(client: Client, controller: &str) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            params: PatchParams::apply(controller).force(),
            conflicted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Writes the latest report handed over on `reports` whenever this replica leads (the
    /// channel holds one report: a newer one replaces an unwritten older one, so the queue is
    /// bounded and the compile loop never waits for the API server). A failed write is
    /// retried after a pause, with whatever report is latest by then.
    pub async fn run(
        self,
        index: Index,
        mut reports: tokio::sync::watch::Receiver<Option<StatusReport>>,
        mut leading: tokio::sync::watch::Receiver<bool>,
        counters: std::sync::Arc<crate::admin::Counters>,
    ) {
        loop {
            tokio::select! {
                r = reports.changed() => if r.is_err() { return },
                r = leading.changed() => if r.is_err() { return },
            }
            if !*leading.borrow_and_update() {
                continue;
            }
            let Some(report) = reports.borrow_and_update().clone() else {
                continue;
            };
            let result = self.write(&report, &index).await;
            if self
                .conflicted
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                // After a pause (with jitter: the other writer may be retrying too), once the
                // watch has brought the other writer's version.
                let pause = std::time::Duration::from_millis(100 + fastrand::u64(..200));
                tokio::time::sleep(pause).await;
                reports.mark_changed();
            }
            match result {
                Ok(0) => {}
                Ok(n) => tracing::info!(objects = n, "status written"),
                Err(e) => {
                    counters
                        .status_write_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %e, "status write failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    reports.mark_changed();
                }
            }
        }
    }

    /// Returns the number of objects written.
    pub async fn write(&self, report: &StatusReport, index: &Index) -> Result<usize> {
        let now = now();
        let mut written = 0;
        for class in index.classes.state() {
            let name = class.name_any();
            let Some(r) = report.gateway_classes.get(&name) else {
                continue;
            };
            let desired = class_status(r, class.status.as_ref(), &now);
            if class.status.as_ref() != Some(&desired) {
                let api: Api<GatewayClass> = Api::all(self.client.clone());
                let patch = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "status": desired});
                api.patch_status(&name, &self.params, &Patch::Apply(&patch))
                    .await
                    .map_err(|source| Error::Write {
                        kind: "GatewayClass",
                        name: name.clone(),
                        source,
                    })?;
                written += 1;
            }
        }
        for gw in index.gateways.state() {
            let id = ObjectRef::new(gw.namespace().unwrap_or_default(), gw.name_any());
            let Some(r) = report.gateways.get(&id) else {
                continue;
            };
            let desired = gateway_status(&gw, r, &now);
            if gw.status.as_ref() != Some(&desired) {
                let api: Api<Gateway> = Api::namespaced(self.client.clone(), &id.namespace);
                let patch = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "status": desired});
                api.patch_status(&id.name, &self.params, &Patch::Apply(&patch))
                    .await
                    .map_err(|source| Error::Write {
                        kind: "Gateway",
                        name: id.to_string(),
                        source,
                    })?;
                written += 1;
            }
        }
        for ls in index.listener_sets.state() {
            let id = ObjectRef::new(ls.namespace().unwrap_or_default(), ls.name_any());
            let status = match report.listener_sets.get(&id) {
                Some(r) => {
                    let desired = listener_set_status(&ls, r, &now);
                    (ls.status.as_ref() != Some(&desired)).then(|| json!(desired))
                }
                // No longer on a Gateway of ours (its parentRef moved, its Gateway went or
                // left our class): what we wrote is withdrawn, so it does not go on saying
                // Accepted. (An empty apply releases our fields, and nobody else has them.)
                None => self.wrote_status(&*ls).then(|| json!({})),
            };
            if let Some(status) = status {
                let api: Api<ListenerSet> = Api::namespaced(self.client.clone(), &id.namespace);
                let patch = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ListenerSet", "status": status});
                api.patch_status(&id.name, &self.params, &Patch::Apply(&patch))
                    .await
                    .map_err(|source| Error::Write {
                        kind: "ListenerSet",
                        name: id.to_string(),
                        source,
                    })?;
                written += 1;
            }
        }
        for route in index.routes.state() {
            written += self
                .write_route(
                    "HTTPRoute",
                    &*route,
                    route.status.clone().unwrap_or_default(),
                    &report.http_routes,
                    &now,
                )
                .await?;
        }
        for route in index.grpc_routes.state() {
            written += self
                .write_route(
                    "GRPCRoute",
                    &*route,
                    as_http_route_status(route.status.as_ref()),
                    &report.grpc_routes,
                    &now,
                )
                .await?;
        }
        for route in index.tcp_routes.state() {
            written += self
                .write_route(
                    "TCPRoute",
                    &*route,
                    as_http_route_status(route.status.as_ref()),
                    &report.tcp_routes,
                    &now,
                )
                .await?;
        }
        for route in index.tls_routes.state() {
            written += self
                .write_route(
                    "TLSRoute",
                    &*route,
                    as_http_route_status(route.status.as_ref()),
                    &report.tls_routes,
                    &now,
                )
                .await?;
        }
        for route in index.udp_routes.state() {
            written += self
                .write_route(
                    "UDPRoute",
                    &*route,
                    as_http_route_status(route.status.as_ref()),
                    &report.udp_routes,
                    &now,
                )
                .await?;
        }
        for kind in PolicyKind::ALL {
            // The one place that pairs each kind with its store (and so its Rust type).
            written += match kind {
                PolicyKind::Auth => {
                    // Unreadable ones too: their status says why their targets refuse.
                    let status = |p: &AuthPolicyObject| p.status();
                    self.write_policies(kind, &index.auth_policies, status, report, &now)
                        .await?
                }
                PolicyKind::RateLimit => {
                    let status = |p: &RateLimitPolicy| p.status.clone();
                    self.write_policies(kind, &index.rate_limit_policies, status, report, &now)
                        .await?
                }
                PolicyKind::Cache => {
                    let status = |p: &CachePolicy| p.status.clone();
                    self.write_policies(kind, &index.cache_policies, status, report, &now)
                        .await?
                }
                PolicyKind::Invalidation => {
                    let status = |p: &CacheInvalidation| p.status.clone();
                    self.write_policies(kind, &index.cache_invalidations, status, report, &now)
                        .await?
                }
                PolicyKind::Backend => {
                    let status = |p: &BackendPolicy| p.status.clone();
                    self.write_policies(kind, &index.backend_policies, status, report, &now)
                        .await?
                }
            };
        }
        // BackendTLSPolicy's status has the same shape as our policies': ancestors, each
        // with its controller and conditions. Unreadable ones too: their status says why
        // their Services' requests are refused.
        for policy in index.backend_tls_policies.state() {
            let id = ObjectRef::new(policy.namespace().unwrap_or_default(), policy.name_any());
            let current: PolicyStatus = policy.status().unwrap_or_default();
            let ours = report
                .backend_tls_policies
                .get(&id)
                .map(|s| s.ancestors.as_slice())
                .unwrap_or_default();
            let had_ours = current
                .ancestors
                .iter()
                .any(|a| a.controller_name == self.controller);
            if ours.is_empty() && !had_ours {
                continue;
            }
            let mut desired = policy_status(&current, ours, &self.controller, &now);
            // The Gateway API's schema holds at most 16 ancestors (other controllers' first).
            desired.ancestors.truncate(MAX_ANCESTORS);
            if current != desired {
                written += self
                    .merge_status("BackendTLSPolicy", &*policy, &desired)
                    .await?;
            }
        }
        Ok(written)
    }

    /// Whether this controller's field manager holds the conditions of `object`'s status.
    fn wrote_status<K: Resource>(&self, object: &K) -> bool {
        object.meta().managed_fields.iter().flatten().any(|f| {
            f.manager.as_deref() == Some(self.controller.as_str())
                && f.subresource.as_deref() == Some("status")
                && f.fields_v1
                    .as_ref()
                    .and_then(|v| v.0.get("f:status")?.get("f:conditions"))
                    .is_some()
        })
    }

    /// Writes the status of every policy of `kind` in `store` that changed; `status` reads a
    /// policy's current status. Returns how many objects it wrote.
    async fn write_policies<K: Namespaced + Resource<DynamicType = ()>>(
        &self,
        kind: PolicyKind,
        store: &Store<K>,
        status: impl Fn(&K) -> Option<PolicyStatus>,
        report: &StatusReport,
        now: &Time,
    ) -> Result<usize> {
        let mut written = 0;
        for policy in store.state() {
            let current = status(&policy).unwrap_or_default();
            written += self
                .write_policy(kind, &*policy, current, report, now)
                .await?;
        }
        Ok(written)
    }

    /// Writes one policy's ancestor statuses if they changed, keeping the entries of other
    /// controllers (the list is shared, like a route's parents).
    async fn write_policy<K: Namespaced>(
        &self,
        kind: PolicyKind,
        policy: &K,
        current: PolicyStatus,
        report: &StatusReport,
        now: &Time,
    ) -> Result<usize> {
        let id = ObjectRef::new(policy.namespace().unwrap_or_default(), policy.name_any());
        let ours = report
            .policy(kind, &id)
            .map(|s| s.ancestors.as_slice())
            .unwrap_or_default();
        let desired = policy_status(&current, ours, &self.controller, now);
        if current == desired {
            return Ok(0);
        }
        self.merge_status(kind.as_str(), policy, &desired).await
    }

    /// Writes `status` of an object whose status list is shared with other controllers: a
    /// merge patch guarded by the object's `resourceVersion` (a conflict just waits for the
    /// next round). Returns how many objects it wrote.
    async fn merge_status<K: Namespaced>(
        &self,
        kind: &'static str,
        object: &K,
        status: &impl Serialize,
    ) -> Result<usize> {
        let id = ObjectRef::new(object.namespace().unwrap_or_default(), object.name_any());
        let api: Api<K> = Api::namespaced(self.client.clone(), &id.namespace);
        let patch = json!({
            "metadata": {"resourceVersion": object.resource_version()},
            "status": status,
        });
        match api
            .patch_status(&id.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(1),
            // Someone else wrote first; the watch brings their version and we retry.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.conflicted
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(0)
            }
            // The API server refuses this status (its schema's limits): one object's status
            // must not hold up every object written after it, round after round.
            Err(kube::Error::Api(s)) if s.code == 422 => {
                tracing::warn!(kind, name = %id, error = %s.message, "status refused by the API server; skipped");
                Ok(0)
            }
            Err(source) => Err(Error::Write {
                kind,
                name: id.to_string(),
                source,
            }),
        }
    }

    /// Writes one route's parent statuses if they differ from `current` (the route's status as
    /// the HTTPRoute type reads it); returns how many objects it wrote.
    async fn write_route<K: Namespaced>(
        &self,
        kind: &'static str,
        route: &K,
        current: HttpRouteStatus,
        report: &BTreeMap<ObjectRef, compiled::RouteStatus>,
        now: &Time,
    ) -> Result<usize> {
        let id = ObjectRef::new(route.namespace().unwrap_or_default(), route.name_any());
        let ours = report
            .get(&id)
            .map(|s| s.parents.as_slice())
            .unwrap_or_default();
        let had_ours = current
            .parents
            .iter()
            .any(|p| p.controller_name == self.controller);
        if ours.is_empty() && !had_ours {
            return Ok(0);
        }
        let desired = route_status(&current, ours, &self.controller, now);
        if current == desired {
            return Ok(0);
        }
        self.merge_status(kind, route, &desired).await
    }
}

/// Another route kind's status read as HTTPRoute's: GRPCRoute, TCPRoute, TLSRoute and
/// UDPRoute statuses are their parents, in HTTPRoute's schema.
fn as_http_route_status<S: Serialize>(status: Option<&S>) -> HttpRouteStatus {
    status
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// Ancestors a Gateway API policy's status may list (`maxItems`).
const MAX_ANCESTORS: usize = 16;

/// A policy's status with our ancestors replaced by `ours` and other controllers' kept.
pub fn policy_status(
    current: &PolicyStatus,
    ours: &[compiled::PolicyAncestorStatus],
    controller: &str,
    now: &Time,
) -> PolicyStatus {
    let stamp = serde_json::to_value(now)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string));
    let mut ancestors: Vec<PolicyAncestorStatus> = current
        .ancestors
        .iter()
        .filter(|a| a.controller_name != controller)
        .cloned()
        .collect();
    for a in ours {
        let ancestor_ref = AncestorRef {
            group: a.ancestor_ref.group.clone(),
            kind: a.ancestor_ref.kind.clone(),
            namespace: a.ancestor_ref.namespace.clone(),
            name: a.ancestor_ref.name.clone(),
            section_name: a.ancestor_ref.section_name.clone(),
            port: None,
        };
        let existing = current
            .ancestors
            .iter()
            .find(|c| c.controller_name == controller && c.ancestor_ref == ancestor_ref)
            .map(|c| c.conditions.as_slice())
            .unwrap_or_default();
        let conditions = a
            .conditions
            .iter()
            .map(|d| PolicyCondition {
                type_: d.type_.clone(),
                status: d.status.clone(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: d.observed_generation,
                last_transition_time: existing
                    .iter()
                    .find(|c| c.type_ == d.type_ && c.status == d.status)
                    .and_then(|c| c.last_transition_time.clone())
                    .or_else(|| stamp.clone()),
            })
            .collect();
        ancestors.push(PolicyAncestorStatus {
            ancestor_ref,
            controller_name: controller.to_string(),
            conditions,
        });
    }
    PolicyStatus { ancestors }
}
