//! The snapshot channel end to end: a real controller, real dataplane processes connecting to
//! it over TLS with ServiceAccount tokens, and traffic through them.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
use portico_crds::gateway_api::httproutes::HttpRoute;
use portico_tests::cluster::{
    control_plane, create, create_cluster, start_controller, test_namespace,
};
use portico_tests::{HttpClient, Proc, TempDir, await_some, binaries, free_port, loopback_ip};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Everything one test needs: its namespace, controller, and files.
struct Setup {
    client: Client,
    ns: String,
    controller_name: String,
    snapshot_addr: SocketAddr,
    files: TempDir,
    port: u16,
}

impl Setup {
    async fn new(prefix: &str) -> Self {
        let client = control_plane().client().await;
        let ns = test_namespace(&client, prefix).await;
        let ip = loopback_ip();
        let setup = Self {
            controller_name: format!("portico.dev/{ns}"),
            snapshot_addr: SocketAddr::new(ip, free_port(ip)),
            files: TempDir::new("channel"),
            port: free_port(ip),
            client,
            ns,
        };
        create_cluster::<GatewayClass>(
            &setup.client,
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                   "metadata": {"name": setup.ns}, "spec": {"controllerName": setup.controller_name}}),
        )
        .await;
        create::<Gateway>(
            &setup.client,
            &setup.ns,
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": "gw"},
                   "spec": {"gatewayClassName": setup.ns,
                            "listeners": [{"name": "http", "port": setup.port, "protocol": "HTTP"}]}}),
        )
        .await;
        create::<Service>(
            &setup.client,
            &setup.ns,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"},
                   "spec": {"ports": [{"name": "http", "port": 80}]}}),
        )
        .await;
        create::<HttpRoute>(&setup.client, &setup.ns, route_json("first.example.com")).await;
        setup
    }

    fn ca_file(&self) -> PathBuf {
        self.files.path().join("controller-ca.pem")
    }

    fn controller(&self) -> Proc {
        let lease = "channel";
        let addr = self.snapshot_addr.to_string();
        let ca = self.ca_file().display().to_string();
        start_controller(
            "controller",
            &[
                "--controller-name",
                &self.controller_name,
                "--lease-namespace",
                &self.ns,
                "--lease-name",
                lease,
                "--snapshot-address",
                &addr,
                "--tls-server-name",
                "localhost",
                "--write-ca-file",
                &ca,
                // One identity, so a restarted controller takes its own lease back at once.
                "--identity",
                "channel-controller",
            ],
        )
    }

    /// A token for ServiceAccount `account` (created if needed), for the snapshot audience.
    async fn token(&self, account: &str) -> PathBuf {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.ns);
        if accounts.get_opt(account).await.ok().flatten().is_none() {
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(account.into()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            };
            accounts
                .create(&PostParams::default(), &sa)
                .await
                .expect("create ServiceAccount");
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![portico_model::channel::TOKEN_AUDIENCE.into()]),
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            }),
            ..TokenRequest::default()
        };
        let token = accounts
            .create_token_request(account, &PostParams::default(), &request)
            .await
            .expect("TokenRequest")
            .status
            .and_then(|s| s.token)
            .expect("token");
        let path = self.files.path().join(format!("{account}.token"));
        std::fs::write(&path, token).expect("write token");
        path
    }

    /// Starts a dataplane replica on its own loopback address.
    fn dataplane(&self, replica: &str, token: &Path, state: &Path) -> Dataplane {
        self.dataplane_on(loopback_ip(), replica, token, state)
    }

    fn dataplane_on(&self, ip: IpAddr, replica: &str, token: &Path, state: &Path) -> Dataplane {
        let admin = SocketAddr::new(ip, free_port(ip));
        let args: Vec<String> = [
            "connect",
            "--controller",
            &self.snapshot_addr.to_string(),
            "--server-name",
            "localhost",
            "--gateway",
            &format!("{}/gw", self.ns),
            "--token-file",
            &token.display().to_string(),
            "--ca-file",
            &self.ca_file().display().to_string(),
            "--state-dir",
            &state.display().to_string(),
            "--replica",
            replica,
            "--bind-address",
            &ip.to_string(),
            "--admin-address",
            &admin.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // KUBECONFIG stands in for the pod's ServiceAccount: the dataplane watches
        // EndpointSlices with it.
        let kubeconfig = control_plane().kubeconfig.clone();
        Dataplane {
            ip,
            proc: Proc::spawn_with_env(
                replica,
                &binaries().portico,
                &args,
                &[("KUBECONFIG", kubeconfig.as_path())],
            ),
        }
    }

    async fn gateway_condition(&self, type_: &str) -> Option<Condition> {
        let api: Api<Gateway> = Api::namespaced(self.client.clone(), &self.ns);
        let gw = api.get("gw").await.ok()?;
        gw.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == type_)
    }

    async fn await_programmed(&self) {
        await_some("Gateway Programmed=True", || async {
            self.gateway_condition("Programmed")
                .await
                .filter(|c| c.status == "True")
        })
        .await;
    }
}

struct Dataplane {
    ip: IpAddr,
    proc: Proc,
}

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
    let _controller = s.controller();
    let token = s.token("portico-gw").await;
    let (state_a, state_b) = (TempDir::new("state"), TempDir::new("state"));
    let a = s.dataplane("replica-a", &token, state_a.path());
    let b = s.dataplane("replica-b", &token, state_b.path());
    s.await_programmed().await;
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
    let _controller = s.controller();
    let wrong_account = s.token("intruder").await;
    let garbage = s.files.path().join("garbage.token");
    std::fs::write(&garbage, "not-a-token").expect("write");
    let state = TempDir::new("state");
    let intruder = s.dataplane("intruder", &wrong_account, state.path());
    let anonymous = s.dataplane("anonymous", &garbage, state.path());
    await_some("the refusals to be logged", || async {
        (intruder.proc.logs().contains("403") && anonymous.proc.logs().contains("401"))
            .then_some(())
    })
    .await;
    for dp in [&intruder, &anonymous] {
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

#[tokio::test]
async fn dataplanes_keep_serving_without_the_controller_and_restart_from_disk() {
    let s = Setup::new("channel-down").await;
    let mut controller = s.controller();
    let token = s.token("portico-gw").await;
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

    // The controller returns: the dataplane reconnects and the Gateway stays Programmed.
    let _controller = s.controller();
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
    let _controller = s.controller();
    let token = s.token("portico-gw").await;
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
    let dp = s.dataplane("replica", &token, state.path());
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
