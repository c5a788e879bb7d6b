//! The Portico controller: index, compile, status, leadership.
//!
//! Watches feed synchronous stores ([`index`]); a change wakes the compile loop, which waits
//! for the burst to settle, compiles every Gateway with the same pure function standalone mode
//! uses, and — on the leader only — writes the status that changed ([`status`], [`leader`]).
//! Snapshots are compiled on every replica so a new leader starts warm; serving them to
//! dataplanes is the snapshot channel's job (not built yet).

pub mod index;
pub mod leader;
pub mod status;

use index::Index;
use kube::Client;
use leader::{LeaderElector, LeaseSettings};
use status::StatusWriter;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Clone, Debug)]
pub struct Settings {
    pub controller_name: String,
    pub lease: LeaseSettings,
    /// How long a burst of changes may keep arriving before compile runs anyway.
    pub debounce: Duration,
}

/// Runs the controller until `stop` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let changed = Arc::new(Notify::new());
    let index = Index::start(&client, &changed);
    let (elector, mut leading) = LeaderElector::new(client.clone(), settings.lease.clone());
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
    let writer = StatusWriter::new(client, &settings.controller_name);
    let mut version: u64 = 0;
    loop {
        let output = portico_compile::compile(&index.inputs(), &settings.controller_name);
        version += 1;
        tracing::debug!(version, gateways = output.snapshots.len(), "compiled");
        if *leading.borrow() {
            match writer.write(&output.status, &index).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(objects = n, "status written"),
                Err(e) => {
                    tracing::warn!(error = %e, "status write failed; retrying");
                    changed.notify_one();
                }
            }
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = leading.changed() => {}
            _ = stop_rx.wait_for(|s| *s) => break,
        }
        // Let a burst of events settle into one compile.
        tokio::time::sleep(settings.debounce).await;
    }
    let _ = elector.await;
}
