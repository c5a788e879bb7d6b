//! The test control plane: a real kube-apiserver with embedded etcd and a
//! kube-controller-manager, built from the Kubernetes Go modules by `tests/controlplane`
//! (versions pinned in its go.mod), started once per test binary.
//!
//! Start-up installs the Gateway API CRDs from the `sigs.k8s.io/gateway-api` module in the Go
//! module cache (nothing is copied into this repository). Each test takes its own namespace.
//! The control plane exits when this process does: it watches the stdin pipe we hold.

use crate::{DEADLINE, TempDir};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use parking_lot::Mutex;
use serde::Deserialize;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::time::Instant;

/// Where the Go module lives, relative to this crate.
fn module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane")
}

/// The control-plane binary, rebuilt when its sources are newer than it.
fn binary() -> PathBuf {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/controlplane/controlplane");
    let newest_source = ["go.mod", "go.sum", "main.go"]
        .iter()
        .filter_map(|f| {
            std::fs::metadata(module_dir().join(f))
                .ok()?
                .modified()
                .ok()
        })
        .max();
    let built = std::fs::metadata(&out).ok().and_then(|m| m.modified().ok());
    if built.is_none() || newest_source > built {
        eprintln!("building the test control plane (the first build takes several minutes)");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(module_dir())
            .env("CGO_ENABLED", "0")
            .status()
            .expect("run go build (is Go installed?)");
        assert!(status.success(), "building tests/controlplane failed");
    }
    out
}

/// The directory of a module in the Go module cache, downloading it if needed.
fn go_module_dir(module: &str) -> PathBuf {
    let out = Command::new("go")
        .args(["mod", "download", "-json", module])
        .current_dir(module_dir())
        .output()
        .expect("run go mod download");
    assert!(
        out.status.success(),
        "go mod download {module}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("go mod download -json output");
    PathBuf::from(info["Dir"].as_str().expect("module Dir"))
}

pub struct ControlPlane {
    /// The Gateway API CRD channel installed.
    pub channel: Channel,
    pub server: String,
    pub kubeconfig: PathBuf,
    child: Mutex<Child>,
    /// Held open for the life of the process; its EOF stops the control plane.
    _stdin: ChildStdin,
    _dir: TempDir,
}

impl ControlPlane {
    /// A client for the admin user, bound to the calling test's runtime.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }

    /// Whether the control-plane process is still running.
    pub fn running(&self) -> bool {
        matches!(self.child.lock().try_wait(), Ok(None))
    }
}

/// A release channel of the Gateway API CRDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Standard,
    /// A superset of standard: more kinds (XBackendTrafficPolicy, XMesh, ...) and fields.
    Experimental,
    /// No CRDs at all, neither the Gateway API's nor Portico's: a cluster as a user finds it
    /// before installing anything (the install-order tests).
    Bare,
}

impl Channel {
    fn dir(self) -> Option<&'static str> {
        match self {
            Channel::Standard => Some("config/crd/standard"),
            Channel::Experimental => Some("config/crd/experimental"),
            Channel::Bare => None,
        }
    }
}

static CP: OnceLock<ControlPlane> = OnceLock::new();

/// The control plane of this test binary, started on first use with the standard-channel
/// CRDs (or whichever channel [`control_plane_with`] started it with).
pub fn control_plane() -> &'static ControlPlane {
    CP.get_or_init(|| start_control_plane(Channel::Standard))
}

/// The control plane of this test binary with the given CRD channel. A binary picks one
/// channel: every test calls this first, before anything that would start the standard one.
pub fn control_plane_with(channel: Channel) -> &'static ControlPlane {
    let cp = CP.get_or_init(|| start_control_plane(channel));
    assert_eq!(
        cp.channel, channel,
        "this test binary already started the control plane with another CRD channel"
    );
    cp
}

fn start_control_plane(channel: Channel) -> ControlPlane {
    {
        let bin = binary();
        let dir = TempDir::new("controlplane");
        let log = std::fs::File::create(dir.path().join("controlplane.log")).expect("log file");
        let mut child = Command::new(&bin)
            .arg("-remove-dir")
            .arg("-dir")
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the control plane");
        let stdin = child.stdin.take().expect("stdin pipe");
        let stdout = child.stdout.take().expect("stdout pipe");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("READY ") {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(180))
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(dir.path().join("controlplane.log"))
                    .unwrap_or_default();
                panic!("the control plane did not become ready:\n{log}")
            });
        let (server, kubeconfig) = ready.split_once(' ').expect("READY <server> <kubeconfig>");
        let cp = ControlPlane {
            channel,
            server: server.to_string(),
            kubeconfig: PathBuf::from(kubeconfig),
            child: Mutex::new(child),
            _stdin: stdin,
            _dir: dir,
        };
        // CRDs are installed once, on a runtime of their own (tests each have theirs).
        let kubeconfig = cp.kubeconfig.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(install_crds(&kubeconfig, channel))
        })
        .join()
        .expect("CRD installation");
        cp
    }
}

/// Applies the Gateway API CRDs of `channel` and Portico's own generated CRDs (`crds/yaml`,
/// what `make crds` writes and users install) and waits until each is Established.
async fn install_crds(kubeconfig: &Path, channel: Channel) {
    let Some(dir) = channel.dir() else {
        return;
    };
    let gateway_api = go_module_dir("sigs.k8s.io/gateway-api").join(dir);
    let portico = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/yaml");
    let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    let client = Client::try_from(config).expect("client");
    apply_crd_dirs(&client, &[gateway_api, portico]).await;
}

/// Applies the standard-channel Gateway API CRDs (the upstream release a user installs) and
/// waits until they are Established.
pub async fn install_gateway_api_crds(client: &Client) {
    let dir = go_module_dir("sigs.k8s.io/gateway-api").join("config/crd/standard");
    apply_crd_dirs(client, &[dir]).await;
}

/// Waits, at most `within`, until object `name` reports `Accepted=True`: in its own
/// `status.conditions` (a GatewayClass), on one of its `status.parents` (a route) or on one
/// of its `status.ancestors` (a policy).
pub async fn await_accepted<K>(api: &Api<K>, name: &str, within: Duration)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let accepted = |conditions: &serde_json::Value| {
        conditions.as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Accepted" && c["status"] == "True")
        })
    };
    crate::await_some_within(&format!("{name} accepted"), within, || async {
        let status = serde_json::to_value(api.get(name).await.ok()?).ok()?["status"].take();
        let listed = |field: &str| {
            status[field]
                .as_array()
                .is_some_and(|l| l.iter().any(|p| accepted(&p["conditions"])))
        };
        (accepted(&status["conditions"]) || listed("parents") || listed("ancestors")).then_some(())
    })
    .await;
}

/// Applies some of the standard-channel Gateway API CRDs, by plural resource name
/// (`gatewayclasses`, `grpcroutes`, ...): a cluster with a partial or older Gateway API install.
pub async fn install_gateway_api_crds_named(client: &Client, plurals: &[&str]) {
    let dir = go_module_dir("sigs.k8s.io/gateway-api").join("config/crd/standard");
    let files: Vec<PathBuf> = plurals
        .iter()
        .map(|p| dir.join(format!("gateway.networking.k8s.io_{p}.yaml")))
        .collect();
    apply_crd_files(client, files).await;
}

/// Applies every CRD in the YAML files of `dirs` and waits until each is Established.
async fn apply_crd_dirs(client: &Client, dirs: &[PathBuf]) {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let mut in_dir: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        in_dir.sort();
        files.extend(in_dir);
    }
    apply_crd_files(client, files).await;
}

/// Applies every CRD in `files` and waits until each is Established.
async fn apply_crd_files(client: &Client, files: Vec<PathBuf>) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read CRD file");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).expect("CRD YAML");
            // The safe-upgrades ValidatingAdmissionPolicy files are not CRDs.
            if value.get("kind").and_then(|k| k.as_str()) != Some("CustomResourceDefinition") {
                continue;
            }
            let crd: CustomResourceDefinition = serde_yaml::from_value(value).expect("CRD");
            let name = crd.metadata.name.clone().expect("CRD name");
            api.patch(
                &name,
                &PatchParams::apply("portico-tests").force(),
                &Patch::Apply(&crd),
            )
            .await
            .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
            names.push(name);
        }
    }
    let end = Instant::now() + DEADLINE * 3;
    for name in names {
        while !crd_established(client, &name).await {
            assert!(Instant::now() < end, "CRD {name} not established");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether CRD `name` exists and is Established.
pub async fn crd_established(client: &Client, name: &str) -> bool {
    Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.status?.conditions)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// Starts a `portico-controller` against the test control plane. Unless `args` name one, its
/// snapshot channel gets a free address of its own (the default port would collide).
pub fn start_controller(name: &str, args: &[&str]) -> crate::Proc {
    let cp = control_plane();
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if !args.iter().any(|a| a == "--snapshot-address") {
        let ip = crate::loopback_ip();
        args.push("--snapshot-address".into());
        args.push(std::net::SocketAddr::new(ip, crate::free_port(ip)).to_string());
    }
    crate::Proc::spawn_with_env(
        name,
        &crate::binaries().controller,
        &args,
        &[("KUBECONFIG", cp.kubeconfig.as_path())],
    )
}

/// The controller shared by the tests of one binary: the default controller name, its lease
/// in `default`. It lives in a static, which is never dropped, so it runs under a shell that
/// stops it (and removes its log) when this process exits and closes the shell's stdin.
pub struct SharedController {
    _shell: Mutex<Child>,
    _stdin: ChildStdin,
}

pub fn shared_controller() -> &'static SharedController {
    static C: OnceLock<SharedController> = OnceLock::new();
    C.get_or_init(|| {
        let cp = control_plane();
        let ip = crate::loopback_ip();
        let snapshot = std::net::SocketAddr::new(ip, crate::free_port(ip)).to_string();
        let log = std::env::temp_dir().join(format!(
            "portico-shared-controller-{}.log",
            std::process::id()
        ));
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" "$@" >"$LOG" 2>&1 & pid=$!; read _; kill $pid; wait $pid; rm -f "$LOG""#)
            .arg(&crate::binaries().controller)
            .args([
                "--lease-namespace",
                "default",
                "--identity",
                "shared",
                "--snapshot-address",
                &snapshot,
            ])
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("LOG", &log)
            .env(
                "RUST_LOG",
                std::env::var("PORTICO_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::piped())
            .spawn()
            .expect("start the shared controller");
        let stdin = shell.stdin.take().expect("stdin pipe");
        SharedController {
            _shell: Mutex::new(shell),
            _stdin: stdin,
        }
    })
}

/// Creates an object from JSON through `api`.
async fn create_via<K>(api: Api<K>, object: serde_json::Value) -> K
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(object).expect("object JSON");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create object")
}

/// Creates a namespaced object from JSON.
pub async fn create<K>(client: &Client, ns: &str, object: serde_json::Value) -> K
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    create_via(Api::namespaced(client.clone(), ns), object).await
}

/// Creates a cluster-scoped object from JSON.
pub async fn create_cluster<K>(client: &Client, object: serde_json::Value) -> K
where
    K: kube::Resource<Scope = kube::core::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    create_via(Api::all(client.clone()), object).await
}

/// A fresh namespace for one test.
pub async fn test_namespace(client: &Client, prefix: &str) -> String {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            generate_name: Some(format!("{prefix}-")),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace")
        .metadata
        .name
        .expect("generated name")
}

/// A kubeconfig (written into `dir`) that authenticates to the test control plane as
/// ServiceAccount `ns/account`, with a token from the TokenRequest API: how a pod running as
/// that account reaches the API server.
pub async fn service_account_kubeconfig(
    client: &Client,
    ns: &str,
    account: &str,
    dir: &Path,
) -> PathBuf {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let token = accounts
        .create_token_request(account, &Default::default(), &TokenRequest::default())
        .await
        .expect("TokenRequest")
        .status
        .and_then(|s| s.token)
        .expect("token");
    let cp = control_plane();
    let admin = kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig");
    let ca = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority.clone())
        .expect("CA file");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: test, cluster: {{server: \"{}\", certificate-authority: \"{ca}\"}}}}]\nusers: [{{name: {account}, user: {{token: {token}}}}}]\ncontexts: [{{name: test, context: {{cluster: test, user: {account}}}}}]\ncurrent-context: test\n",
        cp.server
    );
    let path = dir.join(format!("{ns}-{account}.kubeconfig"));
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// Server-side applies every document of the multi-document YAML `text`, in order, as
/// `kubectl apply --server-side` does (field manager `manager`); namespaced objects without
/// a namespace go to `default_ns`, and those whose kind `dry_run` names are only dry-run.
/// Discovery runs first, so a custom resource needs its CRD established before the call.
/// Returns the kinds applied.
pub async fn apply_manifests(
    client: &Client,
    text: &str,
    manager: &str,
    default_ns: &str,
    dry_run: impl Fn(&str) -> bool,
) -> Vec<String> {
    use kube::api::DynamicObject;
    use kube::discovery::{Discovery, Scope};
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).expect("YAML");
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_yaml::from_value(value).expect("object");
        let types = obj.types.clone().expect("apiVersion and kind");
        let gvk = kube::api::GroupVersionKind::try_from(&types).expect("gvk");
        let (ar, caps) = discovery.resolve_gvk(&gvk).unwrap_or_else(|| {
            panic!("the API server does not serve {gvk:?} (applied before its CRD?)")
        });
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &ar),
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.metadata.namespace.as_deref().unwrap_or(default_ns),
                &ar,
            ),
        };
        let name = obj.metadata.name.clone().expect("name");
        let mut params = PatchParams::apply(manager).force();
        if dry_run(&types.kind) {
            params = params.dry_run();
        }
        api.patch(&name, &params, &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("{} {name}: {e}", types.kind));
        kinds.push(types.kind);
    }
    kinds
}
