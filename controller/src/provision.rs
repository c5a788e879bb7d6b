//! Provisioning: every Gateway of ours gets its own dataplane — ServiceAccount, the
//! controller's CA, a RoleBinding (EndpointSlices), Deployment, Service, HPA and PDB — kept in
//! the shape [`objects::desired`] describes.
//!
//! ```text
//!   GatewayClass.parametersRef ─┐
//!   Gateway.spec.infrastructure.parametersRef ─▶ GatewayConfig ─▶ desired objects
//!   Gateway ──owner of──▶ ServiceAccount, ConfigMap, RoleBinding, Deployment, Service, HPA, PDB
//! ```
//!
//! A real reconcile loop (kube-runtime `Controller`), since these are side effects: it runs
//! on a Gateway change, on a change to anything it owns (someone edited the Deployment: the
//! apply puts our fields back), on a GatewayConfig or GatewayClass change, and every five
//! minutes. Objects are written with server-side apply under the field manager
//! `portico-provisioner`; the owner references make the garbage collector remove them with
//! the Gateway. Only the leader provisions. A GatewayConfig that is missing or invalid leaves
//! the running dataplane as it is and says why (its status, an Event on the Gateway).

pub mod objects;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
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

/// What the provisioner needs to know about its own installation.
#[derive(Clone, Debug)]
pub struct ProvisionSettings {
    pub controller_name: String,
    /// The dataplane image, unless a GatewayConfig names another.
    pub image: String,
    /// `host:port` of the snapshot channel as dataplane pods reach it (the controller's
    /// Service).
    pub controller_address: String,
    /// The name in the controller's serving certificate.
    pub server_name: String,
    /// PEM of the CA the dataplanes trust for the controller, copied next to each Gateway.
    pub ca_pem: String,
    /// The ClusterRole bound, in each Gateway's namespace, to its dataplane's ServiceAccount
    /// (read EndpointSlices).
    pub dataplane_cluster_role: String,
    /// This replica's name, for Events.
    pub identity: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object with the dataplane's name exists and is not this Gateway's: it is left alone
    /// (a Gateway named `controller` in the controller's namespace must not take over the
    /// controller's own ServiceAccount, Deployment and Service).
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
}

/// Runs the provisioning loop until the process ends.
pub async fn run(client: Client, settings: ProvisionSettings, leading: watch::Receiver<bool>) {
    let owned = || watcher::Config::default().labels(MANAGED_BY);
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
    });
    controller
        .owns(Api::<Deployment>::all(client.clone()), owned())
        .owns(Api::<Service>::all(client.clone()), owned())
        .owns(Api::<HorizontalPodAutoscaler>::all(client.clone()), owned())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), owned())
        .owns(Api::<ServiceAccount>::all(client.clone()), owned())
        .owns(Api::<ConfigMap>::all(client.clone()), owned())
        .owns(Api::<RoleBinding>::all(client.clone()), owned())
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
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "provisioning");
            }
        })
        .await;
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

    let desired = objects::desired(&gw, &spec, &ctx.settings);
    let ns = gw.namespace().unwrap_or_else(|| "default".into());
    let changed = match apply_all(&ctx.client, &gw, &ns, &desired).await {
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
        tracing::info!(gateway = %format!("{ns}/{}", gw.name_any()), %note, "provisioned");
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
) -> Result<Vec<&'static str>, Error> {
    let mut changed: Vec<&'static str> = Vec::new();
    if apply(c, ns, &desired.service_account).await? {
        changed.push("ServiceAccount");
    }
    if apply(c, ns, &desired.ca).await? {
        changed.push("ConfigMap");
    }
    if apply(c, ns, &desired.role_binding).await? {
        changed.push("RoleBinding");
    }
    if apply(c, ns, &desired.deployment).await? {
        changed.push("Deployment");
    }
    if apply(c, ns, &desired.service).await? {
        changed.push("Service");
    }
    match &desired.hpa {
        Some(hpa) => {
            if apply(c, ns, hpa).await? {
                changed.push("HorizontalPodAutoscaler");
            }
        }
        None => {
            let api: Api<HorizontalPodAutoscaler> = Api::namespaced(c.clone(), ns);
            let name = portico_compile::dataplane_name(&gw.name_any());
            if let Some(hpa) = api.get_opt(&name).await? {
                // Only ours: controlled by this Gateway.
                let gw_uid = gw.metadata.uid.as_deref();
                if gw_uid.is_none() || controller_uid(&hpa.metadata) != gw_uid {
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
    if apply(c, ns, &desired.pdb).await? {
        changed.push("PodDisruptionBudget");
    }
    Ok(changed)
}

/// Server-side applies `obj`; returns whether the cluster changed.
async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<bool, Error>
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
        && (controller_uid(obj.meta()).is_none()
            || controller_uid(o.meta()) != controller_uid(obj.meta()))
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

/// The UID of an object's controlling owner. The provisioner overwrites or deletes only
/// objects whose controller is the Gateway they are for.
fn controller_uid(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
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
