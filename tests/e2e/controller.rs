//! The controller against a real kube-apiserver: status conditions as the Gateway API
//! specifies them (HTTPRoutes, GRPCRoutes, TCPRoutes, HTTPS listeners and their Secrets), ReferenceGrants,
//! no writes when nothing changes, leader failover, AuthPolicy attachment and its CEL rules,
//! an object the controller cannot decode skipped and reported. Against the
//! experimental-channel CRDs.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use portico_crds::gateway_api::experimental::grpcroutes::GrpcRoute;
use portico_crds::gateway_api::experimental::httproutes::HttpRoute;
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
use portico_crds::gateway_api::referencegrants::ReferenceGrant;
use portico_tests::cluster::{
    Channel, ControlPlane, control_plane_with, create, create_cluster, shared_controller,
    start_controller, test_namespace,
};
use portico_tests::tls::self_signed;
use portico_tests::{HttpClient, await_some, free_port};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

const CONTROLLER: &str = "portico.dev/gateway-controller";

/// This binary runs the controller against the experimental-channel CRDs (the others use the
/// standard channel): every test starts here, before anything else touches the cluster.
fn cluster() -> &'static ControlPlane {
    control_plane_with(Channel::Experimental)
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn is(conditions: &[Condition], type_: &str, status: &str, reason: &str) -> bool {
    condition(conditions, type_).is_some_and(|c| c.status == status && c.reason == reason)
}

/// A GatewayClass named after the test namespace (cluster-scoped names must not collide).
async fn class(client: &Client, name: &str, controller: &str) {
    create_cluster::<GatewayClass>(
        client,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": name}, "spec": {"controllerName": controller}}),
    )
    .await;
}

async fn gateway(client: &Client, ns: &str, class: &str) {
    create::<Gateway>(
        client,
        ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "gw"},
               "spec": {"gatewayClassName": class, "listeners": [
                   {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}},
                   {"name": "admin", "port": 8080, "protocol": "HTTP", "hostname": "admin.example.com"}]}}),
    )
    .await;
}

async fn service(client: &Client, ns: &str, name: &str) {
    create::<Service>(
        client,
        ns,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"ports": [{"name": "http", "port": 80}]}}),
    )
    .await;
}

async fn route(client: &Client, ns: &str, name: &str, gw_ns: &str, backend: serde_json::Value) {
    create::<HttpRoute>(
        client,
        ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": name},
               "spec": {"parentRefs": [{"name": "gw", "namespace": gw_ns, "sectionName": "http"}],
                        "rules": [{"backendRefs": [backend]}]}}),
    )
    .await;
}

/// A GRPCRoute on the `admin` listener: an HTTPRoute without hostnames holds every host of
/// the `http` listener, and the two kinds may not share a host.
async fn grpc_route(client: &Client, ns: &str, name: &str) {
    create::<GrpcRoute>(
        client,
        ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
               "metadata": {"name": name},
               "spec": {"parentRefs": [{"name": "gw", "sectionName": "admin"}],
                        "hostnames": ["admin.example.com"],
                        "rules": [{"matches": [{"method": {"service": "pkg.Echo", "method": "Say"}}],
                                   "backendRefs": [{"name": "svc", "port": 80}]}]}}),
    )
    .await;
}

/// A `kubernetes.io/tls` Secret.
async fn tls_secret(client: &Client, ns: &str, name: &str, cert_pem: &str, key_pem: &str) {
    create::<Secret>(
        client,
        ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
               "type": "kubernetes.io/tls",
               "stringData": {"tls.crt": cert_pem, "tls.key": key_pem}}),
    )
    .await;
}

/// The conditions of a listener of Gateway `name`, once `check` holds for them.
async fn await_listener(
    client: &Client,
    ns: &str,
    name: &str,
    listener: &str,
    check: impl Fn(&[Condition]) -> bool,
) {
    let api: Api<Gateway> = Api::namespaced(client.clone(), ns);
    await_some(&format!("listener {listener} of {name}"), || async {
        let g = api.get(name).await.ok()?;
        let l = g
            .status?
            .listeners?
            .into_iter()
            .find(|l| l.name == listener)?;
        check(&l.conditions).then_some(())
    })
    .await;
}

/// Waits until the route's parent status from our controller satisfies `check`.
async fn await_route(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&[Condition]) -> bool,
) -> HttpRoute {
    let api: Api<HttpRoute> = Api::namespaced(client.clone(), ns);
    await_some(what, || async {
        let r = api.get_opt(name).await.ok().flatten()?;
        let ok = r
            .status
            .as_ref()?
            .parents
            .iter()
            .any(|p| p.controller_name == CONTROLLER && check(&p.conditions));
        ok.then_some(r)
    })
    .await
}

#[tokio::test]
async fn status_conditions_follow_the_gateway_api() {
    let client = cluster().client().await;
    shared_controller();
    let ns = test_namespace(&client, "status").await;
    class(&client, &ns, CONTROLLER).await;
    gateway(&client, &ns, &ns).await;
    service(&client, &ns, "svc").await;
    route(
        &client,
        &ns,
        "good",
        &ns,
        json!({"name": "svc", "port": 80}),
    )
    .await;
    route(
        &client,
        &ns,
        "missing",
        &ns,
        json!({"name": "nope", "port": 80}),
    )
    .await;
    route(
        &client,
        &ns,
        "kind",
        &ns,
        json!({"name": "svc", "kind": "ConfigMap", "group": "", "port": 80}),
    )
    .await;
    grpc_route(&client, &ns, "grpc").await;

    let classes: Api<GatewayClass> = Api::all(client.clone());
    let gc = await_some("GatewayClass Accepted", || async {
        let c = classes.get(&ns).await.ok()?;
        is(
            c.status.as_ref()?.conditions.as_deref()?,
            "Accepted",
            "True",
            "Accepted",
        )
        .then_some(c)
    })
    .await;
    let features: Vec<String> = gc
        .status
        .and_then(|s| s.supported_features)
        .unwrap_or_default()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert!(features.iter().any(|f| f == "HTTPRoute"), "{features:?}");
    assert!(features.iter().any(|f| f == "GRPCRoute"), "{features:?}");
    // The experimental channel is what is installed here: its extra kinds exist.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(
        crds.get_opt("xbackendtrafficpolicies.gateway.networking.x-k8s.io")
            .await
            .expect("get CRD")
            .is_some()
    );

    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &ns);
    let gw = await_some("Gateway status with 3 + 1 attached routes", || async {
        let g = gateways.get("gw").await.ok()?;
        let s = g.status.as_ref()?;
        let count = |name: &str| {
            s.listeners
                .iter()
                .flatten()
                .find(|l| l.name == name)
                .map(|l| l.attached_routes)
        };
        (count("http") == Some(3) && count("admin") == Some(1)).then_some(g.clone())
    })
    .await;
    let status = gw.status.clone().expect("status");
    let conditions = status.conditions.clone().unwrap_or_default();
    assert!(
        is(&conditions, "Accepted", "True", "Accepted"),
        "{conditions:?}"
    );
    // Programmed waits for dataplanes to acknowledge a snapshot; none is connected here.
    assert!(
        is(&conditions, "Programmed", "False", "Pending"),
        "{conditions:?}"
    );
    assert!(
        conditions
            .iter()
            .all(|c| c.observed_generation == gw.metadata.generation)
    );
    for l in status.listeners.as_deref().unwrap_or_default() {
        assert!(
            is(&l.conditions, "Accepted", "True", "Accepted"),
            "{}: {:?}",
            l.name,
            l.conditions
        );
        assert!(
            is(&l.conditions, "ResolvedRefs", "True", "ResolvedRefs"),
            "{}",
            l.name
        );
        assert!(
            is(&l.conditions, "Conflicted", "False", "NoConflicts"),
            "{}",
            l.name
        );
        let kinds: Vec<&str> = l
            .supported_kinds
            .iter()
            .flatten()
            .map(|k| k.kind.as_str())
            .collect();
        assert_eq!(kinds, ["GRPCRoute", "HTTPRoute"]);
    }

    // The dataplane Service appears in the dataplane namespace (the shared controller's is
    // `default`, its lease namespace; the provisioner would make it): its cluster IP becomes
    // the Gateway's address.
    let dataplane_name = portico_compile::dataplane_name(&ns, "gw");
    let dataplane: Service = create(
        &client,
        "default",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": dataplane_name},
               "spec": {"ports": [{"name": "http", "port": 80}]}}),
    )
    .await;
    let cluster_ip = dataplane
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a cluster IP");
    await_some("the Gateway to report its Service's address", || async {
        let g = gateways.get("gw").await.ok()?;
        let a = g.status?.addresses?;
        (a.len() == 1 && a[0].value == cluster_ip && a[0].r#type.as_deref() == Some("IPAddress"))
            .then_some(())
    })
    .await;
    Api::<Service>::namespaced(client.clone(), "default")
        .delete(&dataplane_name, &Default::default())
        .await
        .expect("delete the dataplane Service");

    let good = await_route(
        &client,
        &ns,
        "good",
        "good route accepted and resolved",
        |c| is(c, "Accepted", "True", "Accepted") && is(c, "ResolvedRefs", "True", "ResolvedRefs"),
    )
    .await;
    let parent = &good.status.as_ref().expect("status").parents[0];
    assert_eq!(parent.parent_ref.name, "gw");
    assert_eq!(parent.parent_ref.section_name.as_deref(), Some("http"));
    await_route(&client, &ns, "missing", "BackendNotFound", |c| {
        is(c, "Accepted", "True", "Accepted") && is(c, "ResolvedRefs", "False", "BackendNotFound")
    })
    .await;
    await_route(&client, &ns, "kind", "InvalidKind", |c| {
        is(c, "ResolvedRefs", "False", "InvalidKind")
    })
    .await;
    let grpc: Api<GrpcRoute> = Api::namespaced(client.clone(), &ns);
    await_some("GRPCRoute accepted and resolved", || async {
        let r = grpc.get("grpc").await.ok()?;
        r.status?
            .parents
            .iter()
            .any(|p| {
                p.controller_name == CONTROLLER
                    && is(&p.conditions, "Accepted", "True", "Accepted")
                    && is(&p.conditions, "ResolvedRefs", "True", "ResolvedRefs")
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn https_listeners_report_their_certificate_references() {
    let client = cluster().client().await;
    shared_controller();
    let ns = test_namespace(&client, "https").await;
    let certs = test_namespace(&client, "https-certs").await;
    class(&client, &ns, CONTROLLER).await;
    let (cert, key) = self_signed(&["a.example.com"]);
    let (_, other_key) = self_signed(&["a.example.com"]);
    tls_secret(&client, &ns, "good", &cert, &key).await;
    tls_secret(&client, &ns, "mismatched", &cert, &other_key).await;
    tls_secret(&client, &certs, "shared", &cert, &key).await;
    let listener = |name: &str, host: &str, secret: serde_json::Value| {
        json!({"name": name, "port": 443, "protocol": "HTTPS", "hostname": host,
               "tls": {"certificateRefs": [secret]}})
    };
    create::<Gateway>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "gw"},
        "spec": {"gatewayClassName": ns, "listeners": [
            listener("good", "a.example.com", json!({"name": "good"})),
            listener("missing", "b.example.com", json!({"name": "nope"})),
            listener("mismatched", "c.example.com", json!({"name": "mismatched"})),
            listener("foreign", "d.example.com", json!({"name": "shared", "namespace": certs})),
        ]}}),
    )
    .await;
    let ok = |c: &[Condition]| {
        is(c, "Accepted", "True", "Accepted") && is(c, "ResolvedRefs", "True", "ResolvedRefs")
    };
    await_listener(&client, &ns, "gw", "good", ok).await;
    for (l, reason) in [
        ("missing", "InvalidCertificateRef"),
        ("mismatched", "InvalidCertificateRef"),
        ("foreign", "RefNotPermitted"),
    ] {
        await_listener(&client, &ns, "gw", l, |c| {
            is(c, "ResolvedRefs", "False", reason) && is(c, "Programmed", "False", "Invalid")
        })
        .await;
    }
    // The grant and the missing Secret arrive: both listeners resolve without a restart.
    create::<ReferenceGrant>(
        &client,
        &certs,
        json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
               "metadata": {"name": "gateways"},
               "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": ns}],
                        "to": [{"group": "", "kind": "Secret", "name": "shared"}]}}),
    )
    .await;
    tls_secret(&client, &ns, "nope", &cert, &key).await;
    await_listener(&client, &ns, "gw", "foreign", ok).await;
    await_listener(&client, &ns, "gw", "missing", ok).await;
}

#[tokio::test]
async fn listener_sets_get_their_status_and_lose_it_when_they_leave() {
    use portico_crds::gateway_api::listenersets::ListenerSet;
    let client = cluster().client().await;
    shared_controller();
    let ns = test_namespace(&client, "lset").await;
    class(&client, &ns, CONTROLLER).await;
    create::<Gateway>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "gw"},
               "spec": {"gatewayClassName": ns, "allowedListeners": {"namespaces": {"from": "Same"}},
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP", "hostname": "gw.example.com"}]}}),
    )
    .await;
    service(&client, &ns, "svc").await;
    let set = |name: &str, host: &str| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ListenerSet",
               "metadata": {"name": name},
               "spec": {"parentRef": {"name": "gw"},
                        "listeners": [{"name": "web", "port": 80, "protocol": "HTTP", "hostname": host}]}})
    };
    create::<ListenerSet>(&client, &ns, set("team", "team.example.com")).await;
    // Takes the Gateway's own hostname: conflicted.
    create::<ListenerSet>(&client, &ns, set("greedy", "gw.example.com")).await;
    create::<HttpRoute>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "on-set"},
               "spec": {"parentRefs": [{"kind": "ListenerSet", "name": "team"}],
                        "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}}),
    )
    .await;

    let sets: Api<ListenerSet> = Api::namespaced(client.clone(), &ns);
    let listener = |ls: &ListenerSet| {
        ls.status
            .as_ref()
            .and_then(|s| s.listeners.clone())
            .unwrap_or_default()
            .into_iter()
            .find(|l| l.name == "web")
    };
    let team = await_some("ListenerSet team accepted with its route", || async {
        let ls = sets.get("team").await.ok()?;
        let c = ls.status.as_ref()?.conditions.clone()?;
        let ok = is(&c, "Accepted", "True", "Accepted")
            && c.iter()
                .all(|c| c.observed_generation == ls.metadata.generation)
            && listener(&ls)?.attached_routes == 1;
        ok.then_some(ls)
    })
    .await;
    let web = listener(&team).expect("listener");
    assert!(is(&web.conditions, "Conflicted", "False", "NoConflicts"));
    assert_eq!(
        web.supported_kinds
            .unwrap_or_default()
            .iter()
            .map(|k| k.kind.as_str())
            .collect::<Vec<_>>(),
        ["GRPCRoute", "HTTPRoute"]
    );
    await_some("ListenerSet greedy conflicted", || async {
        let ls = sets.get("greedy").await.ok()?;
        let c = ls.status.as_ref()?.conditions.clone()?;
        let l = listener(&ls)?;
        (is(&c, "Accepted", "False", "ListenersNotValid")
            && is(&l.conditions, "Conflicted", "True", "HostnameConflict")
            && is(&l.conditions, "Accepted", "False", "HostnameConflict"))
        .then_some(())
    })
    .await;
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &ns);
    await_some("Gateway counts one ListenerSet", || async {
        let g = gateways.get("gw").await.ok()?;
        (g.status?.attached_listener_sets == Some(1)).then_some(())
    })
    .await;
    let route = await_route(&client, &ns, "on-set", "route accepted on the set", |c| {
        is(c, "Accepted", "True", "Accepted")
    })
    .await;
    let parent = &route.status.expect("status").parents[0].parent_ref;
    assert_eq!(parent.kind.as_deref(), Some("ListenerSet"));
    assert_eq!(parent.name, "team");

    // The set moves to a Gateway that does not exist: what we said of it is withdrawn.
    sets.patch(
        "team",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"parentRef": {"name": "elsewhere"}}})),
    )
    .await
    .expect("move the set");
    await_some("ListenerSet team's status withdrawn", || async {
        let ls = sets.get("team").await.ok()?;
        let accepted = ls
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .and_then(|c| condition(c, "Accepted"))
            .is_some_and(|c| c.status == "True");
        (!accepted && listener(&ls).is_none()).then_some(())
    })
    .await;
    await_some("Gateway counts no ListenerSet", || async {
        let g = gateways.get("gw").await.ok()?;
        (g.status?.attached_listener_sets.unwrap_or(0) == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn cross_namespace_backends_need_a_reference_grant() {
    let client = cluster().client().await;
    shared_controller();
    let ns = test_namespace(&client, "grant").await;
    let other = test_namespace(&client, "grant-routes").await;
    class(&client, &ns, CONTROLLER).await;
    gateway(&client, &ns, &ns).await;
    service(&client, &ns, "svc").await;
    route(
        &client,
        &other,
        "cross",
        &ns,
        json!({"name": "svc", "namespace": ns, "port": 80}),
    )
    .await;
    await_route(&client, &other, "cross", "RefNotPermitted", |c| {
        is(c, "Accepted", "True", "Accepted") && is(c, "ResolvedRefs", "False", "RefNotPermitted")
    })
    .await;
    create::<ReferenceGrant>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
               "metadata": {"name": "allow"},
               "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": other}],
                        "to": [{"group": "", "kind": "Service"}]}}),
    )
    .await;
    await_route(
        &client,
        &other,
        "cross",
        "ResolvedRefs after the grant",
        |c| is(c, "ResolvedRefs", "True", "ResolvedRefs"),
    )
    .await;
}

#[tokio::test]
async fn tcp_and_udp_routes_get_their_status_and_a_reference_grant_lets_them_cross_namespaces() {
    use portico_crds::l4::TcpRoute;
    let client = cluster().client().await;
    shared_controller();
    let ns = test_namespace(&client, "tcp").await;
    let other = test_namespace(&client, "tcp-routes").await;
    class(&client, &ns, CONTROLLER).await;
    create::<Gateway>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "gw"},
               "spec": {"gatewayClassName": ns, "listeners": [
                   {"name": "db", "port": 5432, "protocol": "TCP", "allowedRoutes": {"namespaces": {"from": "All"}}},
                   {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}},
                   {"name": "dns", "port": 5432, "protocol": "UDP"}]}}),
    )
    .await;
    service(&client, &ns, "svc").await;
    // A UDPRoute on the UDP listener sharing the TCP one's port number: attached, and its
    // backend refused for having no UDP port.
    create::<portico_crds::l4::UdpRoute>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "UDPRoute",
               "metadata": {"name": "dns"},
               "spec": {"parentRefs": [{"name": "gw", "sectionName": "dns"}],
                        "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}}),
    )
    .await;
    let udp_routes: Api<portico_crds::l4::UdpRoute> = Api::namespaced(client.clone(), &ns);
    await_some("UDPRoute status", || async {
        let r = udp_routes.get_opt("dns").await.ok().flatten()?;
        let ok = r.status?.parents.iter().any(|p| {
            p.controller_name == CONTROLLER
                && is(&p.conditions, "Accepted", "True", "Accepted")
                && is(&p.conditions, "ResolvedRefs", "False", "BackendNotFound")
        });
        ok.then_some(())
    })
    .await;
    let tcp_route = |name: &str, section: &str| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "TCPRoute",
               "metadata": {"name": name},
               "spec": {"parentRefs": [{"name": "gw", "namespace": ns, "sectionName": section}],
                        "rules": [{"backendRefs": [{"name": "svc", "namespace": ns, "port": 80}]}]}})
    };
    create::<TcpRoute>(&client, &other, tcp_route("cross", "db")).await;
    create::<TcpRoute>(&client, &other, tcp_route("on-http", "http")).await;
    let api: Api<TcpRoute> = Api::namespaced(client.clone(), &other);
    let await_tcp = |name: &'static str, what: &'static str, check: fn(&[Condition]) -> bool| {
        let api = api.clone();
        async move {
            await_some(what, || async {
                let r = api.get_opt(name).await.ok().flatten()?;
                let parents = r.status?.parents;
                let ok = parents.iter().any(|p| {
                    p.controller_name == CONTROLLER
                        && p.parent_ref.kind.as_deref() == Some("Gateway")
                        && p.parent_ref.group.as_deref() == Some("gateway.networking.k8s.io")
                        && check(&p.conditions)
                });
                ok.then_some(())
            })
            .await;
        }
    };
    await_tcp("cross", "TCPRoute RefNotPermitted", |c| {
        is(c, "Accepted", "True", "Accepted") && is(c, "ResolvedRefs", "False", "RefNotPermitted")
    })
    .await;
    await_tcp("on-http", "TCPRoute NotAllowedByListeners", |c| {
        is(c, "Accepted", "False", "NotAllowedByListeners")
    })
    .await;
    create::<ReferenceGrant>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
               "metadata": {"name": "allow-tcp"},
               "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "TCPRoute", "namespace": other}],
                        "to": [{"group": "", "kind": "Service"}]}}),
    )
    .await;
    await_tcp("cross", "TCPRoute ResolvedRefs after the grant", |c| {
        is(c, "ResolvedRefs", "True", "ResolvedRefs")
    })
    .await;
    // The TCP listener counts it; the HTTP one takes no TCPRoute.
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &ns);
    await_some("the TCP listener's attached route", || async {
        let g = gateways.get("gw").await.ok()?;
        let listeners = g.status?.listeners?;
        let db = listeners.iter().find(|l| l.name == "db")?;
        let kinds: Vec<&str> = db
            .supported_kinds
            .iter()
            .flatten()
            .map(|k| k.kind.as_str())
            .collect();
        let dns = listeners.iter().find(|l| l.name == "dns")?;
        let accepted = dns
            .conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True");
        (db.attached_routes == 1 && kinds == ["TCPRoute"] && dns.attached_routes == 1 && accepted)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn nothing_is_written_in_a_quiet_minute() {
    let client = cluster().client().await;
    shared_controller();
    let ns = test_namespace(&client, "quiet").await;
    class(&client, &ns, CONTROLLER).await;
    gateway(&client, &ns, &ns).await;
    service(&client, &ns, "svc").await;
    route(&client, &ns, "r", &ns, json!({"name": "svc", "port": 80})).await;
    grpc_route(&client, &ns, "g").await;
    // An HTTPS Gateway: its Secret watch must not cause writes either.
    let (cert, key) = self_signed(&["a.example.com"]);
    tls_secret(&client, &ns, "cert", &cert, &key).await;
    create::<Gateway>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "tls"},
               "spec": {"gatewayClassName": ns, "listeners": [
                   {"name": "https", "port": 443, "protocol": "HTTPS",
                    "tls": {"certificateRefs": [{"name": "cert"}]}}]}}),
    )
    .await;
    // ListenerSets: one the Gateway refuses (its status is ours), one whose status we
    // withdrew when it moved to a Gateway that does not exist.
    use portico_crds::gateway_api::listenersets::ListenerSet;
    let set = |name: &str| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ListenerSet",
               "metadata": {"name": name},
               "spec": {"parentRef": {"name": "gw"},
                        "listeners": [{"name": "web", "port": 80, "protocol": "HTTP", "hostname": "set.example.com"}]}})
    };
    create::<ListenerSet>(&client, &ns, set("refused")).await;
    create::<ListenerSet>(&client, &ns, set("moved")).await;
    let sets: Api<ListenerSet> = Api::namespaced(client.clone(), &ns);
    let set_condition = |name: &'static str| {
        let sets = sets.clone();
        async move {
            sets.get(name)
                .await
                .ok()?
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "Accepted")
        }
    };
    await_some("ListenerSet moved refused first", || async {
        set_condition("moved")
            .await
            .filter(|c| c.reason == "NotAllowed")
    })
    .await;
    sets.patch(
        "moved",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"parentRef": {"name": "nowhere"}}})),
    )
    .await
    .expect("move the set");
    await_some("ListenerSet moved withdrawn", || async {
        let c = set_condition("moved").await;
        c.is_none_or(|c| c.reason != "NotAllowed").then_some(())
    })
    .await;
    await_some("ListenerSet refused", || async {
        set_condition("refused")
            .await
            .filter(|c| c.reason == "NotAllowed")
    })
    .await;
    await_route(&client, &ns, "r", "route accepted", |c| {
        is(c, "ResolvedRefs", "True", "ResolvedRefs")
    })
    .await;
    await_listener(&client, &ns, "tls", "https", |c| {
        is(c, "ResolvedRefs", "True", "ResolvedRefs")
    })
    .await;
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), &ns);
    let routes: Api<HttpRoute> = Api::namespaced(client.clone(), &ns);
    let grpc: Api<GrpcRoute> = Api::namespaced(client.clone(), &ns);
    let classes: Api<GatewayClass> = Api::all(client.clone());
    // Settle: the gateway's attachedRoutes may still be catching up with the route.
    await_some("gateway to count the route", || async {
        let g = gateways.get("gw").await.ok()?;
        let l = g.status?.listeners?;
        l.iter()
            .any(|l| l.name == "http" && l.attached_routes == 1)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let versions = || async {
        (
            classes.get(&ns).await.expect("class").resource_version(),
            gateways
                .get("gw")
                .await
                .expect("gateway")
                .resource_version(),
            routes.get("r").await.expect("route").resource_version(),
            grpc.get("g").await.expect("grpc route").resource_version(),
            gateways
                .get("tls")
                .await
                .expect("tls gateway")
                .resource_version(),
            sets.get("refused").await.expect("set").resource_version(),
            sets.get("moved").await.expect("set").resource_version(),
        )
    };
    let before = versions().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        versions().await,
        before,
        "no status was written during a quiet minute"
    );
}

#[tokio::test]
async fn a_new_leader_takes_over_when_the_leader_dies() {
    let client = cluster().client().await;
    let ns = test_namespace(&client, "failover").await;
    // A controller name of its own, so the shared controller stays out of this test.
    let name = format!("portico.dev/{ns}");
    let args = |id: &str| {
        vec![
            "--controller-name".to_string(),
            name.clone(),
            "--lease-namespace".into(),
            ns.clone(),
            "--lease-name".into(),
            "leader".into(),
            "--identity".into(),
            id.into(),
            "--lease-duration-s".into(),
            "3".into(),
            "--renew-every-s".into(),
            "1".into(),
        ]
    };
    let a_args = args("a");
    let b_args = args("b");
    let mut a = start_controller(
        "controller-a",
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut b = start_controller(
        "controller-b",
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    class(&client, &ns, &name).await;
    gateway(&client, &ns, &ns).await;
    service(&client, &ns, "svc").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let holder = || async {
        leases
            .get_opt("leader")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    let first = await_some("a leader", || async {
        holder().await.filter(|h| !h.is_empty())
    })
    .await;
    let classes: Api<GatewayClass> = Api::all(client.clone());
    await_some("the class accepted by the leader", || async {
        let c = classes.get(&ns).await.ok()?;
        is(
            c.status.as_ref()?.conditions.as_deref()?,
            "Accepted",
            "True",
            "Accepted",
        )
        .then_some(())
    })
    .await;

    // Kill the leader without letting it release the lease.
    if first == "a" {
        a.kill()
    } else {
        b.kill()
    }
    let second = await_some("the other replica to take over", || async {
        holder().await.filter(|h| !h.is_empty() && *h != first)
    })
    .await;
    assert_ne!(first, second);
    // The new leader writes status for what changes next.
    create::<HttpRoute>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "after"},
               "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}}),
    )
    .await;
    let routes: Api<HttpRoute> = Api::namespaced(client.clone(), &ns);
    await_some("the new leader to write the route's status", || async {
        let r = routes.get("after").await.ok()?;
        r.status?
            .parents
            .iter()
            .any(|p| p.controller_name == name && is(&p.conditions, "Accepted", "True", "Accepted"))
            .then_some(())
    })
    .await;
}

/// Adds `FutureFilter` to the HTTPRoute filter types the API server admits, as a newer
/// Gateway API release would add a filter type (harmless to the other tests of this binary:
/// every object they make stays valid).
async fn admit_future_filter(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "httproutes.gateway.networking.k8s.io";
    let crd = crds.get(name).await.expect("the HTTPRoute CRD");
    let mut v = serde_json::to_value(&crd).expect("CRD JSON");
    let mut changed = false;
    for version in v["spec"]["versions"].as_array_mut().into_iter().flatten() {
        let types = &mut version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rules"]
            ["items"]["properties"]["filters"]["items"]["properties"]["type"]["enum"];
        if let Some(types) = types.as_array_mut()
            && !types.iter().any(|t| t == "FutureFilter")
        {
            types.push(json!("FutureFilter"));
            changed = true;
        }
    }
    if changed {
        let crd: CustomResourceDefinition = serde_json::from_value(v).expect("CRD");
        // Another test of this binary may have changed it first: the admission is all that
        // matters.
        let _ = crds.replace(name, &PostParams::default(), &crd).await;
    }
}

#[path = "controller/policies.rs"]
mod policies;

#[path = "controller/provision.rs"]
mod provision;

/// An object the API server accepts but the controller's Rust type rejects: an HTTPRoute with
/// a filter type of a Gateway API release newer than the one Portico's types were generated
/// from (simulated by adding `FutureFilter` to the filter types this API server's HTTPRoute
/// CRD admits). Decoded plainly, it failed the list of every HTTPRoute, so nothing compiled;
/// now it is logged with its kind, namespace and name, counted, and skipped, while the other
/// routes compile, and it is read as soon as it is fixed.
#[tokio::test]
async fn an_object_the_rust_type_rejects_is_reported_and_skipped_while_the_others_compile() {
    let client = cluster().client().await;
    let ns = test_namespace(&client, "unreadable").await;
    // A controller of its own (its logs and metrics are this test's to read), created after
    // the bad route so that its very first list has to get past it.
    let name = format!("portico.dev/{ns}");
    class(&client, &ns, &name).await;
    gateway(&client, &ns, &ns).await;
    service(&client, &ns, "svc").await;
    route(&client, &ns, "web", &ns, json!({"name": "svc", "port": 80})).await;
    admit_future_filter(&client).await;
    // Created through the dynamic API: the Rust type cannot even hold it.
    let dynamic: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &ApiResource::erase::<HttpRoute>(&()));
    let external: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "external"},
        "spec": {"parentRefs": [{"name": "gw", "sectionName": "http"}],
                 "hostnames": ["external.example.com"],
                 "rules": [{"filters": [{"type": "FutureFilter"}],
                            "backendRefs": [{"name": "svc", "port": 80}]}]}
    }))
    .expect("route JSON");
    // The API server takes a moment to serve the changed schema.
    await_some("the API server admits a FutureFilter", || async {
        dynamic
            .create(&PostParams::default(), &external)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    assert!(
        Api::<HttpRoute>::namespaced(client.clone(), &ns)
            .get("external")
            .await
            .is_err(),
        "the Rust type must reject this route for the test to mean anything"
    );
    let ip = portico_tests::loopback_ip();
    let admin = SocketAddr::new(ip, free_port(ip)).to_string();
    let controller = start_controller(
        "unreadable-controller",
        &[
            "--controller-name",
            &name,
            "--lease-namespace",
            &ns,
            "--identity",
            "unreadable",
            "--admin-address",
            &admin,
        ],
    );

    // The other route of the kind compiles and gets its status.
    let ours = |r: &DynamicObject| {
        r.data["status"]["parents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["controllerName"] == name.as_str())
            .cloned()
            .collect::<Vec<_>>()
    };
    let accepted = |r: &DynamicObject| {
        ours(r).iter().any(|p| {
            p["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Accepted" && c["status"] == "True")
            })
        })
    };
    await_some("web accepted beside the unreadable route", || async {
        accepted(&dynamic.get("web").await.ok()?).then_some(())
    })
    .await;
    // The unreadable one is reported: in the log with its kind, namespace and name ...
    await_some("the unreadable route in the controller's log", || async {
        controller
            .logs()
            .lines()
            .any(|l| {
                l.contains("cannot read this object")
                    && l.contains("HTTPRoute")
                    && l.contains(&ns)
                    && l.contains("external")
                    && l.contains("FutureFilter")
            })
            .then_some(())
    })
    .await;
    // ... and in the metrics; and it got no status from us, as if it did not exist.
    let http = HttpClient::new();
    let admin: SocketAddr = admin.parse().expect("admin address");
    let unreadable = |n: usize| {
        let http = &http;
        async move {
            let m = http.try_get(admin, "admin", "/metrics", &[]).await?.text();
            m.contains(&format!(
                "portico_controller_unreadable_objects{{kind=\"HTTPRoute\"}} {n}"
            ))
            .then_some(())
        }
    };
    await_some("one unreadable HTTPRoute counted", || unreadable(1)).await;
    let bad = dynamic.get("external").await.expect("external route");
    assert!(ours(&bad).is_empty(), "{:?}", bad.data["status"]);

    // Fixed (the filter removed), it is read, compiled and no longer counted.
    dynamic
        .patch(
            "external",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rules": [
                {"backendRefs": [{"name": "svc", "port": 80}]}]}})),
        )
        .await
        .expect("fix the route");
    await_some("the fixed route accepted", || async {
        accepted(&dynamic.get("external").await.ok()?).then_some(())
    })
    .await;
    await_some("no unreadable HTTPRoute left", || unreadable(0)).await;
}

#[tokio::test]
async fn a_backend_tls_policy_reports_to_its_gateway_and_follows_its_ca_config_map() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use portico_crds::gateway_api::backendtlspolicies::BackendTlsPolicy;
    let client = cluster().client().await;
    shared_controller();
    let ns = test_namespace(&client, "btls").await;
    class(&client, &ns, CONTROLLER).await;
    gateway(&client, &ns, &ns).await;
    service(&client, &ns, "svc").await;
    route(&client, &ns, "r", &ns, json!({"name": "svc", "port": 80})).await;
    let (ca, _) = self_signed(&["ca.example.com"]);
    create::<ConfigMap>(
        &client,
        &ns,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca"},
               "data": {"ca.crt": ca}}),
    )
    .await;
    create::<BackendTlsPolicy>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
               "metadata": {"name": "tls"},
               "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "svc", "sectionName": "http"}],
                        "validation": {"caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}],
                                       "hostname": "svc.example.com"}}}),
    )
    .await;
    let policies: Api<BackendTlsPolicy> = Api::namespaced(client.clone(), &ns);
    let await_policy = |what: &'static str, accepted: &'static str, reason: &'static str| {
        let (policies, ns) = (policies.clone(), ns.clone());
        async move {
            await_some(what, || async {
                let p = policies.get("tls").await.ok()?;
                let ok = p.status?.ancestors.iter().any(|a| {
                    a.controller_name == CONTROLLER
                        && a.ancestor_ref.name == "gw"
                        && a.ancestor_ref.namespace.as_deref() == Some(ns.as_str())
                        && a.ancestor_ref.kind.as_deref() == Some("Gateway")
                        && is(&a.conditions, "Accepted", accepted, reason)
                });
                ok.then_some(())
            })
            .await;
        }
    };
    await_policy("the policy accepted", "True", "Accepted").await;
    // The CA emptied in its ConfigMap: the controller's watch of it sees the change.
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    maps.patch(
        "ca",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ca.crt": ""}})),
    )
    .await
    .expect("patch the ConfigMap");
    await_policy(
        "the policy without a valid CA",
        "False",
        "NoValidCACertificate",
    )
    .await;
    maps.patch(
        "ca",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ca.crt": ca}})),
    )
    .await
    .expect("restore the ConfigMap");
    await_policy("the policy accepted again", "True", "Accepted").await;
}
