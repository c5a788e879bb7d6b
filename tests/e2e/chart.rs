//! The helm chart: it lints clean, its rendered manifest (`deploy/portico.yaml`) passes a
//! server-side dry run, and after a real `helm install` into the test control plane the
//! controller runs as the chart's ServiceAccount (a token from the TokenRequest API) and does
//! its whole job with exactly the chart's RBAC — while calls outside it are refused: no
//! Secret outside the namespaces the installer granted, no workload outside the dataplane
//! namespace.

#[path = "chart/images.rs"]
mod images;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::api::{Api, PostParams};
use portico_crds::gateway_api::experimental::httproutes::HttpRoute;
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
use portico_crds::ratelimit::RateLimitPolicy;
use portico_tests::cluster::{
    apply_manifests, await_accepted, control_plane, create, service_account_kubeconfig,
};
use portico_tests::{
    DEADLINE, Proc, TempDir, await_some, await_some_within, binaries, free_port, loopback_ip,
};
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
    // The defaults render (also without --kube-version, as users first try it), and so do
    // the optional parts; values the schema refuses do not.
    for extra in [
        &["--kube-version", "1.36.0"][..],
        &[],
        &[
            "--set",
            "metrics.podMonitor.enabled=true",
            "--set",
            "controller.extraArgs={--debounce-ms=50}",
            "--set",
            "rbac.secretsClusterWide=true",
            "--set",
            "dataplane.namespace=portico-dataplanes",
            "--set",
            "dataplane.gatewayNamespaces={team-a,team-b}",
        ],
    ] {
        let ok = Command::new(helm())
            .args(["template", "x"])
            .arg(root().join("charts/portico"))
            .args(extra)
            .output()
            .expect("run helm template");
        assert!(
            ok.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }
    for bad in [
        "controller.replicas=0",
        "gatewayClass.name=Not_A_Name",
        "controller.unknown=1",
        "controller.extraArgs={not-a-flag}",
        "rbac.secretNamespaces={Bad_Namespace}",
        "dataplane.gatewayNamespaces={Bad_Namespace}",
        // The release namespace (where the controller's Secrets are) is not a team's.
        "dataplane.gatewayNamespaces={default}",
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

#[tokio::test]
async fn the_rendered_manifest_passes_a_server_side_dry_run() {
    let client = control_plane().client().await;
    // In the README's order: the CRDs, then everything else. The Namespace is created for
    // real: the namespaced objects' dry run needs it.
    let mut kinds = Vec::new();
    for file in ["deploy/portico-crds.yaml", "deploy/portico.yaml"] {
        let text = std::fs::read_to_string(root().join(file)).expect(file);
        kinds.extend(
            apply_manifests(&client, &text, "chart-dry-run", "portico-system", |kind| {
                kind != "Namespace"
            })
            .await,
        );
    }
    assert!(kinds.len() > 10, "{} documents", kinds.len());
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

/// A `kubernetes.io/tls` Secret for `host`.
fn tls_secret(name: &str, host: &str) -> serde_json::Value {
    let (cert, key) = portico_tests::tls::self_signed(&[host]);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": name}, "stringData": {"tls.crt": cert, "tls.key": key}})
}

/// A Gateway `name` with one HTTPS listener on `host` using Secret `secret`.
fn https_gateway(name: &str, host: &str, secret: &str) -> serde_json::Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": name},
           "spec": {"gatewayClassName": "portico", "listeners": [
               {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": host,
                "tls": {"certificateRefs": [{"name": secret}]}}]}})
}

/// The `ResolvedRefs` condition of Gateway `ns/name`'s first listener, once it has one.
async fn resolved_refs(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let gw = Api::<Gateway>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .ok()?;
    gw.status?
        .listeners?
        .first()?
        .conditions
        .iter()
        .find(|c| c.type_ == "ResolvedRefs")
        .cloned()
}

/// Fails on any refused call in the controller's log but the expected one: reading Secrets
/// in `other`, where it was not (yet) granted.
fn assert_no_refusal_but_other_secrets(logs: &str, other: &str) {
    let refused: Vec<&str> = logs
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .filter(|l| !(l.contains("secrets") && l.contains(other)))
        .collect();
    assert!(
        refused.is_empty(),
        "calls were refused:\n{}",
        refused.join("\n")
    );
}

#[tokio::test]
async fn after_helm_install_the_controller_does_its_job_as_the_charts_service_account() {
    let cp = control_plane();
    let client = cp.client().await;
    // The installer lets Portico read Secrets in `app` only.
    let app = portico_tests::cluster::test_namespace(&client, "chart").await;
    let other = portico_tests::cluster::test_namespace(&client, "chart-other").await;
    let out = Command::new(helm())
        .args(["install", "portico"])
        .arg(root().join("charts/portico"))
        .args([
            "--namespace",
            "portico-system",
            "--create-namespace",
            "--set",
            &format!("rbac.secretNamespaces={{{app}}}"),
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
    await_accepted(&classes, "portico", DEADLINE).await;
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
    await_accepted(&routes, "web", DEADLINE).await;
    let policies: Api<RateLimitPolicy> = Api::namespaced(client.clone(), &app);
    await_accepted(&policies, "web", DEADLINE).await;
    // In the dataplane namespace (the release's), not next to the Gateway.
    let dataplane = portico_compile::dataplane_name(&app, "web");
    await_some("the dataplane provisioned", || async {
        let d = Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(&dataplane)
            .await
            .ok()??;
        let h = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns)
            .get_opt(&dataplane)
            .await
            .ok()??;
        let image = d.spec?.template.spec?.containers.first()?.image.clone()?;
        (image.contains("dataplane") && h.spec.max_replicas == 10).then_some(())
    })
    .await;

    // Secrets: read where the installer allowed it; elsewhere the listener says how to allow
    // it, and follows once a namespace admin does.
    create::<Secret>(&client, &app, tls_secret("cert", "app.example.com")).await;
    create::<Gateway>(
        &client,
        &app,
        https_gateway("secure", "app.example.com", "cert"),
    )
    .await;
    create::<Secret>(&client, &other, tls_secret("cert", "other.example.com")).await;
    create::<Gateway>(
        &client,
        &other,
        https_gateway("secure", "other.example.com", "cert"),
    )
    .await;
    await_some("the granted namespace's certificate resolved", || async {
        resolved_refs(&client, &app, "secure")
            .await
            .filter(|c| c.status == "True")
    })
    .await;
    let refused = await_some("the other namespace's certificate refused", || async {
        resolved_refs(&client, &other, "secure")
            .await
            .filter(|c| c.status == "False")
    })
    .await;
    assert_eq!(refused.reason, "InvalidCertificateRef");
    let grant = format!(
        "kubectl create rolebinding portico-secrets --namespace {other} --clusterrole portico-secret-reader --serviceaccount {ns}:portico-controller"
    );
    assert!(refused.message.contains(&grant), "{}", refused.message);
    create::<RoleBinding>(
        &client,
        &other,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "portico-secrets"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "portico-secret-reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "portico-controller", "namespace": ns}]}),
    )
    .await;
    // The refused watch retries with back-off (at most 30 s apart).
    await_some_within(
        "the certificate read once granted",
        std::time::Duration::from_secs(60),
        || async {
            resolved_refs(&client, &other, "secure")
                .await
                .filter(|c| c.status == "True")
        },
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    assert!(
        secrets
            .get_opt("portico-controller-tls")
            .await
            .expect("get")
            .is_some()
    );
    assert_no_refusal_but_other_secrets(&controller.logs(), &other);

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
        Api::<Secret>::all(sa.clone())
            .list(&Default::default())
            .await
            .map(|_| ()),
        "listing Secrets cluster-wide",
    );
    forbidden(
        Api::<Secret>::namespaced(sa.clone(), "kube-system")
            .list(&Default::default())
            .await
            .map(|_| ()),
        "listing Secrets in a namespace it was not granted",
    );
    forbidden(
        Api::<Secret>::namespaced(sa.clone(), ns)
            .list(&Default::default())
            .await
            .map(|_| ()),
        "listing Secrets in its own namespace (only its certificate, by name)",
    );
    let pod_as_anyone = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}},
                              "spec": {"serviceAccountName": "default",
                                       "containers": [{"name": "x", "image": "x"}]}}}});
    for place in [app.as_str(), "kube-system"] {
        forbidden(
            Api::<Deployment>::namespaced(sa.clone(), place)
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(pod_as_anyone.clone()).expect("deployment"),
                )
                .await
                .map(|_| ()),
            &format!("creating a Deployment in {place}"),
        );
        forbidden(
            Api::<ServiceAccount>::namespaced(sa.clone(), place)
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": "x"}})).expect("sa"),
                )
                .await
                .map(|_| ()),
            &format!("creating a ServiceAccount in {place}"),
        );
    }
    forbidden(
        Api::<RoleBinding>::namespaced(sa.clone(), &app)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "x"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "portico-secret-reader"},
                    "subjects": [{"kind": "ServiceAccount", "name": "portico-controller", "namespace": ns}]}))
                .expect("binding"),
            )
            .await
            .map(|_| ()),
        "granting itself Secrets with a RoleBinding",
    );
    forbidden(
        Api::<ClusterRoleBinding>::all(sa.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "x"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                    "subjects": [{"kind": "ServiceAccount", "name": "portico-controller", "namespace": ns}]}))
                .expect("binding"),
            )
            .await
            .map(|_| ()),
        "binding cluster-admin",
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

    // The dataplane's ServiceAccount reads the EndpointSlices of the namespaces its routes
    // send traffic to, and nothing else.
    let dp_kubeconfig = service_account_kubeconfig(&client, ns, &dataplane, files.path()).await;
    let dp = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&dp_kubeconfig).expect("kubeconfig"),
            &Default::default(),
        )
        .await
        .expect("config"),
    )
    .expect("client");
    for place in [app.as_str(), other.as_str()] {
        Api::<EndpointSlice>::namespaced(dp.clone(), place)
            .list(&Default::default())
            .await
            .unwrap_or_else(|e| panic!("the dataplane lists EndpointSlices in {place}: {e}"));
    }
    forbidden(
        Api::<Secret>::namespaced(dp.clone(), &app)
            .list(&Default::default())
            .await
            .map(|_| ()),
        "the dataplane listing Secrets",
    );
    forbidden(
        Api::<Service>::namespaced(dp.clone(), &app)
            .list(&Default::default())
            .await
            .map(|_| ()),
        "the dataplane listing Services",
    );

    // Deleting the Gateway removes its dataplane, with the Role in the dataplane namespace.
    Api::<Gateway>::namespaced(client.clone(), &app)
        .delete("web", &Default::default())
        .await
        .expect("delete the Gateway");
    await_some_within(
        "the dataplane removed",
        std::time::Duration::from_secs(60),
        || async {
            let d = Api::<Deployment>::namespaced(client.clone(), ns)
                .get_opt(&dataplane)
                .await
                .ok()?;
            let a = Api::<ServiceAccount>::namespaced(client.clone(), ns)
                .get_opt(&dataplane)
                .await
                .ok()?;
            (d.is_none() && a.is_none()).then_some(())
        },
    )
    .await;
    assert_no_refusal_but_other_secrets(&controller.logs(), &other);
    drop(controller);
}
