//! Leader election with a `coordination.k8s.io/v1` Lease.
//!
//! Every replica watches and compiles; only the leader writes status. A replica takes the
//! lease when it has not seen the holder renew it for a whole lease duration, measured on its
//! own clock (as client-go does), so clock skew between nodes does not matter. Updates carry
//! the lease's `resourceVersion`, so two replicas cannot both win. On shutdown the leader
//! releases the lease, so a rolling update hands over at once.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name in a cluster).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
    /// The lease as last seen, and when we saw it change.
    observed: Option<(String, Instant)>,
    /// When we last renewed successfully.
    renewed_at: Option<Instant>,
}

impl LeaderElector {
    pub fn new(client: Client, settings: LeaseSettings) -> (Self, watch::Receiver<bool>) {
        let (leading, rx) = watch::channel(false);
        let api = Api::namespaced(client, &settings.namespace);
        (
            Self {
                api,
                settings,
                leading,
                observed: None,
                renewed_at: None,
            },
            rx,
        )
    }

    /// Runs until `stop` resolves, then releases the lease if held.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let leading = match self.try_acquire_or_renew().await {
                Ok(l) => {
                    if l {
                        self.renewed_at = Some(Instant::now());
                    }
                    l
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.settings.name, "lease update failed");
                    // Keep leading only while our last renewal is still within the lease.
                    *self.leading.borrow()
                        && self
                            .renewed_at
                            .is_some_and(|t| t.elapsed() < self.settings.lease_duration)
                }
            };
            if self
                .leading
                .send_if_modified(|l| std::mem::replace(l, leading) != leading)
            {
                if leading {
                    tracing::info!(identity = %self.settings.identity, "became the leader");
                } else {
                    tracing::warn!(identity = %self.settings.identity, "lost the leadership");
                }
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(self.settings.renew_every) => {}
            }
        }
        if *self.leading.borrow() {
            self.release().await;
        }
    }

    fn fresh_spec(&self, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.settings.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    async fn try_acquire_or_renew(&mut self) -> kube::Result<bool> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.fresh_spec(0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        // Expiry by our own clock: how long since the lease last changed under our eyes.
        let changed_at = match &self.observed {
            Some((v, at)) if *v == version => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((version, at));
                at
            }
        };
        let mine = spec.holder_identity.as_deref() == Some(self.settings.identity.as_str());
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.settings.lease_duration, Duration::from_secs);
        if !(mine || free || changed_at.elapsed() >= duration) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if mine {
            LeaseSpec {
                renew_time: Some(MicroTime(Timestamp::now())),
                ..spec
            }
        } else {
            self.fresh_spec(transitions.saturating_add(1))
        });
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("released the lease"),
            Err(e) => tracing::warn!(error = %e, "could not release the lease"),
        }
    }
}
