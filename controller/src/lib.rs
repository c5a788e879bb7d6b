//! The Portico controller: index, compile, status, leadership.
//!
//! Watches feed synchronous stores ([`index`]) and record what changed; a change wakes the
//! compile loop, which waits for the burst to settle, recompiles the Gateways the change
//! touches with the same pure function standalone mode uses
//! ([`portico_compile::incremental`]), and — on the leader only — writes the status that
//! changed ([`status`], [`leader`]).
//! Snapshots are compiled on every replica and served to dataplanes by each of them
//! ([`channel`]); a Gateway is `Programmed` once its connected dataplanes acknowledged the
//! current version.

pub mod admin;
pub mod certs;
pub mod channel;
pub mod index;
pub mod leader;
pub mod provision;
pub mod status;

use index::Index;
use kube::Client;
use leader::{LeaderElector, LeaseSettings};
use portico_compile::incremental::{Changes, IncrementalCompile};
use status::StatusWriter;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Clone, Debug)]
pub struct Settings {
    pub controller_name: String,
    pub lease: LeaseSettings,
    /// The shortest time between two compiles; changes arriving within it are compiled
    /// together.
    pub debounce: Duration,
    /// The Redis of `Global` rate limits whose policy names none.
    pub redis_url: Option<String>,
    /// Where each Gateway's dataplane lives (its ServiceAccount, Service, Deployment): the
    /// snapshot channel admits only its ServiceAccount there, and the Gateway reports the
    /// addresses of its Service there.
    pub placement: portico_compile::Placement,
    /// What a listener or policy says when the controller may not read its Secret: how to
    /// grant it (`{namespace}` is the Secret's).
    pub secret_hint: String,
    /// Provision each Gateway's dataplane (off when `None`).
    pub provision: Option<provision::ProvisionSettings>,
    /// Where to serve `/healthz`, `/readyz` and `/metrics` (none when `None`).
    pub admin_address: Option<std::net::SocketAddr>,
    /// What session-persistence keys are derived from (random when `None`: sessions then
    /// last only as long as this controller).
    pub session_secret: Option<channel::SessionSecret>,
}

/// How long after start-up a Gateway without connected dataplanes keeps the `Programmed`
/// condition it has: dataplanes reconnect within their 5 s back-off, so a controller restart
/// does not flap the condition.
const RECONNECT_GRACE: Duration = Duration::from_secs(10);

/// Fills in each CacheInvalidation's pending `Purged` conditions from what the replicas of
/// the Gateways it was sent to acknowledged: a replica acknowledges a version only once it
/// applied it, purges included, so every connected replica serving the current version of
/// every such Gateway means the purge is done.
///
/// Once `Purged` is True for a generation it stays so: a later rollout of an unrelated change
/// does not undo a purge.
fn apply_purges(report: &mut portico_compile::StatusReport, hub: &channel::Hub, index: &Index) {
    use kube::runtime::reflector::ObjectRef as StoreRef;
    use portico_compile::status::{reasons, types};
    use portico_model::PolicyKind;
    for ((kind, id), status) in report.policies.iter_mut() {
        if *kind != PolicyKind::Invalidation {
            continue;
        }
        let current = index
            .cache_invalidations
            .get(&StoreRef::new(&id.name).within(&id.namespace));
        let generation = current.as_ref().and_then(|c| c.metadata.generation);
        let done_before = current
            .as_ref()
            .and_then(|c| c.status.as_ref())
            .and_then(|s| {
                s.ancestors.iter().find_map(|a| {
                    a.conditions.iter().find(|c| {
                        c.type_ == types::PURGED
                            && c.status == "True"
                            && c.observed_generation == generation
                    })
                })
            })
            .map(|c| c.message.clone());
        let (purged, reason, message) = match done_before {
            Some(message) => (true, types::PURGED, message),
            None => from_delivery(report.purges.get(id), hub),
        };
        for a in &mut status.ancestors {
            for c in a
                .conditions
                .iter_mut()
                .filter(|c| c.type_ == types::PURGED && c.reason == reasons::PENDING)
            {
                c.status = if purged { "True" } else { "False" }.to_string();
                c.reason = reason.to_string();
                c.message.clone_from(&message);
            }
        }
    }
}

/// Whether the replicas of `gateways` all serve their current version (so applied the
/// purges it carries), with the condition's reason and message.
fn from_delivery(
    gateways: Option<&std::collections::BTreeSet<portico_model::ObjectRef>>,
    hub: &channel::Hub,
) -> (bool, &'static str, String) {
    use portico_compile::status::{reasons, types};
    let mut done = Vec::new();
    let mut waiting = Vec::new();
    for gw in gateways.into_iter().flatten() {
        match hub.delivery(gw) {
            channel::Delivery::Acked => {
                done.extend(
                    hub.current_replicas(gw)
                        .into_iter()
                        .map(|r| format!("{gw}/{r}")),
                );
            }
            channel::Delivery::NoDataplane => {
                waiting.push(format!("{gw} (no dataplane connected)"))
            }
            channel::Delivery::Waiting => waiting.push(format!("{gw} (replicas applying it)")),
            channel::Delivery::Rejected(e) => {
                waiting.push(format!("{gw} (a replica rejected its configuration: {e})"))
            }
        }
    }
    if waiting.is_empty() && !done.is_empty() {
        (
            true,
            types::PURGED,
            format!("purged by {}", done.join(", ")),
        )
    } else {
        (
            false,
            reasons::PENDING,
            format!("waiting for {}", waiting.join(", ")),
        )
    }
}

/// Sets each accepted Gateway's and ListenerSet's (and their listeners') `Programmed`
/// condition from what the Gateway's dataplanes acknowledged.
///
/// `Programmed` says whether the Gateway is being served. A new Gateway becomes True with the
/// first acknowledgement; a rejection makes it False at once. A Gateway that is True stays
/// True while a newer version rolls out (`Waiting`), and, for the start-up grace
/// (`in_grace`), while its dataplanes have not reconnected yet: otherwise every change
/// and every controller restart would flap the condition. A ListenerSet follows its Gateway.
fn apply_delivery(
    report: &mut portico_compile::StatusReport,
    hub: &channel::Hub,
    in_grace: bool,
    index: &Index,
) {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as K8sCondition;
    use kube::runtime::reflector::ObjectRef as StoreRef;
    use portico_compile::status::{Condition, ListenerStatus, reasons, types};

    /// Fills in compile's pending `Programmed` conditions.
    fn set(conditions: &mut [Condition], status: &str, reason: &str, message: &str) {
        for c in conditions
            .iter_mut()
            .filter(|c| c.type_ == types::PROGRAMMED && c.reason == reasons::PENDING)
        {
            c.status = status.to_string();
            c.reason = reason.to_string();
            c.message = message.to_string();
        }
    }
    fn programmed_true(conditions: &[K8sCondition]) -> Option<&K8sCondition> {
        conditions
            .iter()
            .find(|c| c.type_ == types::PROGRAMMED)
            .filter(|c| c.status == "True")
    }
    /// An object's conditions and its listeners' (by name), as the cluster has them.
    type Current<'a> = (&'a [K8sCondition], Vec<(&'a str, &'a [K8sCondition])>);
    /// Fills one object's pending conditions: kept from `current` where it is Programmed
    /// and `hold` says to keep it, else from the delivery.
    fn fill(
        conditions: &mut [Condition],
        listeners: &mut [ListenerStatus],
        delivery: &channel::Delivery,
        current: Option<Current<'_>>,
    ) {
        if let Some((own, theirs)) = current
            && let Some(cur) = programmed_true(own)
        {
            set(conditions, &cur.status, &cur.reason, &cur.message);
            for l in listeners {
                let from = theirs
                    .iter()
                    .find(|(name, _)| *name == l.name)
                    .and_then(|(_, c)| programmed_true(c));
                if let Some(from) = from {
                    set(&mut l.conditions, &from.status, &from.reason, &from.message);
                }
            }
            return;
        }
        let (status_value, reason, message) = match delivery {
            channel::Delivery::Acked => (
                "True",
                reasons::PROGRAMMED,
                "the dataplanes serve the current configuration".to_string(),
            ),
            channel::Delivery::Waiting => (
                "False",
                reasons::PENDING,
                "waiting for the dataplanes to apply the configuration".to_string(),
            ),
            channel::Delivery::NoDataplane => (
                "False",
                reasons::PENDING,
                "no dataplane is connected".to_string(),
            ),
            channel::Delivery::Rejected(e) => (
                "False",
                reasons::INVALID,
                format!("a dataplane rejected the configuration: {e}"),
            ),
        };
        set(conditions, status_value, reason, &message);
        for l in listeners {
            set(&mut l.conditions, status_value, reason, &message);
        }
    }

    let hold = |delivery: &channel::Delivery| {
        *delivery == channel::Delivery::Waiting
            || (*delivery == channel::Delivery::NoDataplane && in_grace)
    };
    for (gw, status) in report.gateways.iter_mut() {
        let delivery = hub.delivery(gw);
        let cluster = hold(&delivery)
            .then(|| {
                index
                    .gateways
                    .get(&StoreRef::new(&gw.name).within(&gw.namespace))
            })
            .flatten();
        let current = cluster.as_ref().and_then(|g| g.status.as_ref()).map(|s| {
            let listeners = s.listeners.iter().flatten();
            (
                s.conditions.as_deref().unwrap_or_default(),
                listeners
                    .map(|l| (l.name.as_str(), l.conditions.as_slice()))
                    .collect(),
            )
        });
        fill(
            &mut status.conditions,
            &mut status.listeners,
            &delivery,
            current,
        );
    }
    for (id, status) in report.listener_sets.iter_mut() {
        let delivery = hub.delivery(&status.gateway);
        let cluster = hold(&delivery)
            .then(|| {
                index
                    .listener_sets
                    .get(&StoreRef::new(&id.name).within(&id.namespace))
            })
            .flatten();
        let current = cluster.as_ref().and_then(|l| l.status.as_ref()).map(|s| {
            let listeners = s.listeners.iter().flatten();
            (
                s.conditions.as_deref().unwrap_or_default(),
                listeners
                    .map(|l| (l.name.as_str(), l.conditions.as_slice()))
                    .collect(),
            )
        });
        fill(
            &mut status.conditions,
            &mut status.listeners,
            &delivery,
            current,
        );
    }
}

/// Runs the controller until `stop` resolves, serving snapshots on `channel` when given.
pub async fn run(
    client: Client,
    settings: Settings,
    channel: Option<(tokio::net::TcpListener, tokio_rustls::TlsAcceptor)>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let started = tokio::time::Instant::now();
    let changed = Arc::new(Notify::new());
    let sessions = settings
        .session_secret
        .clone()
        .unwrap_or_else(channel::SessionSecret::random);
    let hub = Arc::new(channel::Hub::new(changed.clone(), sessions));
    let index = Index::start(&client, &changed, &settings.secret_hint);
    let (elector, leading) = LeaderElector::new(client.clone(), settings.lease.clone());
    let health = Arc::new(admin::Health::new(leading.clone()));
    health.set_hub(hub.clone());
    health.set_unreadable(index.unreadable.clone());
    // The ports each Gateway serves for its ListenerSets, as compiled: its provisioned
    // Service exposes them. `None` until the first compile.
    let (set_ports, set_ports_rx) = tokio::sync::watch::channel(None);
    if let Some(p) = settings.provision.clone() {
        tokio::spawn(provision::run(
            client.clone(),
            p,
            leading.clone(),
            health.counters.clone(),
            set_ports_rx,
        ));
    }
    if let Some(addr) = settings.admin_address {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(address = %addr, "admin server listening");
                tokio::spawn(admin::serve(l, health.clone()));
            }
            Err(e) => tracing::error!(address = %addr, error = %e, "cannot serve the admin port"),
        }
    }
    if let Some((listener, tls)) = channel {
        let auth = Arc::new(channel::Authenticator::new(
            client.clone(),
            settings.placement.clone(),
        ));
        health.set_tokens(auth.clone());
        tokio::spawn(channel::serve(
            listener,
            tls,
            hub.clone(),
            auth,
            leading.clone(),
        ));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let elector = tokio::spawn(elector.run({
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }));
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let mut stop_rx = stop_rx;

    index.wait_ready(Duration::from_secs(10)).await;
    tracing::info!("caches synced");
    let (reports, pending_report) = tokio::sync::watch::channel(None);
    tokio::spawn(StatusWriter::new(client, &settings.controller_name).run(
        index.clone(),
        pending_report,
        leading.clone(),
        health.counters.clone(),
    ));
    let mut compiler = IncrementalCompile::new(&settings.controller_name);
    let mut last_compile = tokio::time::Instant::now();
    let mut first = true;
    loop {
        let mut changes = index.changes.take();
        if std::mem::take(&mut first) {
            changes = Changes::All;
        }
        // Woken by a dataplane's answer or a status write alone: nothing to compile, only
        // status to refresh.
        if changes != Changes::Keys(Default::default()) {
            last_compile = tokio::time::Instant::now();
            let mut inputs = index.inputs();
            inputs.redis_url = settings.redis_url.clone();
            let secrets = portico_compile::referenced_secrets(&inputs, &settings.controller_name);
            index.secrets.sync(&secrets);
            // A newly referenced Secret is read before it is compiled, so a listener never
            // reports it missing just because its watch had not answered yet.
            index
                .secrets
                .wait_synced(&secrets, Duration::from_secs(5))
                .await;
            inputs.secrets = index.secrets.objects();
            inputs.unreadable_secrets = index.secrets.unreadable();
            // Likewise the ConfigMaps of BackendTLSPolicies' CA certificates.
            let config_maps =
                portico_compile::referenced_config_maps(&inputs, &settings.controller_name);
            index.config_maps.sync(&config_maps);
            index
                .config_maps
                .wait_synced(&config_maps, Duration::from_secs(5))
                .await;
            inputs.config_maps = index.config_maps.objects();
            inputs.placement = settings.placement.clone();
            // The dataplane pods' admin port: no listener may take it.
            inputs.reserved_ports = [provision::objects::ADMIN_PORT].into();
            // Provisioned Gateways ask their Service for their addresses; dataplanes run by
            // hand (`portico connect`, no provisioning) bind them, as in standalone mode.
            inputs.addresses = if settings.provision.is_some() {
                portico_compile::Addresses::Service
            } else {
                portico_compile::Addresses::Bind
            };
            let read = last_compile.elapsed();
            let touched = compiler.update(&inputs, &changes);
            let compiled = last_compile.elapsed();
            hub.publish(
                &touched,
                |gw| compiler.snapshot(gw),
                |gw| compiler.is_ours(gw),
            );
            let ports: provision::ListenerSetPorts = compiler
                .snapshots()
                .map(|(gw, s)| (gw.clone(), portico_compile::listener_set_ports(s)))
                .filter(|(_, p)| !p.is_empty())
                .collect();
            set_ports.send_if_modified(|current| {
                let changed = current.as_deref() != Some(&ports);
                if changed {
                    *current = Some(Arc::new(ports));
                }
                changed
            });
            health
                .compiles
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            health.compile_us.fetch_add(
                u64::try_from((compiled - read).as_micros()).unwrap_or(u64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
            health.gateways.store(
                compiler.gateways() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            health
                .ready
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(
                compiled = touched.len(),
                gateways = compiler.gateways(),
                read_us = read.as_micros(),
                compile_us = (compiled - read).as_micros(),
                publish_us = (last_compile.elapsed() - compiled).as_micros(),
                "compiled"
            );
        }
        let mut status = compiler.status();
        health.problems.store(
            status.problems().len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let in_grace = started.elapsed() < RECONNECT_GRACE;
        apply_delivery(&mut status, &hub, in_grace, &index);
        apply_purges(&mut status, &hub, &index);
        // The writer (leader only) takes it from here, without holding up the next compile.
        // Sent on every wake, changed or not: the writer compares it with the cluster, which
        // is how someone else's overwrite of our status gets corrected.
        reports.send_replace(Some(status));
        let grace_end = started + RECONNECT_GRACE;
        tokio::select! {
            _ = changed.notified() => {}
            // When the grace ends, Gateways still without dataplanes must say so.
            _ = tokio::time::sleep_until(grace_end), if in_grace => {}
            _ = stop_rx.wait_for(|s| *s) => break,
        }
        // At most one compile per `debounce`: an isolated change compiles at once, a burst
        // is coalesced into the next compile. Wakes with nothing to compile do not wait.
        let since = last_compile.elapsed();
        if index.changes.pending() && since < settings.debounce {
            tokio::time::sleep(settings.debounce - since).await;
        }
    }
    let _ = elector.await;
}
