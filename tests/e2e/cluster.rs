//! The test control plane itself: what the controller tests rely on works as in a cluster.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use portico_crds::gateway_api::experimental::httproutes::{HttpRoute, HttpRouteSpec};
use portico_crds::gateway_api::gatewayclasses::{GatewayClass, GatewayClassSpec};
use portico_tests::await_some;
use portico_tests::cluster::{control_plane, test_namespace};

#[tokio::test]
async fn gateway_api_crds_are_installed() {
    let cp = control_plane();
    let client = cp.client().await;
    let ns = test_namespace(&client, "crds").await;
    let classes: Api<GatewayClass> = Api::all(client.clone());
    let class = GatewayClass {
        metadata: ObjectMeta {
            name: Some(format!("{ns}-class")),
            ..ObjectMeta::default()
        },
        spec: GatewayClassSpec {
            controller_name: "portico.dev/gateway-controller".into(),
            ..GatewayClassSpec::default()
        },
        status: None,
    };
    classes
        .create(&PostParams::default(), &class)
        .await
        .expect("create GatewayClass");
    let routes: Api<HttpRoute> = Api::namespaced(client.clone(), &ns);
    let route = HttpRoute {
        metadata: ObjectMeta {
            name: Some("r".into()),
            ..ObjectMeta::default()
        },
        spec: HttpRouteSpec {
            hostnames: Some(vec!["a.example.com".into()]),
            ..HttpRouteSpec::default()
        },
        status: None,
    };
    routes
        .create(&PostParams::default(), &route)
        .await
        .expect("create HTTPRoute");
    let back = routes.get("r").await.expect("get HTTPRoute");
    // The v1.6 standard channel: GRPCRoute and TCPRoute (standard since v1.6) are there,
    // the experimental XBackendTrafficPolicy is not.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let has = async |name: &str| crds.get_opt(name).await.expect("get CRD").is_some();
    assert!(has("grpcroutes.gateway.networking.k8s.io").await);
    assert!(has("tcproutes.gateway.networking.k8s.io").await);
    assert!(!has("xbackendtrafficpolicies.gateway.networking.x-k8s.io").await);
    assert_eq!(back.spec.hostnames, Some(vec!["a.example.com".to_string()]));
    // The CRD's own validation runs: a wildcard in the middle of a hostname is refused.
    let mut bad = route.clone();
    bad.metadata.name = Some("bad".into());
    bad.spec.hostnames = Some(vec!["a.*.example.com".into()]);
    let err = routes
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("invalid hostname");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err}"
    );
}

#[tokio::test]
async fn the_garbage_collector_removes_dependents() {
    let cp = control_plane();
    let client = cp.client().await;
    let ns = test_namespace(&client, "gc").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = maps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            },
        )
        .await
        .expect("create owner");
    let owner_ref = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().expect("uid"),
        ..Default::default()
    };
    maps.create(
        &PostParams::default(),
        &ConfigMap {
            metadata: ObjectMeta {
                name: Some("dependent".into()),
                owner_references: Some(vec![owner_ref]),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        },
    )
    .await
    .expect("create dependent");
    maps.delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    await_some("the dependent to be collected", || async {
        maps.get_opt("dependent")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn service_account_tokens_authenticate_and_rbac_is_enforced() {
    let cp = control_plane();
    let admin = cp.client().await;
    let ns = test_namespace(&admin, "sa").await;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    accounts
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("dataplane".into()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            },
        )
        .await
        .expect("create ServiceAccount");
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: None,
            expiration_seconds: Some(600),
            bound_object_ref: None,
        }),
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request("dataplane", &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .expect("token status")
        .token
        .expect("a token");
    assert!(!token.is_empty());

    // The token authenticates as the ServiceAccount, which RBAC gives nothing.
    let kubeconfig = kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    let as_sa = kube::Client::try_from(config).expect("client");
    let secrets: Api<Secret> = Api::namespaced(as_sa, &ns);
    let err = secrets
        .list(&Default::default())
        .await
        .expect_err("RBAC denies");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 403, "{}", status.message);
            assert!(
                status
                    .message
                    .contains(&format!("system:serviceaccount:{ns}:dataplane")),
                "{}",
                status.message
            );
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(cp.running());
}
