//! `GatewayConfig`: how the controller provisions a Gateway's dataplane (Deployment, Service,
//! HorizontalPodAutoscaler, PodDisruptionBudget). Named by a GatewayClass's `parametersRef`
//! (the default for its Gateways) and by a Gateway's `spec.infrastructure.parametersRef` (which
//! wins, whole, for that Gateway).

// KubeSchema's derive copies each struct into a private module to build its schema; the
// copies are what this lint sees.
#![allow(unreachable_pub)]

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The dataplane of the Gateways that use this configuration.
// The printcolumn attributes repeat `type_ = "string"`, which this lint takes for a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "portico.dev",
    version = "v1alpha1",
    kind = "GatewayConfig",
    namespaced,
    status = "GatewayConfigStatus",
    shortname = "gwconfig",
    category = "portico",
    doc = "GatewayConfig says how Portico provisions the dataplane of the Gateways that name it (through their GatewayClass's parametersRef or their spec.infrastructure.parametersRef).",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.dataplane.image"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || !has(self.dataplane) || !has(self.dataplane.replicas)").message("set dataplane.replicas or autoscaling, not both: the HPA owns the replica count"))]
pub struct GatewayConfigSpec {
    /// The dataplane pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<DataplaneSpec>,

    /// A HorizontalPodAutoscaler (autoscaling/v2) on CPU. Without it the Deployment runs
    /// `dataplane.replicas` (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// A PodDisruptionBudget for the dataplane pods. Default: `maxUnavailable: 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<DisruptionBudget>,

    /// The Service in front of the dataplane pods; its ports are the Gateway's listener ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,

    /// Limits on what clients may hold and send (connections, timeouts, header names,
    /// trusted forwarding hops). Each field unset keeps the dataplane's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<EdgeLimits>,

    /// Read only on the GatewayConfig a GatewayClass names: what a Gateway's own
    /// GatewayConfig (`spec.infrastructure.parametersRef`, written by whoever may edit that
    /// namespace) may choose for its dataplane. Both default to false: the dataplane pod
    /// receives the Gateway's keys and credentials, so its image and where it runs are the
    /// class owner's choice. A Gateway whose own configuration sets a field it may not is not
    /// accepted (`InvalidParameters`), and its dataplane keeps the class's values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_overrides: Option<GatewayOverrides>,

    /// The Redis (`redis://host:port[/db]`) of `Global` rate limits whose RateLimitPolicy
    /// names none, for these Gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('redis://')").message("redisUrl must be a redis:// URL"))]
    #[schemars(length(min = 9, max = 512))]
    pub redis_url: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneSpec {
    /// The dataplane image. Default: the image the controller was started with
    /// (`--dataplane-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Replicas when there is no `autoscaling`. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Requests and limits of the dataplane container. Default: requests of 100m CPU (what
    /// the HPA's utilisation is measured against) and 128Mi memory, no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// `error`, `warn`, `info` (default) or `debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
    /// Added to the pods' labels (the selector labels cannot be overridden).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Default: spread over nodes (`kubernetes.io/hostname`, max skew 1, schedule anyway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Secrets in the dataplane namespace to pull the image with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

/// What a Gateway's own GatewayConfig may set (see `gatewayOverrides`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayOverrides {
    /// `dataplane.image` and `dataplane.imagePullSecrets`.
    #[serde(default)]
    pub image: bool,
    /// `dataplane.nodeSelector`, `tolerations`, `affinity`, `topologySpreadConstraints` and
    /// `priorityClassName` (a high priority preempts other workloads).
    #[serde(default)]
    pub scheduling: bool,
}

/// The dataplane's edge limits; each maps to the `portico` flag of the same name (see the
/// README's Security section for the defaults).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeLimits {
    /// Downstream connections per dataplane pod (0: no cap). Default 10,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_connections: Option<i64>,
    /// Downstream connections per source address (an IPv6 /64 counts as one; 0: no cap).
    /// Default 1,000; raise it behind a load balancer that hides client addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_connections_per_source: Option<i64>,
    /// Downstream connections per listening socket (a listener, or those sharing its
    /// address and port; 0: no cap). Default: no cap beyond `maxConnections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_connections_per_listener: Option<i64>,
    /// Seconds a new connection may take to send its first bytes. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub first_bytes_timeout_seconds: Option<i64>,
    /// Seconds for a request head, an idle keep-alive wait and a TLS handshake. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub header_read_timeout_seconds: Option<i64>,
    /// Seconds without a byte of a body, for a backend's answer, and for an idle HTTP/2
    /// connection. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub idle_timeout_seconds: Option<i64>,
    /// Seconds a client may read nothing of its response. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub write_timeout_seconds: Option<i64>,
    /// Slowest average request body rate in bytes per second after the grace period (0: no
    /// minimum). Default 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000_000))]
    pub body_min_rate_bytes_per_second: Option<i64>,
    /// Request headers whose names contain `_`. Default `Reject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_with_underscores: Option<UnderscoreHeaders>,
    /// Proxies in front of the Gateway that append to X-Forwarded-For. Default 0 (the edge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub trusted_hops: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum UnderscoreHeaders {
    Reject,
    Drop,
    Allow,
}

impl UnderscoreHeaders {
    /// The `portico --headers-with-underscores` value.
    pub fn as_flag(self) -> &'static str {
        match self {
            UnderscoreHeaders::Reject => "reject",
            UnderscoreHeaders::Drop => "drop",
            UnderscoreHeaders::Allow => "allow",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not be more than maxReplicas"))]
pub struct Autoscaling {
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU utilisation (percent of the request) the HPA aims for. Default 70.
    #[serde(
        default,
        rename = "targetCPUUtilizationPercentage",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.minAvailable) != has(self.maxUnavailable)").message("set exactly one of minAvailable and maxUnavailable"))]
pub struct DisruptionBudget {
    /// A number of pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_available: Option<i32>,
    /// A number of pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_unavailable: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.externalTrafficPolicy) || self.type != 'ClusterIP'").message("externalTrafficPolicy applies to NodePort and LoadBalancer Services"))]
pub struct ServiceSpec {
    /// `LoadBalancer` (the default), `NodePort` or `ClusterIP`.
    #[serde(rename = "type", default)]
    pub type_: ServiceType,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<TrafficPolicy>,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ServiceType {
    #[default]
    LoadBalancer,
    NodePort,
    #[serde(rename = "ClusterIP")]
    ClusterIp,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
            ServiceType::ClusterIp => "ClusterIP",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

/// Whether the configuration is usable (the controller checks what CEL cannot).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayConfigStatus {
    /// `Accepted` (reasons `Accepted`, `Invalid`).
    #[serde(default)]
    pub conditions: Vec<crate::policy::PolicyCondition>,
}
