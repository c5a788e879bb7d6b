//! Provisioning on the real control plane (API server, etcd, and kube-controller-manager's
//! deployment, replicaset and garbage collector controllers): a Gateway gets its dataplane
//! objects in the dataplane namespace, a GatewayConfig change rolls them, a hand edit is
//! reverted, a bad configuration is refused or reported while the running dataplane stays as
//! it is, and deleting the Gateway removes everything.

use super::cluster;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams};
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
use portico_crds::gatewayconfig::GatewayConfig;
use portico_tests::cluster::{create, create_cluster, start_controller, test_namespace};
use portico_tests::{await_some, await_some_within};
use serde_json::json;
use std::time::Duration;

fn image(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .clone()
}

/// Waits for an Event with `reason` in `ns`.
async fn await_event(client: &kube::Client, ns: &str, reason: &str) -> Event {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    await_some(&format!("a {reason} Event"), || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
    })
    .await
}

/// A controller that provisions the Gateways of `controller_name` into `dataplanes`,
/// leading in `ns`.
fn provisioner(
    ns: &str,
    dataplanes: &str,
    controller_name: &str,
    image: &str,
) -> portico_tests::Proc {
    provisioner_with(ns, dataplanes, controller_name, image, &[])
}

/// [`provisioner`] with more arguments.
fn provisioner_with(
    ns: &str,
    dataplanes: &str,
    controller_name: &str,
    image: &str,
    extra: &[&str],
) -> portico_tests::Proc {
    let mut args = vec![
        "--controller-name",
        controller_name,
        "--lease-namespace",
        ns,
        "--lease-name",
        "provisioner",
        "--dataplane-namespace",
        dataplanes,
        "--dataplane-image",
        image,
    ];
    args.extend_from_slice(extra);
    start_controller("provisioner", &args)
}

#[tokio::test]
async fn a_gateway_gets_its_dataplane_which_follows_its_config_and_goes_with_it() {
    let client = cluster().client().await;
    let ns = test_namespace(&client, "provision").await;
    let dp = test_namespace(&client, "provision-dp").await;
    let name = portico_compile::dataplane_name(&ns, "gw");
    let name = name.as_str();
    let controller_name = format!("portico.dev/{ns}");
    let _controller = provisioner(&ns, &dp, &controller_name, "portico/dataplane:default");
    // The class lets its Gateways' own configurations choose the image.
    create::<GatewayConfig>(
        &client,
        &ns,
        json!({"apiVersion": "portico.dev/v1alpha1", "kind": "GatewayConfig", "metadata": {"name": "class"},
               "spec": {"gatewayOverrides": {"image": true}}}),
    )
    .await;
    create_cluster::<GatewayClass>(
        &client,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": ns}, "spec": {"controllerName": controller_name,
               "parametersRef": {"group": "portico.dev", "kind": "GatewayConfig", "name": "class", "namespace": ns}}}),
    )
    .await;
    create::<GatewayConfig>(
        &client,
        &ns,
        json!({"apiVersion": "portico.dev/v1alpha1", "kind": "GatewayConfig", "metadata": {"name": "edge"},
               "spec": {"dataplane": {"image": "portico/dataplane:1", "replicas": 3},
                        "service": {"type": "ClusterIP"}}}),
    )
    .await;
    create::<Gateway>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "gw"},
               "spec": {"gatewayClassName": ns,
                        "infrastructure": {"labels": {"team": "web"},
                                           "parametersRef": {"group": "portico.dev", "kind": "GatewayConfig", "name": "edge"}},
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"},
                                      {"name": "alt", "port": 8080, "protocol": "HTTP"}]}}),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &dp);
    let d = await_some("the dataplane Deployment", || async {
        deployments.get_opt(name).await.ok().flatten()
    })
    .await;
    // Each object says which Gateway it is for, and is owned by its class (an owner cannot
    // be in another namespace).
    let key = format!("{ns}/gw");
    let owned_by_gateway = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get("portico.dev/gateway"))
            == Some(&key)
            && meta
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "GatewayClass" && o.name == ns)
    };
    assert!(owned_by_gateway(&d.metadata), "{:?}", d.metadata);
    assert_eq!(image(&d).as_deref(), Some("portico/dataplane:1"));
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(
        d.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("team"))
            .map(String::as_str),
        Some("web"),
        "spec.infrastructure labels are propagated"
    );
    // Everything else, each owned by the Gateway.
    let sa = await_some("the ServiceAccount", || async {
        Api::<ServiceAccount>::namespaced(client.clone(), &dp)
            .get_opt(name)
            .await
            .ok()
            .flatten()
    })
    .await;
    assert!(owned_by_gateway(&sa.metadata));
    // The objects are applied one after the other: wait for the last one.
    let pdb = await_some("the PDB", || async {
        Api::<PodDisruptionBudget>::namespaced(client.clone(), &dp)
            .get_opt(name)
            .await
            .ok()
            .flatten()
    })
    .await;
    assert!(owned_by_gateway(&pdb.metadata));
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &dp)
        .get(&format!("{name}-controller-ca"))
        .await
        .expect("CA ConfigMap");
    assert!(
        cm.data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .is_some_and(|c| c.contains("BEGIN CERTIFICATE"))
    );
    // Nothing is made next to the Gateway.
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    let svc = Api::<Service>::namespaced(client.clone(), &dp)
        .get(name)
        .await
        .expect("Service");
    assert!(owned_by_gateway(&svc.metadata));
    let spec = svc.spec.clone().expect("service spec");
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    let ports: Vec<i32> = spec.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, vec![80, 8080]);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &dp);
    assert!(
        hpas.get_opt(name).await.expect("get").is_none(),
        "no autoscaling asked for"
    );
    // The Gateway's address is its Service's cluster IP.
    let cluster_ip = spec.cluster_ip.clone().expect("cluster IP");
    await_some("the Gateway's address", || async {
        let gw = Api::<Gateway>::namespaced(client.clone(), &ns)
            .get("gw")
            .await
            .ok()?;
        gw.status?
            .addresses?
            .iter()
            .any(|a| a.value == cluster_ip)
            .then_some(())
    })
    .await;
    // An Event says what was done.
    await_some("a Provisioned event", || async {
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Provisioned"))
            .then_some(())
    })
    .await;

    // A new image and autoscaling: the Deployment rolls (a new ReplicaSet) and gets an HPA.
    let configs: Api<GatewayConfig> = Api::namespaced(client.clone(), &ns);
    configs
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"dataplane": {"image": "portico/dataplane:2", "replicas": null},
                                          "autoscaling": {"minReplicas": 2, "maxReplicas": 6}}}),
            ),
        )
        .await
        .expect("update the config");
    let hpa = await_some("the HPA", || async {
        hpas.get_opt(name).await.ok().flatten()
    })
    .await;
    let hpa_spec = hpa.spec;
    assert_eq!((hpa_spec.min_replicas, hpa_spec.max_replicas), (Some(2), 6));
    assert_eq!(hpa_spec.scale_target_ref.name, name);
    await_some("the new image", || async {
        let d = deployments.get(name).await.ok()?;
        (image(&d).as_deref() == Some("portico/dataplane:2")).then_some(())
    })
    .await;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &dp);
    await_some("a rollout (two ReplicaSets)", || async {
        let list = replica_sets.list(&ListParams::default()).await.ok()?;
        (list.items.len() >= 2).then_some(())
    })
    .await;

    // Someone edits the Deployment by hand: the provisioner puts its fields back.
    deployments
        .patch(
            name,
            &PatchParams::apply("someone").force(),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name},
                "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "portico-dataplane", "portico.dev/dataplane": name}},
                         "template": {"metadata": {"labels": {"app.kubernetes.io/name": "portico-dataplane", "portico.dev/dataplane": name}},
                                      "spec": {"containers": [{"name": "dataplane", "image": "evil/image:latest"}]}}}})),
        )
        .await
        .expect("edit the Deployment");
    await_some("the hand edit reverted", || async {
        let d = deployments.get(name).await.ok()?;
        (image(&d).as_deref() == Some("portico/dataplane:2")).then_some(())
    })
    .await;

    // Impossible values: refused by the API server (CEL, schema).
    let refused = configs
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"autoscaling": {"minReplicas": 8, "maxReplicas": 2}}})),
        )
        .await
        .expect_err("min > max is refused");
    assert!(refused.to_string().contains("minReplicas"), "{refused}");
    let refused = configs
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"service": {"type": "Ingress"}}})),
        )
        .await
        .expect_err("an unknown Service type is refused");
    assert!(
        refused.to_string().contains("Ingress") || refused.to_string().contains("type"),
        "{refused}"
    );
    // What CEL cannot see is reported in status; the running dataplane is untouched.
    configs
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"dataplane": {"image": "portico/dataplane:3"},
                                          "redisUrl": "redis://user:secret@redis:6379"}}),
            ),
        )
        .await
        .expect("accepted by the API server");
    let message = await_some("the config reported invalid", || async {
        let c = configs.get("edge").await.ok()?;
        let cond = c
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Accepted")?;
        (cond.status == "False" && cond.reason == "Invalid").then_some(cond.message)
    })
    .await;
    assert!(message.contains("redisUrl"), "{message}");
    let d = deployments.get(name).await.expect("deployment");
    assert_eq!(
        image(&d).as_deref(),
        Some("portico/dataplane:2"),
        "left as it was"
    );

    // Deleting the Gateway removes its dataplane (the leader's sweep).
    Api::<Gateway>::namespaced(client.clone(), &ns)
        .delete("gw", &Default::default())
        .await
        .expect("delete the gateway");
    await_some_within(
        "the dataplane objects gone",
        Duration::from_secs(90),
        || async {
            let gone = deployments.get_opt(name).await.ok()?.is_none()
                && Api::<Service>::namespaced(client.clone(), &dp)
                    .get_opt(name)
                    .await
                    .ok()?
                    .is_none()
                && hpas.get_opt(name).await.ok()?.is_none()
                && Api::<ServiceAccount>::namespaced(client.clone(), &dp)
                    .get_opt(name)
                    .await
                    .ok()?
                    .is_none()
                && Api::<PodDisruptionBudget>::namespaced(client.clone(), &dp)
                    .get_opt(name)
                    .await
                    .ok()?
                    .is_none();
            gone.then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_gateways_own_config_cannot_choose_the_image_or_placement_its_class_does_not_allow() {
    let client = cluster().client().await;
    let ns = test_namespace(&client, "overrides").await;
    let controller_name = format!("portico.dev/{ns}");
    // The dataplane namespace is the controller's own by default.
    let _controller = start_controller(
        "provisioner",
        &[
            "--controller-name",
            &controller_name,
            "--lease-namespace",
            &ns,
            "--dataplane-image",
            "portico/dataplane:trusted",
        ],
    );
    create_cluster::<GatewayClass>(
        &client,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": ns}, "spec": {"controllerName": controller_name}}),
    )
    .await;
    // Whoever may write the Gateway's namespace names an image and a node of their choosing.
    create::<GatewayConfig>(
        &client,
        &ns,
        json!({"apiVersion": "portico.dev/v1alpha1", "kind": "GatewayConfig", "metadata": {"name": "mine"},
               "spec": {"dataplane": {"image": "evil/exfiltrate:1", "replicas": 1,
                                      "nodeSelector": {"kubernetes.io/hostname": "attacker-node"}},
                        "service": {"type": "ClusterIP"}}}),
    )
    .await;
    create::<Gateway>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "gw"},
               "spec": {"gatewayClassName": ns,
                        "infrastructure": {"parametersRef": {"group": "portico.dev", "kind": "GatewayConfig", "name": "mine"}},
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    )
    .await;
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &ns);
    let accepted = await_some("the Gateway's Accepted condition", || async {
        let gw = gateways.get("gw").await.ok()?;
        gw.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Accepted" && c.status == "False")
    })
    .await;
    assert_eq!(accepted.reason, "InvalidParameters");
    assert!(
        accepted.message.contains("dataplane.image") && accepted.message.contains("nodeSelector"),
        "{}",
        accepted.message
    );
    // The dataplane keeps the class's values (here the controller's default image, no node
    // selector); what the Gateway may choose (replicas) it gets.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = await_some("the dataplane Deployment", || async {
        deployments
            .get_opt(&portico_compile::dataplane_name(&ns, "gw"))
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(image(&d).as_deref(), Some("portico/dataplane:trusted"));
    let pod = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    assert!(
        pod.and_then(|p| p.node_selector.as_ref())
            .is_none_or(|n| n.is_empty()),
        "{pod:?}"
    );
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(1));
    await_event(&client, &ns, "OverrideNotAllowed").await;

    // An object with a dataplane's name that does not say it is that Gateway's is never
    // taken over.
    let squat = portico_compile::dataplane_name(&ns, "squat");
    create::<ServiceAccount>(
        &client,
        &ns,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": squat}}),
    )
    .await;
    create::<Gateway>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "squat"},
               "spec": {"gatewayClassName": ns,
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    )
    .await;
    await_event(&client, &ns, "NameInUse").await;
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .get(&squat)
        .await
        .expect("the ServiceAccount");
    assert!(sa.metadata.owner_references.is_none(), "{:?}", sa.metadata);
    assert!(sa.metadata.annotations.is_none(), "{:?}", sa.metadata);
    assert!(deployments.get_opt(&squat).await.ok().flatten().is_none());
}

#[tokio::test]
async fn listener_set_ports_and_a_requested_address_reach_the_dataplane_service() {
    use portico_crds::gateway_api::listenersets::ListenerSet;
    let client = cluster().client().await;
    let ns = test_namespace(&client, "lset-svc").await;
    let dp = test_namespace(&client, "lset-svc-dp").await;
    let name = portico_compile::dataplane_name(&ns, "gw");
    let controller_name = format!("portico.dev/{ns}");
    let _controller = provisioner(&ns, &dp, &controller_name, "portico/dataplane:1");
    create_cluster::<GatewayClass>(
        &client,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": ns}, "spec": {"controllerName": controller_name}}),
    )
    .await;
    create::<Gateway>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "gw"},
               "spec": {"gatewayClassName": ns,
                        "addresses": [{"type": "IPAddress", "value": "198.51.100.7"}],
                        "allowedListeners": {"namespaces": {"from": "Same"}},
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    )
    .await;
    let set = create::<ListenerSet>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ListenerSet",
               "metadata": {"name": "team"},
               "spec": {"parentRef": {"name": "gw"},
                        "listeners": [{"name": "web", "port": 9443, "protocol": "HTTP", "hostname": "team.example.com"},
                                      {"name": "admin", "port": 9901, "protocol": "HTTP"}]}}),
    )
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), &dp);
    let ports = |svc: &Service| -> Vec<i32> {
        svc.spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .map(|p| p.port)
            .collect()
    };
    // The set's served port is exposed; the admin port it asked for is refused, not exposed.
    let svc = await_some("the Service with the set's port", || async {
        let svc = services.get_opt(&name).await.ok().flatten()?;
        (ports(&svc) == [80, 9443]).then_some(svc)
    })
    .await;
    let spec = svc.spec.clone().expect("spec");
    assert_eq!(spec.load_balancer_ip.as_deref(), Some("198.51.100.7"));
    let pods = Api::<Deployment>::namespaced(client.clone(), &dp)
        .get(&name)
        .await
        .expect("Deployment");
    let container_ports: Vec<i32> = pods
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers)
        .unwrap_or_default()
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| p.container_port)
        .collect();
    assert!(!container_ports.contains(&9443), "{container_ports:?}");

    // No load balancer here grants the address: the Gateway says so.
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &ns);
    let programmed = |want: &'static str| {
        let gateways = gateways.clone();
        async move {
            await_some(&format!("Programmed reason {want}"), || async {
                let gw = gateways.get("gw").await.ok()?;
                gw.status?
                    .conditions?
                    .into_iter()
                    .find(|c| c.type_ == "Programmed" && c.reason == want)
            })
            .await
        }
    };
    let c = programmed("AddressNotUsable").await;
    assert!(c.message.contains("198.51.100.7"), "{}", c.message);
    // A load balancer grants it (as a cloud's would, in the Service's status).
    services
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}}),
            ),
        )
        .await
        .expect("grant the address");
    // Now only the dataplane's acknowledgement is missing (none runs in this test).
    programmed("Pending").await;
    let addresses = await_some("the granted address in status", || async {
        let gw = gateways.get("gw").await.ok()?;
        let a = gw.status?.addresses?;
        (a.len() == 1).then_some(a)
    })
    .await;
    assert_eq!(addresses[0].value, "198.51.100.7");

    // The set goes: so does its port.
    Api::<ListenerSet>::namespaced(client.clone(), &ns)
        .delete(
            &set.metadata.name.clone().unwrap_or_default(),
            &Default::default(),
        )
        .await
        .expect("delete the set");
    await_some("the Service without the set's port", || async {
        let svc = services.get_opt(&name).await.ok().flatten()?;
        (ports(&svc) == [80]).then_some(())
    })
    .await;
}

/// A namespace listed in `--gateway-namespaces` gets its Gateway's dataplane beside the
/// Gateway: owned by it, running as the installer's account, labelled with its name. The
/// dataplane it had in the dataplane namespace serves on until the new one does (an
/// available replica: here the test marks the new pods Ready, there being no kubelet), then
/// goes; deleting the Gateway takes the new one with it (the garbage collector).
#[tokio::test]
async fn a_listed_namespace_gets_its_dataplane_beside_the_gateway_and_the_old_one_goes_once_it_serves()
 {
    let client = cluster().client().await;
    let ns = test_namespace(&client, "beside").await;
    let dp = test_namespace(&client, "beside-dp").await;
    let name = portico_compile::dataplane_name(&ns, "gw");
    let name = name.as_str();
    let controller_name = format!("portico.dev/{ns}");
    // The lease lives in the dataplane namespace: the Gateway's may not be the controller's.
    let first = provisioner(&dp, &dp, &controller_name, "portico/dataplane:1");
    super::class(&client, &ns, &controller_name).await;
    create::<Gateway>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "gw"},
               "spec": {"gatewayClassName": ns,
                        "infrastructure": {"labels": {"team": "web"}, "annotations": {"cost": "7"}},
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    )
    .await;
    let old: Api<Deployment> = Api::namespaced(client.clone(), &dp);
    await_some("the dataplane in the dataplane namespace", || async {
        old.get_opt(name).await.ok().flatten()
    })
    .await;
    drop(first);

    // What the chart makes in a listed namespace: the account its dataplanes run as.
    create::<ServiceAccount>(
        &client,
        &ns,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "portico-dataplane"}}),
    )
    .await;
    let _second = provisioner_with(
        &dp,
        &dp,
        &controller_name,
        "portico/dataplane:1",
        &["--gateway-namespaces", &ns],
    );
    let beside: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = await_some("the dataplane beside the Gateway", || async {
        beside.get_opt(name).await.ok().flatten()
    })
    .await;
    let gw = Api::<Gateway>::namespaced(client.clone(), &ns)
        .get("gw")
        .await
        .expect("gateway");
    let owner = d
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .next()
        .expect("an owner");
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), Some(&owner.uid)),
        ("Gateway", "gw", gw.metadata.uid.as_ref())
    );
    let labels = d.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("web"));
    assert_eq!(
        labels
            .get("gateway.networking.k8s.io/gateway-name")
            .map(String::as_str),
        Some("gw")
    );
    let pod = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("portico-dataplane")
    );
    assert!(
        Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .get_opt(name)
            .await
            .expect("get")
            .is_none(),
        "no ServiceAccount is made beside the Gateway"
    );
    let service = await_some("the Service beside the Gateway", || async {
        Api::<Service>::namespaced(client.clone(), &ns)
            .get_opt(name)
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(
        service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("cost"))
            .map(String::as_str),
        Some("7")
    );

    // Three sweeps (10 s apart) later, the new dataplane has not served yet: the old stays.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        old.get_opt(name).await.expect("get").is_some(),
        "the old dataplane serves until the new one does"
    );

    // The new pods become Ready: the old dataplane goes.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    let selector = format!("portico.dev/dataplane={name}");
    let listed = await_some("the new dataplane's pods", || async {
        let l = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .ok()?;
        (!l.items.is_empty()).then_some(l.items)
    })
    .await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    for p in listed {
        let pod_name = p.metadata.name.clone().expect("name");
        pods.patch_status(
            &pod_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now}]}})),
        )
        .await
        .expect("mark the pod Ready");
    }
    await_some_within(
        "the old dataplane gone",
        Duration::from_secs(90),
        || async {
            let gone = old.get_opt(name).await.ok()?.is_none()
                && Api::<ServiceAccount>::namespaced(client.clone(), &dp)
                    .get_opt(name)
                    .await
                    .ok()?
                    .is_none();
            gone.then_some(())
        },
    )
    .await;
    assert!(beside.get_opt(name).await.expect("get").is_some());

    // Deleting the Gateway deletes what is beside it.
    Api::<Gateway>::namespaced(client.clone(), &ns)
        .delete("gw", &Default::default())
        .await
        .expect("delete the gateway");
    await_some_within(
        "the dataplane beside the Gateway gone",
        Duration::from_secs(90),
        || async { beside.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await;
}
