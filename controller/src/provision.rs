//! Provisioning: every Gateway of ours gets its own dataplane — ServiceAccount, the
//! controller's CA, Deployment, Service, HPA and PDB — kept in the shape
//! [`objects::desired`] describes, where its [`Placement`] says: by default in one namespace
//! the installer chooses (the dataplane namespace, the controller's own by default), as
//! `portico-<ns>-<name>-<hash>`; for the namespaces the installer lists, beside the Gateway.
//!
//! ```text
//!   GatewayClass.parametersRef ─┐
//!   Gateway.spec.infrastructure.parametersRef ─▶ GatewayConfig ─▶ desired objects
//!   Gateway team-a/web ──▶ <dataplane namespace>/portico-team-a-web-<hash>
//!                          ServiceAccount, ConfigMap, Deployment, Service, HPA, PDB
//!   Gateway team-b/api ──▶ team-b/portico-team-b-api-<hash>       (team-b listed)
//!                          ConfigMap, Deployment, Service, HPA, PDB
//! ```
//!
//! Why one namespace by default: the controller then writes workloads nowhere else. It
//! needs no create/patch on Deployments, ServiceAccounts or RoleBindings in every namespace
//! (which would let a compromised controller run any pod as any ServiceAccount of the
//! cluster), only a Role in the dataplane namespace; the dataplanes read EndpointSlices
//! through one binding of their namespace's ServiceAccounts made by the chart. A team that
//! wants its Gateway's pods in its own namespace (its quota, its cost labels, its network
//! policies) is listed by the installer: the chart gives the controller a Role there (no
//! ServiceAccounts, no RoleBindings) and makes the one ServiceAccount the dataplanes there
//! run as. Whoever may create pods in such a namespace may use that account, and so read
//! EndpointSlices and that namespace's Gateways' snapshots: the namespace is trusted with
//! its own Gateways, which is what listing it means.
//!
//! [`Placement`]: portico_compile::Placement
//!
//! A real reconcile loop (kube-runtime `Controller`), since these are side effects: it runs
//! on a Gateway change, on a change to anything it made (someone edited the Deployment: the
//! apply puts our fields back), on a GatewayConfig or GatewayClass change, and every five
//! minutes. Objects are written with server-side apply under the field manager
//! `portico-provisioner`. An owner reference cannot cross namespaces, so the objects say
//! which Gateway they are for in an annotation, and the leader's sweep removes those whose
//! Gateway is gone or no longer of our class; their owner is the GatewayClass, so removing
//! the class (or the chart) removes them all. Only the leader provisions. A GatewayConfig
//! that is missing or invalid leaves the running dataplane as it is and says why (its
//! status, an Event on the Gateway).

pub mod objects;
mod settings;

pub use settings::ProvisionSettings;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use portico_compile::ServedPort;
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
use portico_crds::gatewayconfig::GatewayConfig;
use portico_crds::policy::PolicyCondition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The field manager of everything the provisioner writes.
pub const FIELD_MANAGER: &str = "portico-provisioner";
/// Set on every provisioned object; the owned-object watches select on it.
const MANAGED_BY: &str = "app.kubernetes.io/managed-by=portico-controller";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object with the dataplane's name exists and does not say it is this Gateway's
    /// dataplane: it is left alone (no Gateway may take over another object where
    /// dataplanes live, whatever its name hashes to).
    #[error(
        "{kind} {namespace}/{name} exists and does not belong to this Gateway; it is left as it is"
    )]
    NameInUse {
        kind: String,
        namespace: String,
        name: String,
    },
}

struct Context {
    client: Client,
    settings: ProvisionSettings,
    recorder: Recorder,
    leading: watch::Receiver<bool>,
    /// Consecutive failures per Gateway, for the back-off.
    failures: Mutex<HashMap<ObjectRef<Gateway>, u32>>,
    /// UIDs of the objects the last sweep found without a live Gateway, by namespace: deleted
    /// only if the next sweep finds them so again (a class or Gateway briefly missing, or
    /// re-created between the sweep's reads, costs no dataplane).
    doomed: Mutex<HashMap<String, std::collections::HashSet<String>>>,
    counters: Arc<crate::admin::Counters>,
    listener_set_ports: watch::Receiver<Option<Arc<ListenerSetPorts>>>,
}

/// The ports each Gateway serves for its ListenerSets' listeners, by Gateway.
pub type ListenerSetPorts = std::collections::BTreeMap<
    portico_model::ObjectRef,
    std::collections::BTreeSet<portico_compile::ServedPort>,
>;

/// Runs the provisioning loop until the process ends.
pub async fn run(
    client: Client,
    settings: ProvisionSettings,
    leading: watch::Receiver<bool>,
    counters: Arc<crate::admin::Counters>,
    listener_set_ports: watch::Receiver<Option<Arc<ListenerSetPorts>>>,
) {
    let ports_rx = listener_set_ports.clone();
    let controller = Controller::new(Api::<Gateway>::all(client.clone()), Default::default());
    let gateways = controller.store();
    let all = move || {
        gateways
            .state()
            .iter()
            .map(|g| ObjectRef::from_obj(&**g))
            .collect::<Vec<_>>()
    };
    let all_too = all.clone();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "portico-controller".into(),
            instance: Some(settings.identity.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        recorder,
        leading,
        failures: Mutex::new(HashMap::new()),
        doomed: Mutex::new(Default::default()),
        counters,
        listener_set_ports,
    });
    let placement = ctx.settings.placement.clone();
    tokio::spawn(sweep_loop(ctx.clone(), controller.store()));
    // What it made, wherever dataplanes may be (a Role per namespace allows no cluster-wide
    // watch). ServiceAccounts only in the dataplane namespace: beside their Gateways the
    // dataplanes run as the installer's.
    let mut controller = watch_owned::<ServiceAccount>(controller, &client, &placement.namespace);
    for ns in placement.namespaces() {
        controller = watch_owned::<Deployment>(controller, &client, ns);
        controller = watch_owned::<Service>(controller, &client, ns);
        controller = watch_owned::<HorizontalPodAutoscaler>(controller, &client, ns);
        controller = watch_owned::<PodDisruptionBudget>(controller, &client, ns);
        controller = watch_owned::<ConfigMap>(controller, &client, ns);
    }
    controller
        // A configuration or class change may touch any Gateway: there are few.
        .watches(
            Api::<GatewayConfig>::all(client.clone()),
            Default::default(),
            move |_| all(),
        )
        .watches(
            Api::<GatewayClass>::all(client.clone()),
            Default::default(),
            move |_| all_too(),
        )
        // A ListenerSet's ports are its Gateway's Service's: when compile admits or drops
        // one, every Gateway is looked at again (there are few, and most change nothing).
        .reconcile_all_on(futures::stream::unfold(ports_rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        }))
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "provisioning");
            }
        })
        .await;
}

/// `controller`, also run for the Gateway an object of kind `K` it made in `ns` is for.
/// The watch backs off on its own and its errors are logged, not passed on: the
/// controller's triggers back off together on any error, so one namespace it may no longer
/// read (deleted with its Role) would hold up every Gateway's reconcile.
fn watch_owned<K>(controller: Controller<Gateway>, client: &Client, ns: &str) -> Controller<Gateway>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let namespace = ns.to_string();
    let objects = watcher::watcher(
        Api::<K>::namespaced(client.clone(), ns),
        watcher::Config::default().labels(MANAGED_BY),
    )
    .default_backoff()
    .touched_objects()
    .filter(move |r| {
        if let Err(e) = r {
            tracing::warn!(namespace = %namespace, kind = %K::kind(&()), error = %e, "watching provisioned objects");
        }
        futures::future::ready(r.is_ok())
    });
    controller.watches_stream(objects, |o| gateway_of(o.meta()))
}

fn error_policy(gw: Arc<Gateway>, e: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(&*gw);
    let n = {
        let mut f = ctx.failures.lock();
        let n = f.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let wait = Duration::from_secs(2u64.saturating_pow(n.min(8))).min(Duration::from_secs(300));
    ctx.counters
        .provision_errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(gateway = %gw.name_any(), error = %e, retry_in = ?wait, "provisioning failed");
    Action::requeue(wait)
}

/// Which GatewayConfig applies to `gw` (namespace, name), as compile decides it.
fn config_ref(gw: &Gateway, class: &GatewayClass) -> Result<Option<(String, String)>, String> {
    portico_compile::parameters::gateway_config(gw, class).map(|r| r.map(|r| (r.namespace, r.name)))
}

async fn reconcile(gw: Arc<Gateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !*ctx.leading.borrow() {
        // The leader provisions; a replica that becomes leader picks everything up here.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    if gw.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let classes: Api<GatewayClass> = Api::all(ctx.client.clone());
    let Some(class) = classes.get_opt(&gw.spec.gateway_class_name).await? else {
        return Ok(Action::await_change());
    };
    if class.spec.controller_name != ctx.settings.controller_name {
        return Ok(Action::await_change());
    }
    let config = match config_ref(&gw, &class) {
        Err(message) => {
            warn(&ctx, &gw, "InvalidParametersRef", &message).await;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        Ok(None) => None,
        Ok(Some((ns, name))) => {
            let api: Api<GatewayConfig> = Api::namespaced(ctx.client.clone(), &ns);
            match api.get_opt(&name).await? {
                Some(c) => Some(c),
                None => {
                    let message = format!(
                        "GatewayConfig {ns}/{name} does not exist; the dataplane is left as it is"
                    );
                    warn(&ctx, &gw, "GatewayConfigNotFound", &message).await;
                    return Ok(Action::requeue(Duration::from_secs(30)));
                }
            }
        }
    };
    let spec = config.as_ref().map(|c| c.spec.clone()).unwrap_or_default();
    if let Err(message) = objects::validate(&spec) {
        if let Some(c) = &config {
            config_status(&ctx, c, false, &message).await?;
        }
        warn(
            &ctx,
            &gw,
            "InvalidGatewayConfig",
            &format!("{message}; the dataplane is left as it is"),
        )
        .await;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    if let Some(c) = &config {
        config_status(&ctx, c, true, "used by the Gateways that name it").await?;
    }
    // A Gateway's own GatewayConfig gets image and placement from its class's, unless the
    // class's allows them (gatewayOverrides): the pod receives the Gateway's keys.
    let spec = match portico_compile::parameters::own_config(&gw) {
        Ok(Some(_)) => {
            let class_spec = match portico_compile::parameters::class_config(&class) {
                Ok(Some(r)) => Api::<GatewayConfig>::namespaced(ctx.client.clone(), &r.namespace)
                    .get_opt(&r.name)
                    .await?
                    .map(|c| c.spec),
                _ => None,
            };
            let refused =
                portico_compile::parameters::refused_overrides(&spec, class_spec.as_ref());
            if !refused.is_empty() {
                warn(
                    &ctx,
                    &gw,
                    "OverrideNotAllowed",
                    &format!(
                        "the Gateway's GatewayConfig sets {}, which its GatewayClass's configuration does not allow (gatewayOverrides); the dataplane uses the class's values",
                        refused.join(", ")
                    ),
                )
                .await;
            }
            portico_compile::parameters::restrict_overrides(&spec, class_spec.as_ref())
        }
        _ => spec,
    };

    // The ports its ListenerSets are served on, as the last compile admitted them. Before
    // the first compile (which may wait long for a kind it cannot list) they are unknown:
    // the Service keeps the ones it has, rather than drop them for a moment.
    let id = portico_model::ObjectRef::new(gw.namespace().unwrap_or_default(), gw.name_any());
    let compiled = ctx
        .listener_set_ports
        .borrow()
        .as_ref()
        .map(|m| m.get(&id).cloned().unwrap_or_default());
    let ports = match compiled {
        Some(ports) => ports,
        None => {
            let name = portico_compile::dataplane_name(&id.namespace, &id.name);
            let own: std::collections::BTreeSet<ServedPort> = gw
                .spec
                .listeners
                .iter()
                .map(|l| ServedPort::of(l.port, &l.protocol))
                .collect();
            Api::<Service>::namespaced(
                ctx.client.clone(),
                ctx.settings.placement.namespace_for(&id.namespace),
            )
            .get_opt(&name)
            .await?
            .and_then(|s| s.spec)
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .iter()
            .map(|p| ServedPort::of(p.port, p.protocol.as_deref().unwrap_or("TCP")))
            .filter(|p| !own.contains(p))
            .collect()
        }
    };
    let desired = objects::desired(&gw, &class, &spec, &ctx.settings, &ports);
    let ns = ctx
        .settings
        .placement
        .namespace_for(&id.namespace)
        .to_string();
    let changed = match apply_all(&ctx.client, &gw, &ns, &desired, &ctx.settings).await {
        Err(e @ Error::NameInUse { .. }) => {
            // Often a Gateway deleted and made again, whose old objects the garbage collector
            // has not removed yet: look again soon.
            warn(&ctx, &gw, "NameInUse", &e.to_string()).await;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        r => r?,
    };
    ctx.failures.lock().remove(&ObjectRef::from_obj(&*gw));
    if !changed.is_empty() {
        let note = format!("applied {}", changed.join(", "));
        tracing::info!(gateway = %objects::gateway_key(&gw), %note, "provisioned");
        publish(&ctx, &gw, EventType::Normal, "Provisioned", &note).await;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Applies every object of the Gateway's dataplane; returns what changed.
async fn apply_all(
    c: &Client,
    gw: &Gateway,
    ns: &str,
    desired: &objects::Desired,
    s: &ProvisionSettings,
) -> Result<Vec<&'static str>, Error> {
    let key = objects::gateway_key(gw);
    let mine = |meta: &ObjectMeta| made_for(meta, &s.controller_name).is_some_and(|k| k == key);
    let mut changed: Vec<&'static str> = Vec::new();
    if let Some(sa) = &desired.service_account
        && apply(c, ns, sa, &mine).await?
    {
        changed.push("ServiceAccount");
    }
    if apply(c, ns, &desired.ca, &mine).await? {
        changed.push("ConfigMap");
    }
    if apply(c, ns, &desired.deployment, &mine).await? {
        changed.push("Deployment");
    }
    if apply(c, ns, &desired.service, &mine).await? {
        changed.push("Service");
    }
    match &desired.hpa {
        Some(hpa) => {
            if apply(c, ns, hpa, &mine).await? {
                changed.push("HorizontalPodAutoscaler");
            }
        }
        None => {
            let api: Api<HorizontalPodAutoscaler> = Api::namespaced(c.clone(), ns);
            let name = desired.deployment.metadata.name.clone().unwrap_or_default();
            if let Some(hpa) = api.get_opt(&name).await? {
                if !mine(&hpa.metadata) {
                    return Err(Error::NameInUse {
                        kind: "HorizontalPodAutoscaler".into(),
                        namespace: ns.to_string(),
                        name,
                    });
                }
                api.delete(&name, &Default::default()).await?;
                changed.push("HorizontalPodAutoscaler (removed)");
            }
        }
    }
    if apply(c, ns, &desired.pdb, &mine).await? {
        changed.push("PodDisruptionBudget");
    }
    Ok(changed)
}

/// Server-side applies `obj` unless an object of that name exists that is not `mine`;
/// returns whether the cluster changed.
async fn apply<K>(
    client: &Client,
    ns: &str,
    obj: &K,
    mine: &impl Fn(&ObjectMeta) -> bool,
) -> Result<bool, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    let existing = api.get_opt(&name).await?;
    if let Some(o) = &existing
        && !mine(o.meta())
    {
        return Err(Error::NameInUse {
            kind: K::kind(&()).into_owned(),
            namespace: ns.to_string(),
            name,
        });
    }
    let before = existing.and_then(|o| o.meta().resource_version.clone());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let after = api.patch(&name, &pp, &Patch::Apply(obj)).await?;
    Ok(before != after.meta().resource_version)
}

/// The Gateway (`namespace/name`) a provisioned object was made for, if it
/// was made by the controller named `controller_name`.
fn made_for<'a>(meta: &'a ObjectMeta, controller_name: &str) -> Option<&'a str> {
    let a = meta.annotations.as_ref()?;
    (a.get(objects::CONTROLLER_ANNOTATION).map(String::as_str) == Some(controller_name))
        .then(|| a.get(objects::GATEWAY_ANNOTATION).map(String::as_str))
        .flatten()
}

/// The Gateway a provisioned object says it is for, to reconcile it when the
/// object changes.
fn gateway_of(meta: &ObjectMeta) -> Option<ObjectRef<Gateway>> {
    let key = meta
        .annotations
        .as_ref()?
        .get(objects::GATEWAY_ANNOTATION)?;
    let (ns, name) = key.split_once('/')?;
    Some(ObjectRef::new(name).within(ns))
}

/// How often the leader looks for dataplanes whose Gateway is gone.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Removes, while leading, the dataplane objects whose Gateway no longer exists, is being
/// deleted, or no longer names a class of ours.
async fn sweep_loop(ctx: Arc<Context>, gateways: kube::runtime::reflector::Store<Gateway>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !*ctx.leading.borrow() || gateways.wait_until_ready().await.is_err() {
            continue;
        }
        if let Err(e) = sweep(&ctx, &gateways).await {
            tracing::warn!(error = %e, "sweeping dataplanes of deleted Gateways");
        }
    }
}

async fn sweep(
    ctx: &Context,
    gateways: &kube::runtime::reflector::Store<Gateway>,
) -> Result<(), Error> {
    let classes: Vec<String> = Api::<GatewayClass>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|c| c.spec.controller_name == ctx.settings.controller_name)
        .filter_map(|c| c.metadata.name)
        .collect();
    let placement = &ctx.settings.placement;
    let controller_name = ctx.settings.controller_name.as_str();
    // Where each Gateway's dataplane has a Deployment that serves (an available replica).
    let mut serving = std::collections::HashSet::new();
    for ns in placement.namespaces() {
        let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), ns)
            .list(&ListParams::default().labels(MANAGED_BY))
            .await;
        for d in deployments.map(|l| l.items).unwrap_or_default() {
            let available = d
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            if let Some(key) = made_for(&d.metadata, controller_name)
                && available > 0
            {
                serving.insert((key.to_string(), ns.to_string()));
            }
        }
    }
    // An object is live while its Gateway is, where the Gateway's dataplane belongs. A
    // namespace added to the beside-the-Gateway list moves the dataplane: the old one stays
    // until the new one serves.
    let live = |key: &str, at: &str| {
        let Some((ns, name)) = key.split_once('/') else {
            return false;
        };
        let home = placement.namespace_for(ns);
        (home == at || !serving.contains(&(key.to_string(), home.to_string())))
            && gateways
                .get(&ObjectRef::new(name).within(ns))
                .is_some_and(|g| {
                    g.metadata.deletion_timestamp.is_none()
                        && classes.contains(&g.spec.gateway_class_name)
                })
    };
    let doomed_before = ctx.doomed.lock().clone();
    let mut doomed = HashMap::new();
    let mut removed = Vec::new();
    for ns in placement.namespaces() {
        let before = doomed_before.get(ns).cloned().unwrap_or_default();
        let s = Sweep {
            client: &ctx.client,
            namespace: ns,
            controller_name,
            live: &live,
            doomed_before: &before,
        };
        let mut marked = std::collections::HashSet::new();
        match s.all(ns == placement.namespace, &mut marked).await {
            Ok(r) => {
                removed.extend(r);
                doomed.insert(ns.to_string(), marked);
            }
            // One namespace it cannot read (its Role gone with it) neither stops the others
            // nor loses what was marked there.
            Err(e) => {
                tracing::warn!(namespace = ns, error = %e, "sweeping dataplanes");
                doomed.insert(ns.to_string(), before);
            }
        }
    }
    *ctx.doomed.lock() = doomed;
    for (gateway, what) in removed {
        tracing::info!(%gateway, removed = %what, "removed the dataplane of a Gateway that is gone or moved");
    }
    Ok(())
}

/// One sweep of one namespace where dataplanes may be.
struct Sweep<'a, F> {
    client: &'a Client,
    namespace: &'a str,
    controller_name: &'a str,
    /// Whether an object for Gateway `namespace/name` (first) in namespace (second) is live.
    live: &'a F,
    doomed_before: &'a std::collections::HashSet<String>,
}

impl<F: Fn(&str, &str) -> bool> Sweep<'_, F> {
    /// Every kind, ServiceAccounts only where the controller makes them.
    async fn all(
        &self,
        accounts: bool,
        doomed: &mut std::collections::HashSet<String>,
    ) -> Result<Vec<(String, String)>, Error> {
        let mut removed = Vec::new();
        removed.extend(self.kind::<Deployment>(doomed).await?);
        removed.extend(self.kind::<HorizontalPodAutoscaler>(doomed).await?);
        removed.extend(self.kind::<PodDisruptionBudget>(doomed).await?);
        removed.extend(self.kind::<Service>(doomed).await?);
        removed.extend(self.kind::<ConfigMap>(doomed).await?);
        if accounts {
            removed.extend(self.kind::<ServiceAccount>(doomed).await?);
        }
        Ok(removed)
    }

    /// Deletes the objects of kind `K` this controller made whose Gateway is not live now and
    /// was not at the last sweep either (by UID, so an object made again meanwhile stays);
    /// notes in `doomed` those seen without a live Gateway for the first time. Returns
    /// (Gateway, "Kind name") for each deleted.
    async fn kind<K>(
        &self,
        doomed: &mut std::collections::HashSet<String>,
    ) -> Result<Vec<(String, String)>, Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        let mut removed = Vec::new();
        for obj in api
            .list(&ListParams::default().labels(MANAGED_BY))
            .await?
            .items
        {
            let Some(key) = made_for(obj.meta(), self.controller_name) else {
                continue;
            };
            if (self.live)(key, self.namespace) {
                continue;
            }
            let Some(uid) = obj.meta().uid.clone() else {
                continue;
            };
            if !self.doomed_before.contains(&uid) {
                doomed.insert(uid);
                continue;
            }
            let name = obj.meta().name.clone().unwrap_or_default();
            let params = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match api.delete(&name, &params).await {
                Ok(_) => removed.push((key.to_string(), format!("{} {name}", K::kind(&())))),
                // Gone already, or another object by now.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }
}

async fn config_status(
    ctx: &Context,
    config: &GatewayConfig,
    ok: bool,
    message: &str,
) -> Result<(), Error> {
    let current = config
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"));
    let (status, reason) = if ok {
        ("True", "Accepted")
    } else {
        ("False", "Invalid")
    };
    if current.is_some_and(|c| {
        c.status == status
            && c.reason == reason
            && c.message == message
            && c.observed_generation == config.metadata.generation
    }) {
        return Ok(());
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let condition = PolicyCondition {
        type_: "Accepted".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: config.metadata.generation,
        last_transition_time: Some(now.0.to_string()),
    };
    let api: Api<GatewayConfig> =
        Api::namespaced(ctx.client.clone(), &config.namespace().unwrap_or_default());
    api.patch_status(
        &config.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [condition]}})),
    )
    .await?;
    Ok(())
}

async fn warn(ctx: &Context, gw: &Gateway, reason: &str, message: &str) {
    ctx.counters
        .provision_errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(gateway = %gw.name_any(), reason, message, "not provisioned");
    publish(ctx, gw, EventType::Warning, reason, message).await;
}

async fn publish(ctx: &Context, gw: &Gateway, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Provision".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &gw.object_ref(&())).await {
        tracing::debug!(error = %e, "cannot publish an Event");
    }
}

#[cfg(test)]
mod tests;
