//! Portico's Kubernetes API surface: the one crate that names the versions of `kube`,
//! `k8s-openapi` and `gateway-api`, re-exported so every other crate agrees on them.
//!
//! Pinned: Kubernetes API 1.36 (`k8s-openapi` feature `v1_36`) and the `gateway-api` crate
//! 0.22, generated from Gateway API v1.5.1. Portico follows v1.6.3 (the CRDs the tests and the
//! conformance suite install); the v1.6 fields Portico serves are in v1.5.1's types, and
//! kube's decoding ignores the fields it does not know. Types the crate lacks at the version
//! Portico serves (`v1` TCPRoute) are in [`l4`].
//!
//! How an EndpointSlice reads as endpoints is here too ([`endpointslice`]): Kubernetes
//! semantics that compile and the dataplane's discovery must apply alike.
//!
//! Portico's own CRDs are `kube::CustomResource` types here ([`auth`], [`ratelimit`],
//! [`cache`], [`backend`], [`gatewayconfig`]); their YAML is generated
//! from these types by the `crdgen` binary (`make crds`) into `crds/yaml/`, never edited by
//! hand.

pub mod auth;
pub mod backend;
pub mod cache;
pub mod endpointslice;
pub mod gatewayconfig;
pub mod l4;
pub mod policy;
pub mod ratelimit;

pub use gateway_api;
pub use k8s_openapi;
pub use kube;

/// The `spec.controllerName` of the GatewayClasses Portico serves.
pub const CONTROLLER_NAME: &str = "portico.dev/gateway-controller";

/// The API group of Portico's own CRDs.
pub const PORTICO_GROUP: &str = "portico.dev";

/// Every CRD Portico defines, in the order `make crds` writes them.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        auth::AuthPolicy::crd(),
        ratelimit::RateLimitPolicy::crd(),
        cache::CachePolicy::crd(),
        cache::CacheInvalidation::crd(),
        backend::BackendPolicy::crd(),
        gatewayconfig::GatewayConfig::crd(),
    ]
}

pub use policy::GATEWAY_GROUP;
