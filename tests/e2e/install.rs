//! Installing with helm on a cluster as a user finds it: no Gateway API CRDs, no Portico
//! CRDs. `helm install` works before the Gateway API CRDs exist (and says what to run), `helm
//! upgrade` then makes the GatewayClass. (The rendered manifests without helm:
//! `install_manifests.rs`, on a cluster of its own.)

use kube::api::Api;
use portico_tests::await_some;
use portico_tests::cluster::{
    Channel, control_plane_with, crd_established, install_gateway_api_crds,
};
use std::path::{Path, PathBuf};
use std::process::Command;

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

#[tokio::test]
async fn helm_install_works_before_the_gateway_api_crds_and_upgrade_makes_the_gateway_class() {
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
}
