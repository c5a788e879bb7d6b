//! Installing on a cluster as a user finds it: no Gateway API CRDs, no Portico CRDs. `helm
//! install` works before the Gateway API CRDs exist (and says what to run), `helm upgrade`
//! then makes the GatewayClass; and the rendered manifests apply in the README's order on a
//! cluster that has never seen Portico's CRDs.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use portico_tests::cluster::{
    Channel, apply_manifests, control_plane_with, crd_established, install_gateway_api_crds,
};
use portico_tests::{await_some, await_some_within};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(root().join("target/tools/bin/helm"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .expect("run helm (make helm builds it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Server-side applies every document of `file`, as `kubectl apply --server-side` does.
async fn apply_file(client: &kube::Client, file: &str) {
    let text = std::fs::read_to_string(root().join(file)).expect(file);
    apply_manifests(client, &text, "kubectl", "default", |_| false).await;
}

#[tokio::test]
async fn helm_install_works_before_the_gateway_api_crds_and_the_manifests_apply_in_order() {
    let cp = control_plane_with(Channel::Bare);
    let client = cp.client().await;
    let chart = root().join("charts/portico").display().to_string();
    let kc = cp.kubeconfig.as_path();

    // 1. No CRDs at all: the install works, makes no GatewayClass, and says what to run.
    let (ok, out) = helm(
        kc,
        &[
            "install",
            "portico",
            &chart,
            "--namespace",
            "portico-system",
            "--create-namespace",
        ],
    );
    assert!(ok, "helm install:\n{out}");
    assert!(
        out.contains("The Gateway API CRDs are not installed")
            && out.contains("standard-install.yaml")
            && out.contains("helm upgrade portico"),
        "NOTES say what to run:\n{out}"
    );
    assert!(
        crd_established(&client, "gatewayconfigs.portico.dev").await,
        "helm installed Portico's CRDs"
    );
    assert!(!crd_established(&client, "gatewayclasses.gateway.networking.k8s.io").await);

    // 2. The Gateway API CRDs, then the upgrade NOTES name: the GatewayClass is there.
    install_gateway_api_crds(&client).await;
    let (ok, out) = helm(
        kc,
        &[
            "upgrade",
            "portico",
            &chart,
            "--namespace",
            "portico-system",
            "--reuse-values",
        ],
    );
    assert!(ok, "helm upgrade:\n{out}");
    let classes: Api<portico_crds::gateway_api::gatewayclasses::GatewayClass> =
        Api::all(client.clone());
    await_some("the GatewayClass", || async {
        classes.get_opt("portico").await.ok().flatten()
    })
    .await;

    // 3. Without helm, on a cluster that has never seen Portico's CRDs: the README's order
    //    (the Gateway API CRDs are there from step 2).
    let (ok, out) = helm(
        kc,
        &["uninstall", "portico", "--namespace", "portico-system"],
    );
    assert!(ok, "helm uninstall:\n{out}");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [
        "authpolicies.portico.dev",
        "ratelimitpolicies.portico.dev",
        "backendpolicies.portico.dev",
        "gatewayconfigs.portico.dev",
    ] {
        let _ = crds.delete(name, &Default::default()).await;
    }
    // The API server's CRD finalizer deletes the instances, then polls for them (every 5 s,
    // for up to a minute) before it lets a CRD go, and retries with a back-off: one slow
    // round on a loaded machine is more than a minute (CI saw 70 s once).
    await_some_within("Portico's CRDs gone", Duration::from_secs(180), || async {
        let left = crds
            .list(&Default::default())
            .await
            .ok()?
            .items
            .iter()
            .any(|c| {
                c.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.ends_with(".portico.dev"))
            });
        (!left).then_some(())
    })
    .await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete("portico-system", &Default::default())
        .await;
    await_some_within(
        "the old namespace gone",
        Duration::from_secs(60),
        || async {
            Api::<Namespace>::all(client.clone())
                .get_opt("portico-system")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    apply_file(&client, "deploy/portico-crds.yaml").await;
    await_some("Portico's CRDs established", || async {
        crd_established(&client, "gatewayconfigs.portico.dev")
            .await
            .then_some(())
    })
    .await;
    apply_file(&client, "deploy/portico.yaml").await;
    await_some("the GatewayClass applied again", || async {
        classes.get_opt("portico").await.ok().flatten()
    })
    .await;
}
