//! What compile reads: [`Inputs`], filled by the controller from its indexes or by standalone
//! mode from YAML, and the view of Secrets the passes share.
//!
//! Apart from the crate root so that the passes can take `&Inputs` without importing the
//! module that orchestrates them.

use crate::refs::{ListenerSetParents, gateways_of, namespace_of};
use crate::unreadable::UnreadablePolicy;
use portico_crds::auth::AuthPolicy;
use portico_crds::backend::BackendPolicy;
use portico_crds::cache::{CacheInvalidation, CachePolicy};
use portico_crds::gateway_api::{
    backendtlspolicies::BackendTlsPolicy, experimental::grpcroutes::GrpcRoute,
    experimental::httproutes::HttpRoute as HTTPRoute, gatewayclasses::GatewayClass,
    gateways::Gateway, listenersets::ListenerSet, referencegrants::ReferenceGrant,
    tlsroutes::TlsRoute,
};
use portico_crds::gatewayconfig::GatewayConfig;
use portico_crds::k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use portico_crds::k8s_openapi::api::discovery::v1::EndpointSlice;
use portico_crds::l4::{TcpRoute, UdpRoute};
use portico_crds::ratelimit::RateLimitPolicy;
use portico_model::ObjectRef;
use std::collections::BTreeMap;

/// Everything compile reads. Order does not matter.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Every GatewayClass; only those naming the controller are compiled.
    pub gateway_classes: Vec<GatewayClass>,
    /// Every Gateway; only those of our classes are compiled.
    pub gateways: Vec<Gateway>,
    /// Every ListenerSet; those whose parent is not a Gateway of ours are ignored.
    pub listener_sets: Vec<ListenerSet>,
    /// Every HTTPRoute; those naming no Gateway of ours are ignored.
    pub http_routes: Vec<HTTPRoute>,
    /// Every GRPCRoute, likewise.
    pub grpc_routes: Vec<GrpcRoute>,
    /// Every TCPRoute, likewise.
    pub tcp_routes: Vec<TcpRoute>,
    /// Every TLSRoute, likewise.
    pub tls_routes: Vec<TlsRoute>,
    /// Every UDPRoute, likewise.
    pub udp_routes: Vec<UdpRoute>,
    /// For cross-namespace backendRefs and certificateRefs.
    pub reference_grants: Vec<ReferenceGrant>,
    /// Every AuthPolicy this version can read.
    pub auth_policies: Vec<AuthPolicy>,
    /// The AuthPolicies it cannot read whole ([`crate::unreadable`]): they attach like a
    /// policy that does not compile, so their targets answer 500 rather than serve
    /// unprotected.
    pub unreadable_auth_policies: Vec<UnreadablePolicy>,
    /// Every RateLimitPolicy.
    pub rate_limit_policies: Vec<RateLimitPolicy>,
    /// Every CachePolicy.
    pub cache_policies: Vec<CachePolicy>,
    /// Every CacheInvalidation.
    pub cache_invalidations: Vec<CacheInvalidation>,
    /// Every BackendPolicy.
    pub backend_policies: Vec<BackendPolicy>,
    /// Every BackendTLSPolicy this version can read.
    pub backend_tls_policies: Vec<BackendTlsPolicy>,
    /// The BackendTLSPolicies it cannot read whole ([`crate::unreadable`]): each still
    /// applies to its Services, as a refusal (500), so they are never reached in plaintext.
    pub unreadable_backend_tls_policies: Vec<UnreadablePolicy>,
    /// The ConfigMaps BackendTLSPolicies name (the controller watches only these, see
    /// [`crate::referenced_config_maps`]).
    pub config_maps: Vec<ConfigMap>,
    /// Only their names matter here (a GatewayClass or Gateway naming a missing one is not
    /// accepted); the provisioner reads their specs.
    pub gateway_configs: Vec<GatewayConfig>,
    /// The Redis of `Global` rate limits whose policy names none (`--redis-url`).
    pub redis_url: Option<String>,
    /// The Secrets listeners and policies refer to (others are ignored; the controller
    /// watches only these, see [`crate::referenced_secrets`]).
    pub secrets: Vec<Secret>,
    /// Referenced Secrets the controller was refused (RBAC), with what would let it read
    /// them: their listeners and policies say so instead of "not found".
    pub unreadable_secrets: BTreeMap<ObjectRef, String>,
    /// Where the dataplanes run (`--dataplane-namespace`, `--gateway-namespaces`): their
    /// Services' addresses are what the Gateways report.
    pub placement: crate::placement::Placement,
    /// Ports the dataplane uses itself (its admin port in a cluster): no listener gets them.
    pub reserved_ports: std::collections::BTreeSet<i32>,
    /// What a Gateway's `spec.addresses` are: the IPs its listeners bind (standalone) or the
    /// address its dataplane Service must get (a cluster).
    pub addresses: Addresses,
    /// The Services backendRefs name, and the dataplanes' own.
    pub services: Vec<Service>,
    /// Endpoints known at compile time (standalone mode; the controller leaves this empty,
    /// since dataplanes watch EndpointSlices themselves).
    pub endpoint_slices: Vec<EndpointSlice>,
    /// For `allowedRoutes.namespaces.selector`. A namespace without an object here is taken to
    /// carry only its automatic `kubernetes.io/metadata.name` label.
    pub namespaces: Vec<Namespace>,
}

impl Inputs {
    /// The Secrets compile may use, with why the missing ones are missing.
    pub(crate) fn secret_view(&self) -> Secrets<'_> {
        Secrets {
            list: &self.secrets,
            unreadable: Some(&self.unreadable_secrets),
        }
    }

    /// The Gateway each ListenerSet names.
    pub(crate) fn listener_set_parents(&self) -> ListenerSetParents {
        ListenerSetParents::new(&self.listener_sets)
    }

    /// The Gateways whose class names `controller_name` (accepted or not).
    pub(crate) fn gateways_of(&self, controller_name: &str) -> impl Iterator<Item = &Gateway> {
        gateways_of(&self.gateway_classes, &self.gateways, controller_name)
    }
}

/// What a Gateway's `spec.addresses` mean where it is served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Addresses {
    /// The IPs its listeners bind: standalone mode, where the dataplane runs on the host
    /// that has them.
    #[default]
    Bind,
    /// The addresses its dataplane Service must be given (as `spec.loadBalancerIP`): in a
    /// cluster the dataplanes bind every address of their pod, and the Gateway is
    /// `Programmed` only once the Service has what it asked for.
    Service,
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
