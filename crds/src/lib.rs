//! Portico's Kubernetes API surface: the one crate that names the versions of `kube`,
//! `k8s-openapi` and `gateway-api`, re-exported so every other crate agrees on them.
//!
//! Pinned: Kubernetes API 1.36 (`k8s-openapi` feature `v1_36`) and Gateway API v1.5.1 (the
//! release the `gateway-api` crate 0.22 tracks). Portico's own CRDs (policies, GatewayConfig)
//! will live here as `kube::CustomResource` types with a generator for their YAML.

pub use gateway_api;
pub use k8s_openapi;
pub use kube;

/// The `spec.controllerName` of the GatewayClasses Portico serves.
pub const CONTROLLER_NAME: &str = "portico.dev/gateway-controller";

/// The Gateway API API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
