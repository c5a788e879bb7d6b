//! The snapshot channel end to end: a real controller, real dataplane processes connecting to
//! it over TLS with ServiceAccount tokens, and traffic through them.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use portico_crds::auth::AuthPolicy;
use portico_crds::cache::{CacheInvalidation, CachePolicy};
use portico_crds::gateway_api::experimental::httproutes::HttpRoute;
use portico_crds::gateway_api::gateways::Gateway;
use portico_crds::ratelimit::RateLimitPolicy;
use portico_tests::cluster::create;
use portico_tests::redis::Redis;
use portico_tests::scenario::Setup;
use portico_tests::tls::{Conn, self_signed};
use portico_tests::{HttpClient, TempDir, await_some, free_port};
use serde_json::json;
use std::net::SocketAddr;

/// A route that redirects everything to `host` (no backend needed), and sends /svc to a
/// Service without endpoints.
fn route_json(host: &str) -> serde_json::Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "r"},
           "spec": {"parentRefs": [{"name": "gw"}], "rules": [
               {"matches": [{"path": {"type": "PathPrefix", "value": "/svc"}}],
                "backendRefs": [{"name": "svc", "port": 80}]},
               {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": host}}]}]}})
}

/// The Location a dataplane answers `/` with, once it serves the route.
async fn location(http: &HttpClient, addr: SocketAddr) -> Option<String> {
    let r = http.try_get(addr, "x.test", "/", &[]).await?;
    (r.status == 302).then(|| r.header("location").unwrap_or_default().to_string())
}

#[tokio::test]
async fn two_dataplanes_serve_the_snapshot_and_the_gateway_becomes_programmed() {
    let s = Setup::new("channel").await;
    create::<HttpRoute>(&s.client, &s.ns, route_json("first.example.com")).await;
    let ip = portico_tests::loopback_ip();
    let admin = SocketAddr::new(ip, free_port(ip));
    let admin_arg = admin.to_string();
    let _controller = s.controller_with(&["--admin-address", &admin_arg]);
    let token = s.token(&s.dataplane_account()).await;
    let (state_a, state_b) = (TempDir::new("state"), TempDir::new("state"));
    let a = s.dataplane("replica-a", &token, state_a.path());
    let b = s.dataplane("replica-b", &token, state_b.path());
    s.await_programmed().await;
    // The controller's metrics: both dataplanes connected and current, compiles timed.
    let http = HttpClient::new();
    let gw = format!("{}/gw", s.ns);
    await_some("the dataplanes in the controller's metrics", || async {
        let m = http.try_get(admin, "admin", "/metrics", &[]).await?.text();
        (m.contains(&format!(
            "portico_controller_dataplanes{{gateway=\"{gw}\",state=\"connected\"}} 2"
        )) && m.contains(&format!(
            "portico_controller_dataplanes{{gateway=\"{gw}\",state=\"current\"}} 2"
        )) && m.contains("portico_controller_compile_duration_seconds_count")
            && m.contains("portico_controller_status_write_errors_total 0"))
        .then_some(())
    })
    .await;
    let http = HttpClient::new();
    for dp in [&a, &b] {
        let addr = SocketAddr::new(dp.ip, s.port);
        let loc = await_some("the replica to serve the route", || location(&http, addr)).await;
        assert_eq!(loc, format!("http://first.example.com:{}/", s.port));
        // The Service has no endpoints the dataplane knows of: the route is there, 503.
        assert_eq!(http.get(addr, "x.test", "/svc").await.status, 503);
    }

    // A change reaches every replica without a restart.
    let routes: Api<HttpRoute> = Api::namespaced(s.client.clone(), &s.ns);
    routes
        .patch(
            "r",
            &PatchParams::apply("portico-tests").force(),
            &Patch::Apply(&route_json("second.example.com")),
        )
        .await
        .expect("update the route");
    for dp in [&a, &b] {
        let addr = SocketAddr::new(dp.ip, s.port);
        await_some("the replica to serve the new route", || async {
            location(&http, addr)
                .await
                .filter(|l| l.contains("second.example.com"))
        })
        .await;
    }
    s.await_programmed().await;
}

#[tokio::test]
async fn clients_without_the_right_token_get_nothing() {
    let s = Setup::new("channel-auth").await;
    create::<HttpRoute>(&s.client, &s.ns, route_json("first.example.com")).await;
    let _controller = s.controller();
    let wrong_account = s.token("intruder").await;
    // The dataplane's name, but made by whoever may create ServiceAccounts next to the
    // Gateway, not in the dataplane namespace.
    let squatter = s.token_in(&s.ns, &s.dataplane_account()).await;
    let garbage = s.files.path().join("garbage.token");
    std::fs::write(&garbage, "not-a-token").expect("write");
    let state = TempDir::new("state");
    let intruder = s.dataplane("intruder", &wrong_account, state.path());
    let squatting = s.dataplane("squatter", &squatter, state.path());
    let anonymous = s.dataplane("anonymous", &garbage, state.path());
    await_some("the refusals to be logged", || async {
        (intruder.proc.logs().contains("403")
            && squatting.proc.logs().contains("403")
            && anonymous.proc.logs().contains("401"))
        .then_some(())
    })
    .await;
    for dp in [&intruder, &squatting, &anonymous] {
        assert!(
            !dp.proc.logs().contains("snapshot applied"),
            "{}",
            dp.proc.logs()
        );
        let addr = SocketAddr::new(dp.ip, s.port);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "nothing listens on {addr}"
        );
    }
    assert!(
        !state
            .path()
            .join(format!("snapshot-{}-gw.json", s.ns))
            .exists(),
        "nothing was persisted"
    );
    let programmed = s.gateway_condition("Programmed").await;
    assert!(
        programmed.as_ref().is_none_or(|c| c.status != "True"),
        "refused clients do not program the Gateway: {programmed:?}"
    );
}

/// A namespace listed in `--gateway-namespaces` has its Gateways' dataplanes beside them,
/// running as the installer's account there: that account is served, and the account the
/// dataplane namespace would have had is not any more.
#[tokio::test]
async fn a_namespace_with_its_own_dataplanes_is_served_to_the_installers_account_there() {
    let s = Setup::new("channel-beside").await;
    create::<HttpRoute>(&s.client, &s.ns, route_json("first.example.com")).await;
    // The Gateway's namespace may not be the controller's own: its lease goes elsewhere.
    let _controller = s.controller_leading_in(
        &s.dataplane_ns,
        &[
            "--gateway-namespaces",
            &s.ns,
            "--gateway-namespace-account",
            "edge-dataplane",
        ],
    );
    let beside = s.token_in(&s.ns, "edge-dataplane").await;
    let moved = s.token(&s.dataplane_account()).await;
    let other = s.token_in(&s.ns, "app").await;
    let (state, refused) = (TempDir::new("state"), TempDir::new("state"));
    let dp = s.dataplane("beside", &beside, state.path());
    let old = s.dataplane("old-place", &moved, refused.path());
    let app = s.dataplane("app", &other, refused.path());
    s.await_programmed().await;
    let http = HttpClient::new();
    let addr = SocketAddr::new(dp.ip, s.port);
    let loc = await_some("the dataplane beside the Gateway to serve", || {
        location(&http, addr)
    })
    .await;
    assert_eq!(loc, format!("http://first.example.com:{}/", s.port));
    await_some("the other accounts to be refused", || async {
        (old.proc.logs().contains("403") && app.proc.logs().contains("403")).then_some(())
    })
    .await;
    for refused in [&old, &app] {
        assert!(
            !refused.proc.logs().contains("snapshot applied"),
            "{}",
            refused.proc.logs()
        );
    }
}

#[tokio::test]
async fn dataplanes_keep_serving_without_the_controller_and_restart_from_disk() {
    let s = Setup::new("channel-down").await;
    create::<HttpRoute>(&s.client, &s.ns, route_json("first.example.com")).await;
    let mut controller = s.controller();
    let token = s.token(&s.dataplane_account()).await;
    let state = TempDir::new("state");
    let mut dp = s.dataplane("replica", &token, state.path());
    s.await_programmed().await;
    let http = HttpClient::new();
    let addr = SocketAddr::new(dp.ip, s.port);
    await_some("the route", || location(&http, addr)).await;

    controller.kill();
    for _ in 0..20 {
        assert!(
            location(&http, addr).await.is_some(),
            "still serving without the controller"
        );
    }
    // A restarted dataplane serves the persisted snapshot while the controller is down.
    dp.proc.kill();
    let dp2 = s.dataplane_on(dp.ip, "replica", &token, state.path());
    let loc = await_some("the persisted route after a restart", || {
        location(&http, addr)
    })
    .await;
    assert!(loc.contains("first.example.com"), "{loc}");
    assert!(
        dp2.proc.logs().contains("serving the persisted snapshot"),
        "{}",
        dp2.proc.logs()
    );

    // The controller returns: the dataplane reconnects, and the Gateway's Programmed condition
    // never drops to False on the way (no flapping).
    let _controller = s.controller();
    let watch_until = tokio::time::Instant::now() + std::time::Duration::from_secs(12);
    let mut seen = Vec::new();
    while tokio::time::Instant::now() < watch_until {
        if let Some(c) = s.gateway_condition("Programmed").await {
            seen.push((c.status.clone(), c.reason.clone()));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        seen.iter().all(|(status, _)| status == "True"),
        "Programmed flapped across the controller restart: {seen:?}"
    );
    await_some("the dataplane to reconnect", || async {
        (dp2.proc
            .logs()
            .matches("connected to the controller")
            .count()
            >= 1)
            .then_some(())
    })
    .await;
    s.await_programmed().await;
}

/// An EndpointSlice of Service `svc` with one endpoint: `backend`.
fn slice_json(name: &str, backend: SocketAddr, ready: bool) -> serde_json::Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "svc"}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": backend.port()}],
           "endpoints": [{"addresses": [backend.ip().to_string()], "conditions": {"ready": ready}}]})
}

#[tokio::test]
async fn traffic_follows_endpointslices_without_a_new_snapshot() {
    let s = Setup::new("channel-eps").await;
    create::<HttpRoute>(&s.client, &s.ns, route_json("first.example.com")).await;
    let _controller = s.controller();
    let token = s.token(&s.dataplane_account()).await;
    // The API server refuses loopback addresses in EndpointSlices: these backends live in a
    // network namespace of our own.
    let net = portico_tests::netns::backend_net();
    let (a, b) = (net.echo("a"), net.echo("b"));
    let slices: Api<EndpointSlice> = Api::namespaced(s.client.clone(), &s.ns);
    slices
        .create(
            &PostParams::default(),
            &serde_json::from_value(slice_json("svc-a", a.addr, true)).expect("slice"),
        )
        .await
        .expect("create slice a");
    let state = TempDir::new("state");
    // The dataplane reads EndpointSlices as its own ServiceAccount, allowed to do so in this
    // namespace only: it watches just the namespaces its snapshot sends traffic to.
    let kubeconfig = s.dataplane_kubeconfig(&s.dataplane_account()).await;
    let dp = s.dataplane_as("replica", &token, state.path(), &kubeconfig);
    s.await_programmed().await;
    let http = HttpClient::new();
    let addr = SocketAddr::new(dp.ip, s.port);
    let backend = |want: &'static str| {
        let http = http.clone();
        move || {
            let http = http.clone();
            async move {
                let r = http.try_get(addr, "x.test", "/svc", &[]).await?;
                (r.backend() == want).then_some(())
            }
        }
    };
    await_some("traffic to a", backend("a")).await;

    // An endpoint added: b gets traffic too.
    slices
        .create(
            &PostParams::default(),
            &serde_json::from_value(slice_json("svc-b", b.addr, true)).expect("slice"),
        )
        .await
        .expect("create slice b");
    await_some("traffic to b as well", backend("b")).await;

    // An endpoint removed: only b.
    slices
        .delete("svc-a", &Default::default())
        .await
        .expect("delete slice a");
    await_some("a to be gone", || async {
        let mut names = Vec::new();
        for _ in 0..6 {
            names.push(http.try_get(addr, "x.test", "/svc", &[]).await?.backend());
        }
        names.iter().all(|n| n == "b").then_some(())
    })
    .await;

    // The last endpoint not ready: no healthy upstream.
    slices
        .patch(
            "svc-b",
            &PatchParams::apply("portico-tests").force(),
            &Patch::Apply(&slice_json("svc-b", b.addr, false)),
        )
        .await
        .expect("mark b not ready");
    await_some("503 once no endpoint is ready", || async {
        let r = http.try_get(addr, "x.test", "/svc", &[]).await?;
        (r.status == 503).then_some(())
    })
    .await;
    let applied = dp.proc.logs().matches("snapshot applied").count();
    assert_eq!(
        applied,
        1,
        "endpoint changes needed no new snapshot:\n{}",
        dp.proc.logs()
    );
}

#[tokio::test]
async fn https_listeners_serve_secrets_and_follow_their_rotation() {
    let s = Setup::new("channel-tls").await;
    let (cert, key) = self_signed(&["a.example.com"]);
    let (b_cert, b_key) = self_signed(&["*.b.example.com"]);
    let secret = |name: &str, cert: &str, key: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
               "type": "kubernetes.io/tls", "stringData": {"tls.crt": cert, "tls.key": key}})
    };
    create::<Secret>(&s.client, &s.ns, secret("cert", &cert, &key)).await;
    create::<Secret>(&s.client, &s.ns, secret("cert-b", &b_cert, &b_key)).await;
    let ip = portico_tests::loopback_ip();
    let https_port = free_port(ip);
    let gateways: Api<Gateway> = Api::namespaced(s.client.clone(), &s.ns);
    gateways
        .patch(
            "gw",
            &PatchParams::apply("portico-tests").force(),
            &Patch::Apply(&json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "gw"},
                "spec": {"gatewayClassName": s.ns, "listeners": [
                    {"name": "http", "port": s.port, "protocol": "HTTP"},
                    {"name": "https", "port": https_port, "protocol": "HTTPS",
                     "hostname": "a.example.com",
                     "tls": {"certificateRefs": [{"name": "cert"}]}},
                    {"name": "https-b", "port": https_port, "protocol": "HTTPS",
                     "hostname": "*.b.example.com",
                     "tls": {"certificateRefs": [{"name": "cert-b"}]}}]}})),
        )
        .await
        .expect("add the HTTPS listener");
    create::<HttpRoute>(&s.client, &s.ns, route_json("first.example.com")).await;
    let _controller = s.controller();
    let token = s.token(&s.dataplane_account()).await;
    let state = TempDir::new("state");
    let dp = s.dataplane_on(ip, "replica", &token, state.path());
    // A client with another ServiceAccount never gets the snapshot that carries the key.
    let wrong = s.token("intruder").await;
    let intruder_state = TempDir::new("state");
    let intruder = s.dataplane("intruder", &wrong, intruder_state.path());
    s.await_programmed().await;

    let addr = SocketAddr::new(dp.ip, https_port);
    let mut conn = await_some("the HTTPS listener", || async {
        Conn::connect(addr, "a.example.com", &[&cert], &[b"h2"])
            .await
            .ok()
    })
    .await;
    assert!(conn.presented(&cert));
    // SNI picks the other listener's certificate for its names.
    let other = Conn::connect(addr, "x.b.example.com", &[&b_cert], &[b"h2"])
        .await
        .expect("TLS to the wildcard listener");
    assert!(other.presented(&b_cert));
    let r = conn.get("a.example.com", "/").await.expect("GET over TLS");
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(format!("https://first.example.com:{https_port}/").as_str()),
        "the redirect keeps the https scheme"
    );

    // Rotate the Secret through the API: new handshakes get the new certificate, the open
    // connection keeps working.
    let (cert2, key2) = self_signed(&["a.example.com"]);
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .patch(
            "cert",
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"tls.crt": cert2, "tls.key": key2}})),
        )
        .await
        .expect("rotate the Secret");
    await_some("the rotated certificate", || async {
        let c = Conn::connect(addr, "a.example.com", &[&cert, &cert2], &[b"h2"])
            .await
            .ok()?;
        c.presented(&cert2).then_some(())
    })
    .await;
    let r = conn
        .get("a.example.com", "/")
        .await
        .expect("the old connection still serves");
    assert_eq!(r.status, 302);

    assert!(
        intruder.proc.logs().contains("403"),
        "{}",
        intruder.proc.logs()
    );
    assert!(!intruder.proc.logs().contains("snapshot applied"));
    assert!(
        std::fs::read_dir(intruder_state.path())
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "the intruder persisted nothing"
    );
}

#[tokio::test]
async fn an_auth_policy_reaches_the_dataplanes_with_its_secret() {
    let s = Setup::new("channel-authpol").await;
    create::<HttpRoute>(&s.client, &s.ns, route_json("first.example.com")).await;
    let secret = |keys: serde_json::Value| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"}, "stringData": keys});
    create::<Secret>(
        &s.client,
        &s.ns,
        secret(json!({"alice": "alice-key-1", "bob": "bob-key-2"})),
    )
    .await;
    create::<AuthPolicy>(
        &s.client,
        &s.ns,
        json!({"apiVersion": "portico.dev/v1alpha1", "kind": "AuthPolicy", "metadata": {"name": "keys"},
               "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}],
                        "apiKey": {"secretRefs": [{"name": "keys"}]}}}),
    )
    .await;
    let _controller = s.controller();
    let token = s.token(&s.dataplane_account()).await;
    let state = TempDir::new("state");
    let dp = s.dataplane("replica", &token, state.path());
    let http = HttpClient::new();
    let addr = SocketAddr::new(dp.ip, s.port);
    let with_key = |key: &'static str| {
        let http = http.clone();
        async move {
            http.try_get(addr, "x.test", "/", &[("x-api-key", key)])
                .await
                .map(|r| r.status.as_u16())
        }
    };
    await_some("the protected route", || async {
        (with_key("alice-key-1").await == Some(302)).then_some(())
    })
    .await;
    assert_eq!(http.get(addr, "x.test", "/").await.status, 401);
    assert_eq!(with_key("bob-key-2").await, Some(302));

    // Bob's key leaves the Secret: it stops working, Alice's does not.
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .patch(
            "keys",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"bob": null}})),
        )
        .await
        .expect("update the Secret");
    await_some("bob's key to be refused", || async {
        (with_key("bob-key-2").await == Some(401)).then_some(())
    })
    .await;
    assert_eq!(with_key("alice-key-1").await, Some(302));
    assert!(!dp.proc.logs().contains("alice-key-1"), "keys never logged");

    // Deleting the policy opens the route again.
    let policies: Api<AuthPolicy> = Api::namespaced(s.client.clone(), &s.ns);
    policies
        .delete("keys", &Default::default())
        .await
        .expect("delete the policy");
    await_some("the route to be open", || async {
        (location(&http, addr).await.is_some()).then_some(())
    })
    .await;
}

/// What a newer release's AuthPolicy CRD admits and this controller's types do not: a JWT
/// algorithm (`ES512`) added to the schema's enum. Applied the way a `helm upgrade` applies a
/// newer chart's CRDs ahead of the controller's rollout; additive, so the other tests of this
/// binary (its control plane is theirs too) see no difference.
async fn admit_es512_as_a_newer_crd_would(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "authpolicies.portico.dev";
    let mut crd =
        serde_json::to_value(crds.get(name).await.expect("the AuthPolicy CRD")).expect("CRD JSON");
    let algorithms = crd
        .pointer_mut(
            "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/jwt\
             /properties/algorithms/items/enum",
        )
        .and_then(|e| e.as_array_mut())
        .expect("the JWT algorithm enum");
    if !algorithms.contains(&json!("ES512")) {
        algorithms.push(json!("ES512"));
        let crd: CustomResourceDefinition = serde_json::from_value(crd).expect("CRD");
        crds.replace(name, &PostParams::default(), &crd)
            .await
            .expect("update the AuthPolicy CRD");
    }
}

/// The defect this guards against: an AuthPolicy the API server accepts but the controller
/// cannot decode (a newer CRD's JWT algorithm) was skipped as if it did not exist, and the
/// route it protects served unprotected. Now the route answers 500 through a real dataplane
/// while the policy cannot be read, its status says why (`Unreadable`), the controller logs
/// and counts it; fixed, the policy is enforced again.
#[tokio::test]
async fn an_auth_policy_the_controller_cannot_read_refuses_its_route_until_fixed() {
    let s = Setup::new("channel-unreadable").await;
    admit_es512_as_a_newer_crd_would(&s.client).await;
    create::<HttpRoute>(&s.client, &s.ns, route_json("first.example.com")).await;
    create::<Secret>(
        &s.client,
        &s.ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"},
               "stringData": {"alice": "alice-key-1"}}),
    )
    .await;
    create::<AuthPolicy>(
        &s.client,
        &s.ns,
        json!({"apiVersion": "portico.dev/v1alpha1", "kind": "AuthPolicy", "metadata": {"name": "guard"},
               "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}],
                        "apiKey": {"secretRefs": [{"name": "keys"}]}}}),
    )
    .await;
    let ip = portico_tests::loopback_ip();
    let admin = SocketAddr::new(ip, free_port(ip));
    let admin_arg = admin.to_string();
    let controller = s.controller_with(&["--admin-address", &admin_arg]);
    let token = s.token(&s.dataplane_account()).await;
    let state = TempDir::new("state");
    let dp = s.dataplane("replica", &token, state.path());
    let http = HttpClient::new();
    let addr = SocketAddr::new(dp.ip, s.port);
    let status = |key: Option<&'static str>| {
        let http = http.clone();
        async move {
            let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
            http.try_get(addr, "x.test", "/", &headers)
                .await
                .map(|r| r.status.as_u16())
        }
    };
    let serves = |with_key: u16, without: u16| {
        let status = &status;
        async move {
            (status(Some("alice-key-1")).await == Some(with_key)
                && status(None).await == Some(without))
            .then_some(())
        }
    };
    await_some("the protected route", || serves(302, 401)).await;

    // Untyped: the Rust type cannot hold the policy this patch makes.
    let policies: Api<kube::core::DynamicObject> = Api::namespaced_with(
        s.client.clone(),
        &s.ns,
        &kube::core::ApiResource::erase::<AuthPolicy>(&()),
    );
    let es512 = json!({"spec": {"jwt": {"issuer": "https://idp.test", "algorithms": ["ES512"],
                                        "jwksUri": "https://idp.test/jwks"}}});
    // The API server compiles the updated schema in a moment: until then it refuses ES512.
    await_some("the API server to admit ES512", || async {
        policies
            .patch("guard", &PatchParams::default(), &Patch::Merge(&es512))
            .await
            .ok()
    })
    .await;
    assert!(
        Api::<AuthPolicy>::namespaced(s.client.clone(), &s.ns)
            .get("guard")
            .await
            .is_err(),
        "the Rust type must reject this policy for the test to mean anything"
    );
    // Refused, with or without the key that opened it before: never open.
    await_some("the route to refuse every request", || serves(500, 500)).await;
    let ours = |p: &kube::core::DynamicObject| -> Option<(String, String, String)> {
        let a = p.data["status"]["ancestors"]
            .as_array()?
            .iter()
            .find(|a| a["controllerName"] == s.controller_name.as_str())?;
        let c = a["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Accepted")?;
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        Some((text(&c["status"]), text(&c["reason"]), text(&c["message"])))
    };
    let message = await_some("the policy's status to say it cannot be read", || async {
        let (status, reason, message) = ours(&policies.get("guard").await.ok()?)?;
        (status == "False" && reason == "Unreadable").then_some(message)
    })
    .await;
    assert!(
        message.contains("ES512") && message.contains("refused until the policy is fixed"),
        "{message}"
    );
    let unreadable = |n: usize| {
        let http = &http;
        async move {
            let m = http.try_get(admin, "admin", "/metrics", &[]).await?.text();
            m.contains(&format!(
                "portico_controller_unreadable_objects{{kind=\"AuthPolicy\"}} {n}"
            ))
            .then_some(())
        }
    };
    await_some("one unreadable AuthPolicy counted", || unreadable(1)).await;
    assert!(
        controller
            .logs()
            .lines()
            .any(|l| l.contains("cannot read this object whole")
                && l.contains("AuthPolicy")
                && l.contains("guard")
                && l.contains("ES512")),
        "the controller logs the policy it cannot read"
    );

    // Fixed (the mechanism this controller does not know removed): enforced as before.
    policies
        .patch(
            "guard",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"jwt": null}})),
        )
        .await
        .expect("fix the policy");
    await_some("the protected route again", || serves(302, 401)).await;
    await_some("the policy accepted again", || async {
        let (status, _, _) = ours(&policies.get("guard").await.ok()?)?;
        (status == "True").then_some(())
    })
    .await;
    await_some("no unreadable AuthPolicy left", || unreadable(0)).await;
}

#[tokio::test]
async fn a_global_rate_limit_is_shared_by_the_replicas_through_the_controllers_redis() {
    let s = Setup::new("channel-ratelimit").await;
    let redis = Redis::start();
    create::<HttpRoute>(&s.client, &s.ns, route_json("first.example.com")).await;
    // No redisUrl in the policy: the controller's --redis-url applies.
    create::<RateLimitPolicy>(
        &s.client,
        &s.ns,
        json!({"apiVersion": "portico.dev/v1alpha1", "kind": "RateLimitPolicy", "metadata": {"name": "shared"},
               "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}],
                        "limits": [{"requests": 3, "interval": "24h", "algorithm": "FixedWindow", "scope": "Global",
                                    "key": [{"type": "Header", "name": "x-user"}]}]}}),
    )
    .await;
    let _controller = s.controller_with(&["--redis-url", &redis.url()]);
    let token = s.token(&s.dataplane_account()).await;
    let (state_a, state_b) = (TempDir::new("state"), TempDir::new("state"));
    let a = s.dataplane("replica-a", &token, state_a.path());
    let b = s.dataplane("replica-b", &token, state_b.path());
    let http = HttpClient::new();
    let send = |dp: &portico_tests::scenario::Dataplane, user: &'static str| {
        let http = http.clone();
        let addr = SocketAddr::new(dp.ip, s.port);
        async move {
            http.try_get(addr, "x.test", "/", &[("x-user", user)])
                .await
                .map(|r| r.status.as_u16())
        }
    };
    // Each replica is limited once its snapshot has the policy (a probe user each).
    for dp in [&a, &b] {
        await_some("the policy on a replica", || async {
            let mut got = Vec::new();
            for _ in 0..4 {
                got.push(send(dp, if dp.ip == a.ip { "probe-a" } else { "probe-b" }).await);
            }
            (got.last() == Some(&Some(429))).then_some(())
        })
        .await;
    }
    // One quota across both replicas.
    let mut got = Vec::new();
    for dp in [&a, &a, &b, &b] {
        got.push(send(dp, "carol").await);
    }
    assert_eq!(got, [Some(302), Some(302), Some(302), Some(429)]);
}

#[tokio::test]
async fn a_cache_invalidation_purges_every_replica_and_says_so_in_its_status() {
    let s = Setup::new("channel-cache").await;
    create::<HttpRoute>(&s.client, &s.ns, route_json("first.example.com")).await;
    // The gateway's own redirects, cached for an hour.
    create::<CachePolicy>(
        &s.client,
        &s.ns,
        json!({"apiVersion": "portico.dev/v1alpha1", "kind": "CachePolicy", "metadata": {"name": "redirects"},
               "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}],
                        "defaultTTL": "1h", "statuses": [302]}}),
    )
    .await;
    let _controller = s.controller();
    let token = s.token(&s.dataplane_account()).await;
    let (state_a, state_b) = (TempDir::new("state"), TempDir::new("state"));
    let a = s.dataplane("replica-a", &token, state_a.path());
    let b = s.dataplane("replica-b", &token, state_b.path());
    let http = HttpClient::new();
    let cache_status = |addr: SocketAddr| {
        let http = http.clone();
        async move {
            let r = http.try_get(addr, "x.test", "/page", &[]).await?;
            Some(r.header("cache-status").unwrap_or_default().to_string())
        }
    };
    for dp in [&a, &b] {
        let addr = SocketAddr::new(dp.ip, s.port);
        await_some("a cached redirect on the replica", || async {
            cache_status(addr).await.filter(|c| c.contains("hit"))
        })
        .await;
    }
    create::<CacheInvalidation>(
        &s.client,
        &s.ns,
        json!({"apiVersion": "portico.dev/v1alpha1", "kind": "CacheInvalidation", "metadata": {"name": "all-pages"},
               "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}],
                        "purges": [{"type": "Prefix", "value": format!("http://x.test:{}/", s.port)}]}}),
    )
    .await;
    for dp in [&a, &b] {
        let addr = SocketAddr::new(dp.ip, s.port);
        await_some("the purge on the replica", || async {
            cache_status(addr).await.filter(|c| c.contains("uri-miss"))
        })
        .await;
        // Once: what is stored after the purge stays.
        let again = cache_status(addr).await.unwrap_or_default();
        assert!(again.contains("hit"), "{again}");
    }
    let api: Api<CacheInvalidation> = Api::namespaced(s.client.clone(), &s.ns);
    let purged = |inv: &CacheInvalidation| {
        let c = inv
            .status
            .as_ref()?
            .ancestors
            .iter()
            .filter(|a| a.controller_name == s.controller_name)
            .flat_map(|a| &a.conditions)
            .find(|c| c.type_ == "Purged" && c.status == "True")?;
        Some(c.message.clone())
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let message = loop {
        let inv = api.get("all-pages").await.expect("the invalidation");
        if let Some(m) = purged(&inv) {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Purged=True: {:?}",
            inv.status
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        message.contains("replica-a") && message.contains("replica-b"),
        "{message}"
    );
}

/// `/metrics` of a controller's admin port, as a map of sample → value.
async fn controller_metric(admin: SocketAddr, name: &str) -> Option<u64> {
    let text = HttpClient::new()
        .try_get(admin, "admin", "/metrics", &[])
        .await?
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

#[tokio::test]
async fn token_reviews_are_cached_and_refused_tokens_throttled() {
    let s = Setup::new("channel-tokens").await;
    let ip = s.snapshot_addr.ip();
    let admin = SocketAddr::new(ip, free_port(ip));
    let admin_arg = admin.to_string();
    let _controller = s.controller_with(&["--admin-address", &admin_arg]);
    let token = std::fs::read_to_string(s.token(&s.dataplane_account()).await).expect("token");
    let ca = await_some("the controller's CA", || async {
        std::fs::read_to_string(s.ca_file()).ok()
    })
    .await;
    let path = format!("/v1/acks/{}/gw", s.ns);
    let ack = bytes::Bytes::from_static(br#"{"version":0}"#);
    let bearer = format!("Bearer {}", token.trim());
    // Until this replica leads it answers 503 before looking at tokens.
    await_some("an ACK accepted", || async {
        let mut c = Conn::connect(s.snapshot_addr, "localhost", &[&ca], &[b"h2"])
            .await
            .ok()?;
        let r = c
            .send(
                "POST",
                "localhost",
                &path,
                &[("authorization", &bearer)],
                ack.clone(),
            )
            .await
            .ok()?;
        (r.status == 204).then_some(())
    })
    .await;
    let mut c = Conn::connect(s.snapshot_addr, "localhost", &[&ca], &[b"h2"])
        .await
        .expect("connect");
    // An ACK with `authorization`; its status.
    async fn ack_with(c: &mut Conn, path: &str, authorization: &str) -> u16 {
        let body = bytes::Bytes::from_static(br#"{"version":0}"#);
        let r = c
            .send(
                "POST",
                "localhost",
                path,
                &[("authorization", authorization)],
                body,
            )
            .await
            .expect("an answer");
        r.status.as_u16()
    }
    for _ in 0..5 {
        assert_eq!(ack_with(&mut c, &path, &bearer).await, 204);
    }
    let reviews = controller_metric(admin, "portico_controller_token_reviews_total")
        .await
        .expect("metric");
    assert_eq!(
        reviews, 1,
        "one TokenReview for one token, however often it is used"
    );
    let hits = controller_metric(admin, "portico_controller_token_cache_hits_total")
        .await
        .expect("metric");
    assert!(hits >= 5, "{hits}");
    // Garbage tokens from one address: refused, and after the budget refused without asking
    // the API server.
    let mut statuses = Vec::new();
    for i in 0..20 {
        statuses.push(ack_with(&mut c, &path, &format!("Bearer garbage-{i}")).await);
    }
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    let reviews = controller_metric(admin, "portico_controller_token_reviews_total")
        .await
        .expect("metric");
    assert_eq!(reviews, 11, "the throttled ones cost no TokenReview");
}

/// A replica that stops leading ends its dataplanes' streams, so that they reconnect to the
/// leader: a stream kept open to a former leader would leave the Gateway reported as
/// having no dataplane (the leader's view) for as long as it lasted.
#[tokio::test]
async fn a_replica_that_stops_leading_lets_its_dataplanes_go() {
    use k8s_openapi::api::coordination::v1::Lease;
    let s = Setup::new("handover").await;
    create::<HttpRoute>(&s.client, &s.ns, route_json("first.example.com")).await;
    let ip = portico_tests::loopback_ip();
    let admin = SocketAddr::new(ip, free_port(ip));
    let admin_arg = admin.to_string();
    let _controller = s.controller_with(&["--admin-address", &admin_arg]);
    let token = s.token(&s.dataplane_account()).await;
    let state = TempDir::new("state");
    let _dp = s.dataplane("replica-a", &token, state.path());
    s.await_programmed().await;
    let http = HttpClient::new();
    let gw = format!("{}/gw", s.ns);
    let connected = |n: u32| {
        let (http, gw) = (&http, &gw);
        async move {
            await_some(&format!("{n} dataplanes connected"), || async {
                let m = http.try_get(admin, "admin", "/metrics", &[]).await?.text();
                m.contains(&format!(
                    "portico_controller_dataplanes{{gateway=\"{gw}\",state=\"connected\"}} {n}"
                ))
                .then_some(())
            })
            .await;
        }
    };
    connected(1).await;

    // Another replica takes the lease (as one would after a missed renewal under load).
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &s.ns);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    );
    leases
        .patch(
            "channel",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "another-replica",
                                          "renewTime": now, "acquireTime": now,
                                          "leaseDurationSeconds": 3600}})),
        )
        .await
        .expect("take the lease");
    connected(0).await;

    // It comes back: the dataplane reconnects and the Gateway is programmed again.
    leases
        .delete("channel", &Default::default())
        .await
        .expect("free the lease");
    connected(1).await;
    s.await_programmed().await;
}
