//! A Gateway on the test control plane with its own controller, snapshot channel and
//! dataplanes: what the channel tests and the propagation benchmark share.

use crate::cluster::{control_plane, create, create_cluster, start_controller, test_namespace};
use crate::{Proc, TempDir, await_some, binaries, free_port, loopback_ip};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// A namespace with a GatewayClass of its own controller name, Gateway `gw` with one HTTP
/// listener on a free port, and Service `svc` (port 80, named `http`); and a dataplane
/// namespace of its own, where the controller admits the dataplanes' ServiceAccounts.
pub struct Setup {
    pub client: Client,
    pub ns: String,
    /// The controller's `--dataplane-namespace`.
    pub dataplane_ns: String,
    pub controller_name: String,
    pub snapshot_addr: SocketAddr,
    pub files: TempDir,
    pub port: u16,
}

impl Setup {
    pub async fn new(prefix: &str) -> Self {
        let client = control_plane().client().await;
        let ns = test_namespace(&client, prefix).await;
        let dataplane_ns = test_namespace(&client, &format!("{prefix}-dp")).await;
        let ip = loopback_ip();
        let setup = Self {
            controller_name: format!("portico.dev/{ns}"),
            snapshot_addr: SocketAddr::new(ip, free_port(ip)),
            files: TempDir::new("channel"),
            port: free_port(ip),
            client,
            ns,
            dataplane_ns,
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
        setup
    }

    pub fn ca_file(&self) -> PathBuf {
        self.files.path().join("controller-ca.pem")
    }

    pub fn controller(&self) -> Proc {
        self.controller_with(&[])
    }

    /// The controller with more arguments.
    pub fn controller_with(&self, extra: &[&str]) -> Proc {
        self.controller_leading_in(&self.ns, extra)
    }

    /// The controller with more arguments, its lease in `lease_ns`.
    pub fn controller_leading_in(&self, lease_ns: &str, extra: &[&str]) -> Proc {
        let lease = "channel";
        let addr = self.snapshot_addr.to_string();
        let dataplanes = self.dataplane_ns.clone();
        let ca = self.ca_file().display().to_string();
        let mut args = vec![
            "--controller-name",
            &self.controller_name,
            "--lease-namespace",
            lease_ns,
            "--lease-name",
            lease,
            "--dataplane-namespace",
            &dataplanes,
            "--snapshot-address",
            &addr,
            "--tls-server-name",
            "localhost",
            "--write-ca-file",
            &ca,
            // One identity, so a restarted controller takes its own lease back at once.
            "--identity",
            "channel-controller",
        ];
        args.extend_from_slice(extra);
        start_controller("controller", &args)
    }

    /// The ServiceAccount the controller admits for Gateway `gw` (in the dataplane namespace).
    pub fn dataplane_account(&self) -> String {
        portico_compile::dataplane_name(&self.ns, "gw")
    }

    /// A token for ServiceAccount `account` of the dataplane namespace (created if needed),
    /// for the snapshot audience.
    pub async fn token(&self, account: &str) -> PathBuf {
        self.token_in(&self.dataplane_ns, account).await
    }

    /// A token for ServiceAccount `ns/account` (created if needed), for the snapshot audience.
    pub async fn token_in(&self, ns: &str, account: &str) -> PathBuf {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
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
        let path = self.files.path().join(format!("{ns}.{account}.token"));
        std::fs::write(&path, token).expect("write token");
        path
    }

    /// A kubeconfig for ServiceAccount `account` of the dataplane namespace (which must exist)
    /// with an API token, and a Role that lets it list and watch EndpointSlices in the
    /// Gateway's namespace (where its backends are) only.
    pub async fn dataplane_kubeconfig(&self, account: &str) -> PathBuf {
        let roles: Api<Role> = Api::namespaced(self.client.clone(), &self.ns);
        roles
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": account},
                    "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                               "verbs": ["list", "watch"]}]}))
                .expect("Role"),
            )
            .await
            .expect("create Role");
        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), &self.ns);
        bindings
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": account},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
                    "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": self.dataplane_ns}]}))
                .expect("RoleBinding"),
            )
            .await
            .expect("create RoleBinding");
        crate::cluster::service_account_kubeconfig(
            &self.client,
            &self.dataplane_ns,
            account,
            self.files.path(),
        )
        .await
    }

    /// Starts a dataplane replica on its own loopback address.
    pub fn dataplane(&self, replica: &str, token: &Path, state: &Path) -> Dataplane {
        self.dataplane_on(loopback_ip(), replica, token, state)
    }

    /// A dataplane replica that reads EndpointSlices with `kubeconfig` instead of the
    /// admin's.
    pub fn dataplane_as(
        &self,
        replica: &str,
        token: &Path,
        state: &Path,
        kubeconfig: &Path,
    ) -> Dataplane {
        self.spawn_dataplane(loopback_ip(), replica, token, state, kubeconfig)
    }

    pub fn dataplane_on(&self, ip: IpAddr, replica: &str, token: &Path, state: &Path) -> Dataplane {
        let kubeconfig = control_plane().kubeconfig.clone();
        self.spawn_dataplane(ip, replica, token, state, &kubeconfig)
    }

    fn spawn_dataplane(
        &self,
        ip: IpAddr,
        replica: &str,
        token: &Path,
        state: &Path,
        kubeconfig: &Path,
    ) -> Dataplane {
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
        Dataplane {
            ip,
            proc: Proc::spawn_with_env(
                replica,
                &binaries().portico,
                &args,
                &[("KUBECONFIG", kubeconfig)],
            ),
        }
    }

    pub async fn gateway_condition(&self, type_: &str) -> Option<Condition> {
        let api: Api<Gateway> = Api::namespaced(self.client.clone(), &self.ns);
        let gw = api.get("gw").await.ok()?;
        gw.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == type_)
    }

    pub async fn await_programmed(&self) {
        await_some("Gateway Programmed=True", || async {
            self.gateway_condition("Programmed")
                .await
                .filter(|c| c.status == "True")
        })
        .await;
    }
}

pub struct Dataplane {
    pub ip: IpAddr,
    pub proc: Proc,
}
