//! Compile: Gateway API objects in, one [`Snapshot`] per Gateway and the status every object
//! should carry out.
//!
//! A pure, deterministic function: no I/O, no clock, no randomness. The controller calls it
//! with the contents of its indexes; standalone mode calls it with the objects read from YAML.
//! The same inputs, in any order, give byte-identical snapshots.
//!
//! ```text
//!  GatewayClass ◀── Gateway ◀──parentRefs── HTTPRoute ──backendRefs──▶ Service ◀── EndpointSlice
//!                   │  │                     GRPCRoute               ▲
//!                   │  └ listeners ─ allowedRoutes (Namespace labels) │
//!                   └─ certificateRefs ──▶ Secret ◀── ReferenceGrant ─┘
//!   AuthPolicy ──targetRefs──▶ Gateway [listener] | HTTPRoute [rule];  ──▶ Secret
//!   RateLimitPolicy ──targetRefs──▶ (the same)
//! ```
//!
//! Compile resolves those edges in one pass per kind: classes, then Gateways with their
//! listeners and certificates ([`gateway`], [`tls`]), then routes with their attachment, rules
//! and backends ([`route`], [`grpc`], [`backend`]), then the policies that protect them
//! ([`policy`]: [`auth`], [`ratelimit`]).

mod auth;
mod backend;
mod gateway;
mod grants;
mod grpc;
mod hostname;
pub mod incremental;
pub mod manifests;
pub mod parameters;
mod policy;
mod ratelimit;
mod route;
pub mod status;
pub mod tls;
pub mod unserved;

use portico_crds::auth::AuthPolicy;
use portico_crds::gateway_api::{
    gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute,
    httproutes::HttpRoute as HTTPRoute, referencegrants::ReferenceGrant,
};
use portico_crds::gatewayconfig::GatewayConfig;
use portico_crds::k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use portico_crds::k8s_openapi::api::discovery::v1::EndpointSlice;
use portico_crds::ratelimit::RateLimitPolicy;
use portico_model::{ObjectRef, RouteKind, Snapshot};
use route::RouteSource;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

pub use backend::{ENDPOINTS_ANNOTATION, SERVICE_NAME_LABEL, endpoints_from_slices};
pub use portico_crds::CONTROLLER_NAME;
pub use status::StatusReport;

/// Regex patterns in routes are compiled with this size limit (bytes of compiled program), so
/// one route cannot make the dataplane build a huge automaton. The dataplane uses it too.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Everything compile reads. Order does not matter.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub gateway_classes: Vec<GatewayClass>,
    pub gateways: Vec<Gateway>,
    pub http_routes: Vec<HTTPRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
    pub reference_grants: Vec<ReferenceGrant>,
    pub auth_policies: Vec<AuthPolicy>,
    pub rate_limit_policies: Vec<RateLimitPolicy>,
    /// Only their names matter here (a GatewayClass or Gateway naming a missing one is not
    /// accepted); the provisioner reads their specs.
    pub gateway_configs: Vec<GatewayConfig>,
    /// The Redis of `Global` rate limits whose policy names none (`--redis-url`).
    pub redis_url: Option<String>,
    /// The Secrets listeners and policies refer to (others are ignored; the controller
    /// watches only these, see [`referenced_secrets`]).
    pub secrets: Vec<Secret>,
    /// Referenced Secrets the controller was refused (RBAC), with what would let it read
    /// them: their listeners and policies say so instead of "not found".
    pub unreadable_secrets: BTreeMap<ObjectRef, String>,
    /// The namespace of the dataplanes' Services (`--dataplane-namespace`), whose addresses
    /// the Gateways report.
    pub dataplane_namespace: String,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// For `allowedRoutes.namespaces.selector`. A namespace without an object here is taken to
    /// carry only its automatic `kubernetes.io/metadata.name` label.
    pub namespaces: Vec<Namespace>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    /// One per accepted Gateway of ours, with `version` 0 (the publisher stamps it).
    pub snapshots: BTreeMap<ObjectRef, Snapshot>,
    pub status: StatusReport,
}

/// Compiles the inputs for the GatewayClasses whose `controllerName` is `controller_name`.
pub fn compile(inputs: &Inputs, controller_name: &str) -> Output {
    compile_scoped(inputs, controller_name, None)
}

/// Compiles only the Gateways in `scope` (every Gateway when `None`), and the routes that name
/// them. Gateways compile independently of each other, so the output for a Gateway is the same
/// as in a full compile: its snapshot, its status, and its routes' parent statuses for it.
/// GatewayClass status is always complete.
pub fn compile_scoped(
    inputs: &Inputs,
    controller_name: &str,
    scope: Option<&BTreeSet<ObjectRef>>,
) -> Output {
    let in_scope = |gw: &ObjectRef| scope.is_none_or(|s| s.contains(gw));
    let mut status = StatusReport::default();
    let configs: BTreeSet<ObjectRef> = inputs
        .gateway_configs
        .iter()
        .map(|c| object_ref(&c.metadata))
        .collect();
    let classes = gateway::accept_classes(
        &inputs.gateway_classes,
        &configs,
        controller_name,
        &mut status,
    );
    let namespaces = gateway::NamespaceLabels::new(&inputs.namespaces);
    let grants = grants::ReferenceGrants::new(&inputs.reference_grants);
    let secrets = tls::SecretIndex::new(inputs.secret_view(), &grants);
    let scoped_gateways: Vec<Gateway>;
    let gateways_in = match scope {
        None => &inputs.gateways,
        Some(_) => {
            scoped_gateways = inputs
                .gateways
                .iter()
                .filter(|g| in_scope(&object_ref(&g.metadata)))
                .cloned()
                .collect();
            &scoped_gateways
        }
    };
    let params = gateway::Parameters {
        configs: inputs
            .gateway_configs
            .iter()
            .map(|c| (object_ref(&c.metadata), &c.spec))
            .collect(),
        classes: &inputs.gateway_classes,
    };
    let mut gateways = gateway::compile_gateways(gateways_in, &classes, &params, &secrets);
    let backends = backend::BackendIndex::new(inputs);
    let names_scope = |parents: Vec<ObjectRef>| scope.is_none() || parents.iter().any(in_scope);
    let sources: Vec<RouteSource<'_>> = inputs
        .http_routes
        .iter()
        .filter(|r| names_scope(incremental::http_route_parents(r)))
        .map(|r| RouteSource {
            kind: RouteKind::Http,
            route: Cow::Borrowed(r),
            invalid: None,
        })
        .chain(
            inputs
                .grpc_routes
                .iter()
                .filter(|g| names_scope(incremental::grpc_route_parents(g)))
                .map(|g| {
                    let (route, valid) = grpc::as_http_route(g);
                    RouteSource {
                        kind: RouteKind::Grpc,
                        route: Cow::Owned(route),
                        invalid: valid.err(),
                    }
                }),
        )
        .collect();
    let routes = route::compile_routes(&sources, &mut gateways, &namespaces, &backends);
    let targets = policy::Targets::new(inputs, controller_name);
    let policies = auth::resolve(inputs, &targets, &mut status);
    let redis = gateway_redis(inputs, controller_name);
    let limits = ratelimit::resolve(inputs, &targets, &policies, &redis, &mut status);

    let mut snapshots = BTreeMap::new();
    for gw in &gateways {
        let service = inputs.services.iter().find(|s| {
            s.metadata.name.as_deref()
                == Some(dataplane_name(&gw.id.namespace, &gw.id.name).as_str())
                && namespace_of(&s.metadata) == inputs.dataplane_namespace
        });
        status.gateways.insert(gw.id.clone(), gw.status(service));
        if let Some(mut snapshot) = gw.snapshot(&routes.attached) {
            policies.attach(&mut snapshot);
            limits.attach(&mut snapshot);
            snapshots.insert(gw.id.clone(), snapshot);
        }
    }
    for ((kind, id), s) in routes.status {
        match kind {
            RouteKind::Http => status.http_routes.insert(id, s),
            RouteKind::Grpc => status.grpc_routes.insert(id, s),
        };
    }
    Output { snapshots, status }
}

/// The Secrets that the listeners of our Gateways may use (named by a `certificateRef`, in the
/// Gateway's namespace or allowed by a ReferenceGrant) and those AuthPolicies name. The
/// controller watches exactly these, so it never reads Secrets it has no business with.
pub fn referenced_secrets(inputs: &Inputs, controller_name: &str) -> BTreeSet<ObjectRef> {
    let grants = grants::ReferenceGrants::new(&inputs.reference_grants);
    let index = tls::SecretIndex::new(Secrets::default(), &grants);
    let mut out = BTreeSet::new();
    for gw in gateways_of(inputs, controller_name) {
        let ns = namespace_of(&gw.metadata);
        for l in &gw.spec.listeners {
            for r in l
                .tls
                .iter()
                .flat_map(|t| t.certificate_refs.iter().flatten())
            {
                if let Ok(id) = index.permitted(&ns, r) {
                    out.insert(id);
                }
            }
        }
    }
    out.extend(auth::referenced_secrets(inputs));
    out
}

/// Each Gateway's Redis for global rate limits: the `redisUrl` of its GatewayConfig (its own
/// `infrastructure.parametersRef`, else its class's), else `inputs.redis_url`.
fn gateway_redis(inputs: &Inputs, controller_name: &str) -> ratelimit::GatewayRedis {
    let mut by_gateway = BTreeMap::new();
    for gw in gateways_of(inputs, controller_name) {
        let Some(class) = inputs
            .gateway_classes
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(gw.spec.gateway_class_name.as_str()))
        else {
            continue;
        };
        let Ok(Some(config)) = parameters::gateway_config(gw, class) else {
            continue;
        };
        let url = inputs
            .gateway_configs
            .iter()
            .find(|c| object_ref(&c.metadata) == config)
            .and_then(|c| c.spec.redis_url.clone());
        if let Some(url) = url {
            by_gateway.insert(object_ref(&gw.metadata), url);
        }
    }
    ratelimit::GatewayRedis {
        by_gateway,
        default: inputs.redis_url.clone(),
    }
}

/// The name of a Gateway's dataplane objects (ServiceAccount, Service, Deployment, ...) in
/// the dataplane namespace, where the dataplanes of every namespace's Gateways live side by
/// side: `portico-<namespace>-<name>-<hash>`, both parts cut short enough for a DNS label
/// (63 characters), dots made dashes, and a 64-bit hash of the full `namespace/name` keeping
/// two Gateways apart whatever their names. It is the ServiceAccount the snapshot channel
/// admits and the Service whose addresses the Gateway reports.
pub fn dataplane_name(namespace: &str, gateway: &str) -> String {
    fn part(s: &str, max: usize) -> String {
        let cut: String = s
            .chars()
            .take(max)
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        cut.trim_end_matches('-').to_string()
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{namespace}/{gateway}").as_bytes(),
    );
    // 64 bits: finding another Gateway name with the same hash (to squat its dataplane's
    // name) is out of reach.
    let hash: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // 8 + 18 + 1 + 19 + 1 + 16 = 63.
    format!(
        "portico-{}-{}-{hash}",
        part(namespace, 18),
        part(gateway, 19)
    )
}

/// The Secrets compile may use, and those the controller may not read.
#[derive(Clone, Copy, Default)]
pub(crate) struct Secrets<'a> {
    list: &'a [Secret],
    unreadable: Option<&'a BTreeMap<ObjectRef, String>>,
}

impl<'a> Secrets<'a> {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &'a Secret> + use<'a> {
        self.list.iter()
    }

    /// Secret `ns/name`, or why there is none: not found, or not readable by the controller
    /// (and what would allow it).
    pub(crate) fn find(&self, ns: &str, name: &str) -> Result<&'a Secret, String> {
        if let Some(s) = self
            .list
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name) && namespace_of(&s.metadata) == ns)
        {
            return Ok(s);
        }
        let id = ObjectRef::new(ns, name);
        Err(match self.unreadable.and_then(|u| u.get(&id)) {
            Some(why) => format!("Secret {id} cannot be read: {why}"),
            None => format!("Secret {id} not found"),
        })
    }
}

impl Inputs {
    pub(crate) fn secret_view(&self) -> Secrets<'_> {
        Secrets {
            list: &self.secrets,
            unreadable: Some(&self.unreadable_secrets),
        }
    }
}

/// The Gateways whose class names `controller_name` (accepted or not).
pub(crate) fn gateways_of<'a>(
    inputs: &'a Inputs,
    controller_name: &str,
) -> impl Iterator<Item = &'a Gateway> {
    let classes: BTreeSet<&str> = inputs
        .gateway_classes
        .iter()
        .filter(|c| c.spec.controller_name == controller_name)
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    inputs
        .gateways
        .iter()
        .filter(move |g| classes.contains(g.spec.gateway_class_name.as_str()))
}

/// `metadata.namespace`, defaulting the way `kubectl apply` does for namespaced objects.
pub(crate) fn namespace_of(
    meta: &portico_crds::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

pub(crate) fn object_ref(
    meta: &portico_crds::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> ObjectRef {
    ObjectRef::new(namespace_of(meta), meta.name.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests;
