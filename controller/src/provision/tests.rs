use super::objects::{ADMIN_PORT, Desired, desired, validate};
use super::*;
use portico_compile::ServedPort;
use portico_crds::gatewayconfig::GatewayConfigSpec;

fn settings() -> ProvisionSettings {
    ProvisionSettings {
        controller_name: "portico.dev/gateway-controller".into(),
        image: "ghcr.io/portico/dataplane:test".into(),
        controller_address: "portico-controller.portico-system.svc:9443".into(),
        server_name: "portico-controller".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----\n".into(),
        placement: portico_compile::Placement::one_namespace("portico-system"),
        identity: "test".into(),
    }
}

fn gateway() -> Gateway {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "apps", "uid": "1234"},
        "spec": {"gatewayClassName": "portico",
                 "infrastructure": {"labels": {"team": "web"}, "annotations": {"cost-center": "42"}},
                 "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"},
                               {"name": "https", "port": 443, "protocol": "HTTPS"},
                               {"name": "other", "port": 80, "protocol": "HTTP", "hostname": "x.test"}]}
    }))
    .expect("gateway")
}

fn class() -> GatewayClass {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "portico", "uid": "c1a55"},
        "spec": {"controllerName": "portico.dev/gateway-controller"}
    }))
    .expect("class")
}

/// The dataplane objects' name for Gateway apps/edge.
fn name() -> String {
    portico_compile::dataplane_name("apps", "edge")
}

fn config(v: serde_json::Value) -> GatewayConfigSpec {
    serde_json::from_value(v).expect("config")
}

#[test]
fn every_object_is_in_the_dataplane_namespace_says_its_gateway_and_carries_its_infrastructure_labels()
 {
    let d = desired(
        &gateway(),
        &class(),
        &GatewayConfigSpec::default(),
        &settings(),
        &Default::default(),
    );
    let metas = [
        &d.service_account
            .as_ref()
            .expect("its own account")
            .metadata,
        &d.ca.metadata,
        &d.deployment.metadata,
        &d.service.metadata,
        &d.pdb.metadata,
    ];
    for m in metas {
        // An owner cannot be in another namespace: the class is, and it does not block.
        let owner = &m.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("GatewayClass", "portico", "c1a55")
        );
        assert_eq!(owner.block_owner_deletion, Some(false));
        assert_eq!(m.namespace.as_deref(), Some("portico-system"));
        let annotations = m.annotations.as_ref().expect("annotations");
        assert_eq!(
            annotations.get("portico.dev/gateway").map(String::as_str),
            Some("apps/edge")
        );
        assert_eq!(
            annotations
                .get("portico.dev/controller-name")
                .map(String::as_str),
            Some("portico.dev/gateway-controller")
        );
        let labels = m.labels.as_ref().expect("labels");
        assert_eq!(labels.get("team").map(String::as_str), Some("web"));
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("portico-controller")
        );
        assert_eq!(
            labels
                .get("portico.dev/gateway-namespace")
                .map(String::as_str),
            Some("apps")
        );
        assert_eq!(
            annotations.get("cost-center").map(String::as_str),
            Some("42")
        );
        assert_eq!(
            labels
                .get("gateway.networking.k8s.io/gateway-name")
                .map(String::as_str),
            Some("edge")
        );
    }
    assert_eq!(d.deployment.metadata.name, Some(name()));
    assert_eq!(
        d.ca.metadata.name,
        Some(format!("{}-controller-ca", name()))
    );
    assert!(
        d.hpa.is_none(),
        "no autoscaling without a config asking for it"
    );
}

#[test]
fn beside_its_gateway_a_dataplane_is_owned_by_it_and_runs_as_the_installers_account() {
    let mut s = settings();
    s.placement.beside.insert("apps".into());
    s.placement.beside_account = "portico-dataplane".into();
    let d = desired(
        &gateway(),
        &class(),
        &GatewayConfigSpec::default(),
        &s,
        &Default::default(),
    );
    assert!(
        d.service_account.is_none(),
        "the controller makes no ServiceAccount outside the dataplane namespace"
    );
    let template = d.deployment.spec.as_ref().expect("spec").template.clone();
    assert_eq!(
        template
            .spec
            .as_ref()
            .expect("pod")
            .service_account_name
            .as_deref(),
        Some("portico-dataplane")
    );
    let pod_labels = template.metadata.expect("meta").labels.expect("labels");
    assert_eq!(pod_labels.get("team").map(String::as_str), Some("web"));
    let metas = [
        &d.ca.metadata,
        &d.deployment.metadata,
        &d.service.metadata,
        &d.pdb.metadata,
    ];
    for m in metas {
        assert_eq!(m.namespace.as_deref(), Some("apps"));
        // Deleting the Gateway deletes them (garbage collector), without a finalizer.
        let owner = &m.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Gateway", "edge", "1234")
        );
        assert_eq!(owner.block_owner_deletion, Some(false));
        let labels = m.labels.as_ref().expect("labels");
        assert_eq!(labels.get("team").map(String::as_str), Some("web"));
        assert_eq!(
            labels
                .get("gateway.networking.k8s.io/gateway-name")
                .map(String::as_str),
            Some("edge")
        );
        assert_eq!(
            m.annotations
                .as_ref()
                .and_then(|a| a.get("cost-center"))
                .map(String::as_str),
            Some("42")
        );
    }
    // A name longer than a label value goes without the label (the objects stay valid).
    let mut long = gateway();
    long.metadata.name = Some("g".repeat(64));
    let d = desired(
        &long,
        &class(),
        &GatewayConfigSpec::default(),
        &s,
        &Default::default(),
    );
    assert!(
        d.service
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| !l.contains_key("gateway.networking.k8s.io/gateway-name"))
    );
    // Another namespace's Gateway keeps the dataplane namespace.
    let mut other = gateway();
    other.metadata.namespace = Some("shop".into());
    let d = desired(
        &other,
        &class(),
        &GatewayConfigSpec::default(),
        &s,
        &Default::default(),
    );
    assert_eq!(
        d.deployment.metadata.namespace.as_deref(),
        Some("portico-system")
    );
    assert!(d.service_account.is_some());
}

#[test]
fn the_deployment_is_hardened_and_drains() {
    let d = desired(
        &gateway(),
        &class(),
        &GatewayConfigSpec::default(),
        &settings(),
        &Default::default(),
    );
    let spec = d.deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.expect("pod");
    let psc = pod.security_context.expect("pod security");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.expect("seccomp").type_,
        "RuntimeDefault"
    );
    assert_eq!(pod.service_account_name, Some(name()));
    assert!(pod.termination_grace_period_seconds.expect("grace") >= 35);
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().expect("container security");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert!(
        c.lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .is_some()
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
    let args = c.args.clone().unwrap_or_default().join(" ");
    assert!(args.contains("--gateway apps/edge"), "{args}");
    assert!(
        args.contains("--controller portico-controller.portico-system.svc:9443"),
        "{args}"
    );
    let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
    assert_eq!(ports, vec![80, 443, ADMIN_PORT]);
}

#[test]
fn the_service_exposes_the_listener_ports_with_the_configured_type() {
    let cfg = config(
        json!({"service": {"type": "NodePort", "externalTrafficPolicy": "Local",
                                        "annotations": {"lb.example/internal": "true"}}}),
    );
    let d = desired(&gateway(), &class(), &cfg, &settings(), &Default::default());
    let spec = d.service.spec.expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    let ports: Vec<i32> = spec.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, vec![80, 443]);
    assert_eq!(
        d.service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("lb.example/internal"))
            .map(String::as_str),
        Some("true")
    );
    let default = desired(
        &gateway(),
        &class(),
        &GatewayConfigSpec::default(),
        &settings(),
        &Default::default(),
    );
    assert_eq!(
        default.service.spec.and_then(|s| s.type_).as_deref(),
        Some("LoadBalancer")
    );
}

#[test]
fn autoscaling_gives_an_hpa_and_leaves_the_replica_count_to_it() {
    let cfg = config(json!({
        "autoscaling": {"minReplicas": 2, "maxReplicas": 10, "targetCPUUtilizationPercentage": 60},
        "podDisruptionBudget": {"minAvailable": 1},
        "dataplane": {"image": "registry.local/portico:1", "logLevel": "debug",
                      "podLabels": {"tier": "edge"}, "nodeSelector": {"pool": "edge"},
                      "resources": {"requests": {"cpu": "500m"}}}
    }));
    let d = desired(&gateway(), &class(), &cfg, &settings(), &Default::default());
    let hpa = d.hpa.expect("hpa").spec;
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 10));
    let spec = d.deployment.spec.expect("spec");
    assert_eq!(spec.replicas, None);
    let pod = spec.template.spec.expect("pod");
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.local/portico:1"));
    assert!(
        c.env
            .iter()
            .flatten()
            .any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug"))
    );
    assert!(c.resources.is_some());
    assert_eq!(
        pod.node_selector
            .and_then(|n| n.get("pool").cloned())
            .as_deref(),
        Some("edge")
    );
    let labels = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .expect("labels");
    assert_eq!(labels.get("tier").map(String::as_str), Some("edge"));
    let pdb = d.pdb.spec.expect("pdb");
    assert!(pdb.min_available.is_some() && pdb.max_unavailable.is_none());
}

#[test]
fn pod_labels_cannot_override_the_selector() {
    let cfg = config(json!({"dataplane": {
        "podLabels": {"portico.dev/dataplane": "other", "app.kubernetes.io/instance": "portico", "tier": "edge"},
        "podAnnotations": {"portico.dev/gateway": "other/gateway"}}}));
    // The Gateway's own labels may not pose as the controller's pods in the shared namespace.
    let mut gw = gateway();
    if let Some(i) = gw.spec.infrastructure.as_mut() {
        i.labels
            .get_or_insert_with(Default::default)
            .insert("app.kubernetes.io/component".into(), "controller".into());
    }
    let d = desired(&gw, &class(), &cfg, &settings(), &Default::default());
    for m in [&d.deployment.metadata, &d.service.metadata] {
        let labels = m.labels.as_ref().expect("labels");
        assert!(
            !labels.contains_key("app.kubernetes.io/component"),
            "{labels:?}"
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("web"));
    }
    let meta = d
        .deployment
        .spec
        .and_then(|s| s.template.metadata)
        .expect("pod metadata");
    let labels = meta.labels.expect("labels");
    assert_eq!(
        labels.get("portico.dev/dataplane").map(String::as_str),
        Some(name().as_str())
    );
    assert_eq!(
        labels.get("app.kubernetes.io/name").map(String::as_str),
        Some("portico-dataplane")
    );
    assert!(!labels.contains_key("app.kubernetes.io/instance"));
    assert!(!labels.contains_key("app.kubernetes.io/component"));
    assert_eq!(labels.get("tier").map(String::as_str), Some("edge"));
    assert_eq!(
        meta.annotations
            .expect("annotations")
            .get("portico.dev/gateway")
            .map(String::as_str),
        Some("apps/edge")
    );
}

#[test]
fn impossible_configurations_are_refused_with_a_reason() {
    for (v, why) in [
        (
            json!({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
            "minReplicas",
        ),
        (json!({"redisUrl": "redis://user:pw@r:6379"}), "redisUrl"),
        (json!({"dataplane": {"image": "has space"}}), "image"),
        (
            json!({"service": {"type": "ClusterIP", "externalTrafficPolicy": "Local"}}),
            "externalTrafficPolicy",
        ),
    ] {
        let e = validate(&config(v.clone())).expect_err(&v.to_string());
        assert!(e.contains(why), "{v}: {e}");
    }
    assert!(
        serde_json::from_value::<GatewayConfigSpec>(json!({"service": {"type": "Ingress"}}))
            .is_err()
    );
    validate(&GatewayConfigSpec::default()).expect("defaults are valid");
}

#[test]
fn the_gateway_names_its_config_or_its_class_does() {
    let class = |params: serde_json::Value| -> GatewayClass {
        serde_json::from_value(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "portico"},
            "spec": {"controllerName": "portico.dev/gateway-controller", "parametersRef": params}}),
        )
        .expect("class")
    };
    let plain: GatewayClass = serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "portico"}, "spec": {"controllerName": "portico.dev/gateway-controller"}}))
    .expect("class");
    let mut gw = gateway();
    assert_eq!(config_ref(&gw, &plain), Ok(None));
    let by_class = class(
        json!({"group": "portico.dev", "kind": "GatewayConfig", "name": "defaults", "namespace": "portico-system"}),
    );
    assert_eq!(
        config_ref(&gw, &by_class),
        Ok(Some(("portico-system".into(), "defaults".into())))
    );
    let no_ns = class(json!({"group": "portico.dev", "kind": "GatewayConfig", "name": "defaults"}));
    assert!(config_ref(&gw, &no_ns).is_err());
    let configmap = class(json!({"group": "", "kind": "ConfigMap", "name": "x", "namespace": "y"}));
    assert!(config_ref(&gw, &configmap).is_err());
    gw.spec.infrastructure = serde_json::from_value(
        json!({"parametersRef": {"group": "portico.dev", "kind": "GatewayConfig", "name": "big"}}),
    )
    .ok();
    assert_eq!(
        config_ref(&gw, &by_class),
        Ok(Some(("apps".into(), "big".into()))),
        "the Gateway's own reference wins"
    );
}

#[test]
fn edge_limits_become_dataplane_flags() {
    let plain = desired(
        &gateway(),
        &class(),
        &GatewayConfigSpec::default(),
        &settings(),
        &Default::default(),
    );
    let args = |d: &Desired| {
        d.deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers[0].args.clone())
            .unwrap_or_default()
            .join(" ")
    };
    assert!(
        !args(&plain).contains("--max-connections"),
        "defaults stay the dataplane's"
    );
    let limited = desired(
        &gateway(),
        &class(),
        &config(json!({"limits": {
            "maxConnectionsPerSource": 5000, "idleTimeoutSeconds": 300,
            "headersWithUnderscores": "Drop", "trustedHops": 1}})),
        &settings(),
        &Default::default(),
    );
    let a = args(&limited);
    for want in [
        "--max-connections-per-source 5000",
        "--idle-timeout-s 300",
        "--headers-with-underscores drop",
        "--trusted-hops 1",
    ] {
        assert!(a.contains(want), "{want}: {a}");
    }
    assert!(!a.contains("--max-connections "), "{a}");
}

#[test]
fn dataplanes_get_requests_for_the_hpa_and_spread_over_nodes_by_default() {
    let d = desired(
        &gateway(),
        &class(),
        &GatewayConfigSpec::default(),
        &settings(),
        &Default::default(),
    );
    let pod = d
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod");
    let requests = pod.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .expect("requests");
    assert_eq!(requests.get("cpu").map(|q| q.0.as_str()), Some("100m"));
    assert!(requests.contains_key("memory"));
    let spread = pod.topology_spread_constraints.expect("spread");
    assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
    // What a configuration says instead is used as it is.
    let cfg = config(json!({"dataplane": {
        "resources": {"requests": {"cpu": "2"}},
        "priorityClassName": "edge-critical",
        "imagePullSecrets": [{"name": "registry"}],
        "topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}]}}));
    let pod = desired(&gateway(), &class(), &cfg, &settings(), &Default::default())
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod");
    assert_eq!(pod.priority_class_name.as_deref(), Some("edge-critical"));
    assert_eq!(
        pod.image_pull_secrets.expect("pull secrets")[0].name,
        "registry"
    );
    let spread = pod.topology_spread_constraints.expect("spread");
    assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
    let requests = pod.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .expect("requests");
    assert_eq!(requests.get("cpu").map(|q| q.0.as_str()), Some("2"));
    // A Gateway's own configuration may not choose a priority class: it preempts others.
    let refused = portico_compile::parameters::refused_overrides(&cfg, None);
    assert!(
        refused.contains(&"dataplane.priorityClassName"),
        "{refused:?}"
    );
    assert!(
        refused.contains(&"dataplane.imagePullSecrets"),
        "{refused:?}"
    );
    assert!(
        refused.contains(&"dataplane.topologySpreadConstraints"),
        "{refused:?}"
    );
}

#[test]
fn the_ports_of_listener_sets_are_exposed_by_the_service_without_touching_the_pods() {
    let plain = desired(
        &gateway(),
        &class(),
        &GatewayConfigSpec::default(),
        &settings(),
        &Default::default(),
    );
    let d = desired(
        &gateway(),
        &class(),
        &GatewayConfigSpec::default(),
        &settings(),
        &[
            ServedPort::of(80, "HTTP"),
            ServedPort::of(8443, "HTTPS"),
            ServedPort::of(53, "UDP"),
        ]
        .into(),
    );
    let service: Vec<String> = d
        .service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| {
            format!(
                "{}/{}/{}",
                p.name.as_deref().unwrap_or_default(),
                p.port,
                p.protocol.as_deref().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        service,
        [
            "udp-53/53/UDP",
            "port-80/80/TCP",
            "port-443/443/TCP",
            "port-8443/8443/TCP"
        ]
    );
    // The pod template is the same: adding a ListenerSet restarts no dataplane.
    assert_eq!(d.deployment.spec, plain.deployment.spec);
}

#[test]
fn a_requested_address_is_asked_of_a_load_balancer_service() {
    let with = |addresses: serde_json::Value, service: serde_json::Value| {
        let mut gw = gateway();
        gw.spec.addresses = serde_json::from_value(addresses).expect("addresses");
        let d = desired(
            &gw,
            &class(),
            &config(service),
            &settings(),
            &Default::default(),
        );
        d.service.spec.and_then(|s| s.load_balancer_ip)
    };
    let one = json!([{"type": "IPAddress", "value": "198.51.100.7"}]);
    assert_eq!(
        with(one.clone(), json!({})).as_deref(),
        Some("198.51.100.7")
    );
    // Only a LoadBalancer is given an address that way.
    assert_eq!(with(one, json!({"service": {"type": "NodePort"}})), None);
    // Two cannot be asked with one field (compile says the Gateway's address is not usable);
    // an empty value asks for none in particular.
    let two = json!([{"value": "198.51.100.7"}, {"value": "198.51.100.8"}]);
    assert_eq!(with(two, json!({})), None);
    assert_eq!(with(json!([{"type": "IPAddress"}]), json!({})), None);
    // Read as compile reads them: one address, whatever else says nothing in particular
    // or repeats it in another spelling.
    let same = json!([{"value": "2001:DB8::1"}, {"value": "2001:db8::1"}, {"type": "IPAddress"}]);
    assert_eq!(with(same, json!({})).as_deref(), Some("2001:db8::1"));
    assert_eq!(with(json!(null), json!({})), None);
}

#[test]
fn a_listener_on_the_admin_port_is_never_exposed() {
    let mut gw = gateway();
    gw.spec.listeners[1].port = ADMIN_PORT;
    let d = desired(
        &gw,
        &class(),
        &GatewayConfigSpec::default(),
        &settings(),
        &Default::default(),
    );
    let service: Vec<i32> = d
        .service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| p.port)
        .collect();
    assert_eq!(service, vec![80]);
}

#[test]
fn a_udp_listener_gets_a_udp_port_beside_a_tcp_one_of_the_same_number() {
    let mut gw = gateway();
    gw.spec.listeners = serde_json::from_value(json!([
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"}
    ]))
    .expect("listeners");
    let d = desired(
        &gw,
        &class(),
        &GatewayConfigSpec::default(),
        &settings(),
        &Default::default(),
    );
    let service: Vec<(String, i32, String)> = d
        .service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port,
                p.protocol.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        service,
        [
            ("port-53".to_string(), 53, "TCP".to_string()),
            ("udp-53".to_string(), 53, "UDP".to_string())
        ]
    );
    let pod_ports: Vec<(Option<String>, Option<String>)> = d
        .deployment
        .spec
        .iter()
        .flat_map(|s| s.template.spec.iter())
        .flat_map(|p| p.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| (p.name.clone(), p.protocol.clone()))
        .collect();
    assert!(pod_ports.contains(&(Some("udp-53".into()), Some("UDP".into()))));
}
