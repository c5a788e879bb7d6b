//! The objects a Gateway's dataplane is made of, as pure functions of the Gateway, its
//! GatewayConfig and the provisioner's settings (unit-tested without a server).

use super::settings::ProvisionSettings;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, Service, ServiceAccount,
    ServiceAccountTokenProjection, ServicePort, ServiceSpec, SleepAction, Sysctl,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portico_compile::ServedPort;
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
use portico_crds::gatewayconfig::{EdgeLimits, GatewayConfigSpec, LogLevel, TrafficPolicy};
use std::collections::BTreeMap;

/// The dataplane's admin port (/healthz, /readyz, /metrics).
pub const ADMIN_PORT: i32 = 9901;
/// Where the projected snapshot-channel token is mounted.
const TOKEN_DIR: &str = "/var/run/secrets/portico";
const CA_DIR: &str = "/etc/portico";
/// How long a terminating pod keeps serving before SIGTERM, so endpoints are gone from load
/// balancers before it stops accepting.
const PRE_STOP_SECONDS: i64 = 5;
/// The dataplane's own drain time after SIGTERM (`--drain-timeout-s`).
const DRAIN_SECONDS: i64 = 30;

/// On every provisioned object: the Gateway it is for (`namespace/name`). The provisioner
/// overwrites or deletes only objects that say they are for the Gateway at hand.
pub const GATEWAY_ANNOTATION: &str = "portico.dev/gateway";
/// On every provisioned object: the `controllerName` of the controller that made it, so two
/// installations sharing a dataplane namespace leave each other's objects alone.
pub const CONTROLLER_ANNOTATION: &str = "portico.dev/controller-name";
/// Label with the Gateway's namespace (`kubectl get deploy -l portico.dev/gateway-namespace=x`).
pub const GATEWAY_NAMESPACE_LABEL: &str = "portico.dev/gateway-namespace";
/// Label with the Gateway's name, the one Gateway API names for generated resources
/// (GEP-1762).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Everything provisioned for one Gateway, where its [`Placement`] says.
///
/// [`Placement`]: portico_compile::Placement
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// `None` beside the Gateway: the pods run as the installer's ServiceAccount there.
    pub service_account: Option<ServiceAccount>,
    pub ca: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    /// `None`: no autoscaling (an existing HPA is removed).
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub pdb: PodDisruptionBudget,
}

/// The labels that select a Gateway's dataplane pods (`name`: its [`dataplane_name`]).
///
/// [`dataplane_name`]: portico_compile::dataplane_name
pub fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "portico-dataplane".to_string(),
        ),
        ("portico.dev/dataplane".to_string(), name.to_string()),
    ])
}

/// Label and annotation keys a Gateway's owner may not set on its dataplane's objects: the
/// dataplane namespace is shared, and its Services, PDBs and policies select Portico's own
/// pods (the controller's) by `app.kubernetes.io/*`; `portico.dev/*` is what the provisioner
/// itself reads; `gateway.networking.k8s.io/*` says which Gateway an object is for.
fn reserved(key: &str) -> bool {
    key.starts_with("app.kubernetes.io/")
        || key.starts_with("portico.dev/")
        || key.starts_with("gateway.networking.k8s.io/")
}

/// `map` without [`reserved`] keys.
fn unreserved<'a>(
    map: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> BTreeMap<String, String> {
    map.into_iter()
        .filter(|(k, _)| !reserved(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `namespace/name` of a Gateway, as [`GATEWAY_ANNOTATION`] carries it.
pub fn gateway_key(gw: &Gateway) -> String {
    format!(
        "{}/{}",
        gw.metadata.namespace.as_deref().unwrap_or("default"),
        gw.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The objects of `gw`'s dataplane under `config` (defaults where it says nothing), in the
/// namespace its placement gives. In the dataplane namespace their owner is the Gateway's
/// class (an owner must be cluster-scoped or in the same namespace): deleting the class
/// removes them, deleting the Gateway is the provisioner's sweep. Beside the Gateway their
/// owner is the Gateway itself, so the garbage collector removes them with it.
/// `extra_ports` are those its ListenerSets are served on.
pub fn desired(
    gw: &Gateway,
    class: &GatewayClass,
    config: &GatewayConfigSpec,
    s: &ProvisionSettings,
    extra_ports: &std::collections::BTreeSet<ServedPort>,
) -> Desired {
    let gw_name = gw.metadata.name.clone().unwrap_or_default();
    let gw_ns = gw
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let beside = s.placement.is_beside(&gw_ns);
    let ns = s.placement.namespace_for(&gw_ns).to_string();
    let name = portico_compile::dataplane_name(&gw_ns, &gw_name);
    let infra = gw.spec.infrastructure.as_ref();
    let mut labels = unreserved(infra.and_then(|i| i.labels.as_ref()).into_iter().flatten());
    labels.extend(selector(&name));
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "portico-controller".into(),
    );
    labels.insert(GATEWAY_NAMESPACE_LABEL.into(), gw_ns.clone());
    // A label value holds 63 characters, a Gateway name 253: a longer name goes without the
    // label (the annotation names it whole) rather than make every object invalid.
    if gw_name.len() <= 63 {
        labels.insert(GATEWAY_NAME_LABEL.into(), gw_name.clone());
    }
    let mut annotations = unreserved(
        infra
            .and_then(|i| i.annotations.as_ref())
            .into_iter()
            .flatten(),
    );
    annotations.insert(GATEWAY_ANNOTATION.into(), gateway_key(gw));
    annotations.insert(CONTROLLER_ANNOTATION.into(), s.controller_name.clone());
    let owner = if beside {
        OwnerReference {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "Gateway".into(),
            name: gw_name.clone(),
            uid: gw.metadata.uid.clone().unwrap_or_default(),
            // Not blocking the Gateway's deletion (which would need update on
            // gateways/finalizers).
            controller: Some(false),
            block_owner_deletion: Some(false),
        }
    } else {
        OwnerReference {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "GatewayClass".into(),
            name: class.metadata.name.clone().unwrap_or_default(),
            uid: class.metadata.uid.clone().unwrap_or_default(),
            // Neither the controller of record nor blocking the class's deletion (which would
            // need update on gatewayclasses/finalizers).
            controller: Some(false),
            block_owner_deletion: Some(false),
        }
    };
    let meta = |name: &str, extra_annotations: &BTreeMap<String, String>| ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns.clone()),
        labels: Some(labels.clone()),
        annotations: {
            let mut a = extra_annotations.clone();
            // Ours last: a Service annotation cannot pose as another Gateway's.
            a.extend(annotations.clone());
            Some(a)
        },
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    };
    let none = BTreeMap::new();
    let dp = config.dataplane.clone().unwrap_or_default();
    let ports: Vec<ServedPort> = {
        let mut p: Vec<ServedPort> = gw
            .spec
            .listeners
            .iter()
            .map(|l| ServedPort::of(l.port, &l.protocol))
            .collect();
        // A listener on the admin port is refused (compile says so); the port is never
        // exposed, or the Service would lead to the admin server.
        p.retain(|p| p.port != ADMIN_PORT);
        p.sort_unstable();
        p.dedup();
        p
    };
    // The Service also exposes its ListenerSets' ports. The pods do not declare them (a
    // containerPort is informational; the Service's targetPort reaches the socket either
    // way), so a ListenerSet never restarts the Gateway's pods.
    let service_ports: Vec<ServedPort> = {
        let mut p = ports.clone();
        p.extend(extra_ports);
        p.sort_unstable();
        p.dedup();
        p
    };

    let ca_name = format!("{name}-controller-ca");
    let ca = ConfigMap {
        metadata: meta(&ca_name, &none),
        data: Some(BTreeMap::from([("ca.crt".to_string(), s.ca_pem.clone())])),
        ..ConfigMap::default()
    };
    let service_account = (!beside).then(|| ServiceAccount {
        metadata: meta(&name, &none),
        // The pod mounts its API token explicitly (EndpointSlices) and a projected token for
        // the snapshot channel.
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    });
    let account = s.placement.account_for(&gw_ns, &gw_name).1;

    let mut pod_labels = labels.clone();
    pod_labels.extend(unreserved(&dp.pod_labels));
    pod_labels.extend(selector(&name));
    let mut pod_annotations = annotations.clone();
    pod_annotations.extend(unreserved(&dp.pod_annotations));
    pod_annotations.insert(GATEWAY_ANNOTATION.into(), gateway_key(gw));
    let log_level = dp.log_level.unwrap_or(LogLevel::Info).as_str();
    let image = dp.image.clone().unwrap_or_else(|| s.image.clone());
    let mut container_ports: Vec<ContainerPort> = ports
        .iter()
        .map(|p| ContainerPort {
            container_port: p.port,
            name: Some(p.name()),
            protocol: Some(p.protocol().into()),
            ..ContainerPort::default()
        })
        .collect();
    container_ports.push(ContainerPort {
        container_port: ADMIN_PORT,
        name: Some("admin".into()),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    });
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let container = Container {
        name: "dataplane".into(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(
            [
                "connect",
                "--controller",
                &s.controller_address,
                "--server-name",
                &s.server_name,
                "--gateway",
                &format!("{gw_ns}/{gw_name}"),
                "--token-file",
                &format!("{TOKEN_DIR}/token"),
                "--ca-file",
                &format!("{CA_DIR}/ca.crt"),
                "--state-dir",
                "/var/lib/portico",
                "--admin-address",
                &format!("0.0.0.0:{ADMIN_PORT}"),
                "--drain-timeout-s",
                &DRAIN_SECONDS.to_string(),
                "--log-format",
                "json",
            ]
            .iter()
            .map(|a| a.to_string())
            .chain(limit_args(config.limits.as_ref()))
            .collect(),
        ),
        env: Some(vec![
            EnvVar {
                name: "POD_NAME".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".into(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            EnvVar {
                name: "RUST_LOG".into(),
                value: Some(log_level.into()),
                ..EnvVar::default()
            },
        ]),
        ports: Some(container_ports),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: Some(dp.resources.clone().unwrap_or_else(default_resources)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "snapshot-token".into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "controller-ca".into(),
                mount_path: CA_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "state".into(),
                mount_path: "/var/lib/portico".into(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let pod = PodSpec {
        service_account_name: Some(account),
        termination_grace_period_seconds: Some(PRE_STOP_SECONDS + DRAIN_SECONDS + 5),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            fs_group: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            // Listeners on ports below 1024 without NET_BIND_SERVICE (all capabilities are
            // dropped); a namespaced, safe sysctl.
            sysctls: Some(vec![Sysctl {
                name: "net.ipv4.ip_unprivileged_port_start".into(),
                value: "0".into(),
            }]),
            ..PodSecurityContext::default()
        }),
        containers: vec![container],
        volumes: Some(vec![
            Volume {
                name: "snapshot-token".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some("portico.dev/snapshots".into()),
                            expiration_seconds: Some(3600),
                            path: "token".into(),
                        }),
                        ..VolumeProjection::default()
                    }]),
                    ..ProjectedVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "controller-ca".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: ca_name.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "state".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ]),
        node_selector: (!dp.node_selector.is_empty()).then(|| dp.node_selector.clone()),
        priority_class_name: dp.priority_class_name.clone(),
        image_pull_secrets: (!dp.image_pull_secrets.is_empty())
            .then(|| dp.image_pull_secrets.clone()),
        topology_spread_constraints: Some(if dp.topology_spread_constraints.is_empty() {
            vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "kubernetes.io/hostname".into(),
                when_unsatisfiable: "ScheduleAnyway".into(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(selector(&name)),
                    ..LabelSelector::default()
                }),
                ..TopologySpreadConstraint::default()
            }]
        } else {
            dp.topology_spread_constraints.clone()
        }),
        tolerations: (!dp.tolerations.is_empty()).then(|| dp.tolerations.clone()),
        affinity: dp.affinity.clone(),
        ..PodSpec::default()
    };
    let deployment = Deployment {
        metadata: meta(&name, &none),
        spec: Some(DeploymentSpec {
            // With an HPA the replica count is the HPA's: leaving the field out keeps the
            // apply from fighting it.
            replicas: config
                .autoscaling
                .is_none()
                .then(|| dp.replicas.unwrap_or(2)),
            selector: LabelSelector {
                match_labels: Some(selector(&name)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };

    let svc_config = config.service.clone().unwrap_or_default();
    let service = Service {
        metadata: meta(&name, &svc_config.annotations),
        spec: Some(ServiceSpec {
            type_: Some(svc_config.type_.as_str().into()),
            selector: Some(selector(&name)),
            ports: Some(
                service_ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name()),
                        port: p.port,
                        target_port: Some(IntOrString::Int(p.port)),
                        protocol: Some(p.protocol().into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            // Only a LoadBalancer Service is given an address this way.
            load_balancer_ip: requested_ip(gw)
                .filter(|_| svc_config.type_.as_str() == "LoadBalancer"),
            external_traffic_policy: svc_config.external_traffic_policy.map(|t| {
                match t {
                    TrafficPolicy::Cluster => "Cluster",
                    TrafficPolicy::Local => "Local",
                }
                .to_string()
            }),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let hpa = config
        .autoscaling
        .as_ref()
        .map(|a| HorizontalPodAutoscaler {
            metadata: meta(&name, &none),
            spec: HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: name.clone(),
                },
                min_replicas: Some(a.min_replicas),
                max_replicas: a.max_replicas,
                metrics: Some(vec![MetricSpec {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricSource {
                        name: "cpu".into(),
                        target: MetricTarget {
                            type_: "Utilization".into(),
                            average_utilization: Some(
                                a.target_cpu_utilization_percentage.unwrap_or(70),
                            ),
                            ..MetricTarget::default()
                        },
                    }),
                    ..MetricSpec::default()
                }]),
                ..HorizontalPodAutoscalerSpec::default()
            },
            ..HorizontalPodAutoscaler::default()
        });

    let budget = config.pod_disruption_budget.clone();
    let (min_available, max_unavailable) = match budget {
        Some(b) => (
            b.min_available.map(IntOrString::Int),
            b.max_unavailable.map(IntOrString::Int),
        ),
        None => (None, Some(IntOrString::Int(1))),
    };
    let pdb = PodDisruptionBudget {
        metadata: meta(&name, &none),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(selector(&name)),
                ..LabelSelector::default()
            }),
            min_available,
            max_unavailable,
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };

    Desired {
        service_account,
        ca,
        deployment,
        service,
        hpa,
        pdb,
    }
}

/// Requests when a GatewayConfig gives none: the HPA measures CPU utilisation against the
/// request, so without one it cannot scale.
/// The address the Gateway asks for, as the Service's `loadBalancerIP`: its one
/// `IPAddress` in `spec.addresses`. (Several, or another type, cannot be asked this way;
/// compile reports the Gateway's address as not usable, or unsupported.) Deprecated in the
/// Service API for being provider-specific, it is still what load balancers such as MetalLB
/// and the clouds' read; a provider's own annotation can be added through the GatewayConfig.
fn requested_ip(gw: &Gateway) -> Option<String> {
    match portico_compile::requested_addresses(gw).ok()?.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

fn default_resources() -> ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), Quantity("128Mi".into())),
        ])),
        ..ResourceRequirements::default()
    }
}

/// What CEL cannot check about a GatewayConfig: an error a user can act on.
/// The dataplane flags of a GatewayConfig's `limits`: only those it sets.
fn limit_args(limits: Option<&EdgeLimits>) -> Vec<String> {
    let Some(l) = limits else {
        return Vec::new();
    };
    let numbers = [
        ("--max-connections", l.max_connections),
        ("--max-connections-per-source", l.max_connections_per_source),
        (
            "--max-connections-per-listener",
            l.max_connections_per_listener,
        ),
        ("--first-bytes-timeout-s", l.first_bytes_timeout_seconds),
        ("--header-read-timeout-s", l.header_read_timeout_seconds),
        ("--idle-timeout-s", l.idle_timeout_seconds),
        ("--write-timeout-s", l.write_timeout_seconds),
        ("--body-min-rate", l.body_min_rate_bytes_per_second),
        ("--trusted-hops", l.trusted_hops),
    ];
    let mut args = Vec::new();
    for (flag, value) in numbers {
        if let Some(v) = value {
            args.push(flag.to_string());
            args.push(v.max(0).to_string());
        }
    }
    if let Some(u) = l.headers_with_underscores {
        args.push("--headers-with-underscores".into());
        args.push(u.as_flag().into());
    }
    args
}

pub fn validate(config: &GatewayConfigSpec) -> Result<(), String> {
    if let Some(a) = &config.autoscaling
        && a.min_replicas > a.max_replicas
    {
        return Err(format!(
            "autoscaling.minReplicas ({}) is more than maxReplicas ({})",
            a.min_replicas, a.max_replicas
        ));
    }
    if let Some(url) = &config.redis_url {
        portico_model::ratelimit::RedisAddress::parse(url).map_err(|e| format!("redisUrl: {e}"))?;
    }
    if let Some(dp) = &config.dataplane
        && let Some(image) = &dp.image
        && (image.is_empty() || image.contains(char::is_whitespace))
    {
        return Err(format!(
            "dataplane.image {image:?} is not an image reference"
        ));
    }
    if let Some(svc) = &config.service
        && svc.external_traffic_policy.is_some()
        && svc.type_ == portico_crds::gatewayconfig::ServiceType::ClusterIp
    {
        return Err("externalTrafficPolicy applies to NodePort and LoadBalancer Services".into());
    }
    Ok(())
}
