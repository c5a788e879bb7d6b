//! Installing without helm, on a cluster that has never seen Portico's CRDs (a cluster of its
//! own, so nothing has to be deleted first): the rendered manifests apply in the README's
//! order, the Gateway API CRDs, then `deploy/portico-crds.yaml`, then `deploy/portico.yaml`.

use kube::api::Api;
use portico_tests::await_some;
use portico_tests::cluster::{
    Channel, apply_manifests, control_plane_with, crd_established, install_gateway_api_crds,
};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Server-side applies every document of `file`, as `kubectl apply --server-side` does.
async fn apply_file(client: &kube::Client, file: &str) {
    let text = std::fs::read_to_string(root().join(file)).expect(file);
    apply_manifests(client, &text, "kubectl", "default", |_| false).await;
}

#[tokio::test]
async fn the_rendered_manifests_apply_in_the_readmes_order_on_a_bare_cluster() {
    let cp = control_plane_with(Channel::Bare);
    let client = cp.client().await;
    assert!(
        !crd_established(&client, "gatewayconfigs.portico.dev").await,
        "a cluster that has never seen Portico's CRDs"
    );
    install_gateway_api_crds(&client).await;
    apply_file(&client, "deploy/portico-crds.yaml").await;
    await_some("Portico's CRDs established", || async {
        crd_established(&client, "gatewayconfigs.portico.dev")
            .await
            .then_some(())
    })
    .await;
    apply_file(&client, "deploy/portico.yaml").await;
    let classes: Api<portico_crds::gateway_api::gatewayclasses::GatewayClass> =
        Api::all(client.clone());
    await_some("the GatewayClass applied", || async {
        classes.get_opt("portico").await.ok().flatten()
    })
    .await;
}
