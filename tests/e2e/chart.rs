//! The helm chart: it lints clean, its rendered manifest (`deploy/portico.yaml`) passes a
//! server-side dry run, and after a real `helm install` into the test control plane the
//! controller runs as the chart's ServiceAccount (a token from the TokenRequest API) and does
//! its whole job with exactly the chart's RBAC — while calls outside it are refused.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope};
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
use portico_crds::gateway_api::httproutes::HttpRoute;
use portico_crds::ratelimit::RateLimitPolicy;
use portico_tests::cluster::{control_plane, create, service_account_kubeconfig};
use portico_tests::{Proc, TempDir, await_some, binaries, free_port, loopback_ip};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm() -> PathBuf {
    let p = root().join("target/tools/bin/helm");
    assert!(
        p.exists(),
        "{} is missing: run `make helm` (make test does)",
        p.display()
    );
    p
}

#[test]
fn the_chart_lints_clean() {
    let out = Command::new(helm())
        .args(["lint", "--strict"])
        .arg(root().join("charts/portico"))
        .output()
        .expect("run helm lint");
    assert!(
        out.status.success(),
        "helm lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The defaults render; values the schema refuses do not.
    let ok = Command::new(helm())
        .args(["template", "x", "--kube-version", "1.36.0"])
        .arg(root().join("charts/portico"))
        .output()
        .expect("run helm template");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for bad in [
        "controller.replicas=0",
        "gatewayClass.name=Not_A_Name",
        "controller.unknown=1",
    ] {
        let out = Command::new(helm())
            .args(["template", "x", "--kube-version", "1.36.0"])
            .arg(root().join("charts/portico"))
            .args(["--set", bad])
            .output()
            .expect("run helm template");
        assert!(!out.status.success(), "{bad} was accepted");
    }
}

/// The documents of a multi-document YAML file, as JSON values (empty ones skipped).
fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| {
            let v = serde_yaml::Value::deserialize(d).expect("YAML");
            (!v.is_null()).then(|| serde_json::to_value(v).expect("JSON"))
        })
        .collect()
}

use serde::Deserialize;

#[tokio::test]
async fn the_rendered_manifest_passes_a_server_side_dry_run() {
    let client = control_plane().client().await;
    let text =
        std::fs::read_to_string(root().join("deploy/portico.yaml")).expect("deploy/portico.yaml");
    let docs = documents(&text);
    assert!(docs.len() > 10, "{} documents", docs.len());
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let mut kinds = Vec::new();
    for doc in docs {
        let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("object");
        let types = obj.types.clone().expect("apiVersion and kind");
        let gvk = kube::api::GroupVersionKind::try_from(&types).expect("gvk");
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("the API server does not serve {gvk:?}"));
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &ar),
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.metadata
                    .namespace
                    .as_deref()
                    .unwrap_or("portico-system"),
                &ar,
            ),
        };
        let name = obj.metadata.name.clone().expect("name");
        let mut params = PatchParams::apply("chart-dry-run").force();
        // The Namespace is created for real: the namespaced objects' dry run needs it.
        if types.kind != "Namespace" {
            params = params.dry_run();
        }
        api.patch(&name, &params, &Patch::Apply(&doc))
            .await
            .unwrap_or_else(|e| panic!("{} {name}: {e}", types.kind));
        kinds.push(types.kind);
    }
    for k in [
        "CustomResourceDefinition",
        "ClusterRole",
        "Deployment",
        "GatewayClass",
        "GatewayConfig",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in the manifest");
    }
}

#[tokio::test]
async fn after_helm_install_the_controller_does_its_job_as_the_charts_service_account() {
    let cp = control_plane();
    let client = cp.client().await;
    let out = Command::new(helm())
        .args(["install", "portico"])
        .arg(root().join("charts/portico"))
        .args([
            "--namespace",
            "portico-system",
            "--create-namespace",
            "--kubeconfig",
        ])
        .arg(&cp.kubeconfig)
        .output()
        .expect("run helm install");
    assert!(
        out.status.success(),
        "helm install:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let notes = String::from_utf8_lossy(&out.stdout);
    assert!(
        notes.contains("kubectl apply"),
        "NOTES tell what to do next:\n{notes}"
    );
    let ns = "portico-system";
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = deployments
        .get("portico-controller")
        .await
        .expect("controller Deployment");
    let spec = d.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.expect("pod");
    let args = pod.containers[0].args.clone().unwrap_or_default();

    // The pods cannot run here (no nodes): run the controller with the Deployment's own
    // arguments (ports moved to this test's address), as the chart's ServiceAccount.
    let files = TempDir::new("chart");
    let kubeconfig =
        service_account_kubeconfig(&client, ns, "portico-controller", files.path()).await;
    let ip = loopback_ip();
    let mut args: Vec<String> = args
        .into_iter()
        .map(|a| {
            if a.starts_with("--snapshot-address=") {
                format!("--snapshot-address={ip}:{}", free_port(ip))
            } else if a.starts_with("--admin-address=") {
                format!("--admin-address={ip}:{}", free_port(ip))
            } else {
                a
            }
        })
        .collect();
    args.push("--identity=chart-test".into());
    let controller = Proc::spawn_with_env(
        "controller",
        &binaries().controller,
        &args,
        &[("KUBECONFIG", kubeconfig.as_path())],
    );

    // Its whole job: the default GatewayClass accepted, a Gateway with a route and a policy
    // compiled and reported, the Gateway's dataplane provisioned from the chart's default
    // GatewayConfig (with autoscaling), its certificate Secret created.
    let classes: Api<GatewayClass> = Api::all(client.clone());
    await_some("GatewayClass portico accepted", || async {
        let c = classes.get("portico").await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True")
            .then_some(())
    })
    .await;
    let app = portico_tests::cluster::test_namespace(&client, "chart").await;
    create::<Service>(
        &client,
        &app,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"ports": [{"port": 80}]}}),
    )
    .await;
    create::<Gateway>(&client, &app, json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "web"},
        "spec": {"gatewayClassName": "portico", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}})).await;
    create::<HttpRoute>(&client, &app, json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web"},
        "spec": {"parentRefs": [{"name": "web"}], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}})).await;
    create::<RateLimitPolicy>(&client, &app, json!({"apiVersion": "portico.dev/v1alpha1", "kind": "RateLimitPolicy",
        "metadata": {"name": "web"},
        "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web"}],
                 "limits": [{"requests": 10, "interval": "1s"}]}})).await;
    let routes: Api<HttpRoute> = Api::namespaced(client.clone(), &app);
    await_some("the route accepted", || async {
        let r = routes.get("web").await.ok()?;
        r.status?
            .parents
            .iter()
            .any(|p| {
                p.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.status == "True")
            })
            .then_some(())
    })
    .await;
    let policies: Api<RateLimitPolicy> = Api::namespaced(client.clone(), &app);
    await_some("the policy accepted", || async {
        let p = policies.get("web").await.ok()?;
        p.status?
            .ancestors
            .iter()
            .any(|a| {
                a.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.status == "True")
            })
            .then_some(())
    })
    .await;
    await_some("the dataplane provisioned", || async {
        let d = Api::<Deployment>::namespaced(client.clone(), &app)
            .get_opt("portico-web")
            .await
            .ok()??;
        let h = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &app)
            .get_opt("portico-web")
            .await
            .ok()??;
        let image = d.spec?.template.spec?.containers.first()?.image.clone()?;
        (image.contains("dataplane") && h.spec.max_replicas == 10).then_some(())
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    assert!(
        secrets
            .get_opt("portico-controller-tls")
            .await
            .expect("get")
            .is_some()
    );
    let logs = controller.logs();
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "a call was refused:\n{logs}"
    );

    // Least privilege: what the controller does not need is refused to its ServiceAccount.
    let sa = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig"),
            &Default::default(),
        )
        .await
        .expect("config"),
    )
    .expect("client");
    let forbidden = |r: Result<(), kube::Error>, what: &str| match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what}: expected 403, got {other:?}"),
    };
    forbidden(
        Api::<Pod>::all(sa.clone())
            .list(&Default::default())
            .await
            .map(|_| ()),
        "listing pods",
    );
    forbidden(
        Api::<Deployment>::namespaced(sa.clone(), &app)
            .delete("portico-web", &Default::default())
            .await
            .map(|_| ()),
        "deleting a Deployment",
    );
    forbidden(
        Api::<Secret>::namespaced(sa.clone(), &app)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "x"}})).expect("secret"),
            )
            .await
            .map(|_| ()),
        "creating a Secret outside its namespace",
    );
    forbidden(
        Api::<ClusterRole>::all(sa.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "escalate"}, "rules": []}))
                    .expect("role"),
            )
            .await
            .map(|_| ()),
        "creating a ClusterRole",
    );
    forbidden(
        Api::<Namespace>::all(sa.clone())
            .delete("default", &Default::default())
            .await
            .map(|_| ()),
        "deleting a Namespace",
    );
    drop(controller);
}
