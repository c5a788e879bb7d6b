//! A cluster with only part of the Gateway API and none of Portico's CRDs: GatewayClass,
//! Gateway and HTTPRoute, no GRPCRoute, no ReferenceGrant, no AuthPolicy. The controller
//! must not wait for the kinds it cannot list: it serves what there is, and picks a kind up
//! once its CRD is installed.

use portico_crds::gateway_api::experimental::grpcroutes::GrpcRoute;
use portico_crds::gateway_api::experimental::httproutes::HttpRoute;
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
use portico_tests::cluster::{
    Channel, await_accepted, control_plane_with, create, create_cluster,
    install_gateway_api_crds_named, start_controller, test_namespace,
};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn missing_optional_crds_are_skipped_and_picked_up_once_installed() {
    let cp = control_plane_with(Channel::Bare);
    let client = cp.client().await;
    install_gateway_api_crds_named(&client, &["gatewayclasses", "gateways", "httproutes"]).await;
    let ns = test_namespace(&client, "optional").await;
    let dataplanes = test_namespace(&client, "optional-dp").await;
    let controller_name = format!("portico.dev/{ns}");
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
                        "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}}),
    )
    .await;
    create::<HttpRoute>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "web"},
               "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["web.test"],
                        "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}}),
    )
    .await;
    let _controller = start_controller(
        "controller",
        &[
            "--controller-name",
            &controller_name,
            "--lease-namespace",
            &ns,
            "--dataplane-namespace",
            &dataplanes,
            "--identity",
            "optional-controller",
        ],
    );

    // Without GRPCRoute, ReferenceGrant or any Portico CRD, compile runs: the class is
    // accepted and the HTTPRoute gets its status.
    let classes: kube::Api<GatewayClass> = kube::Api::all(client.clone());
    await_accepted(&classes, &ns, Duration::from_secs(60)).await;
    let routes: kube::Api<HttpRoute> = kube::Api::namespaced(client.clone(), &ns);
    await_accepted(&routes, "web", Duration::from_secs(60)).await;

    // GRPCRoute's CRD arrives: the controller finds it on its next look (every 30 s) and
    // serves the GRPCRoute made meanwhile.
    install_gateway_api_crds_named(&client, &["grpcroutes"]).await;
    create::<GrpcRoute>(
        &client,
        &ns,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
               "metadata": {"name": "rpc"},
               "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["rpc.test"],
                        "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}}),
    )
    .await;
    let grpc: kube::Api<GrpcRoute> = kube::Api::namespaced(client.clone(), &ns);
    await_accepted(&grpc, "rpc", Duration::from_secs(120)).await;
}
