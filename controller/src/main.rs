//! `portico-controller`: watches the cluster's Gateway API resources and writes their status.
//! Connects with the in-cluster ServiceAccount or `KUBECONFIG`.

use clap::Parser;
use portico_controller::leader::LeaseSettings;
use portico_controller::{Settings, run};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "portico-controller",
    version,
    about = "Portico Gateway API controller"
)]
struct Args {
    #[arg(long, default_value = portico_compile::CONTROLLER_NAME)]
    controller_name: String,
    /// Namespace of the leader-election Lease (the controller's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "portico-system")]
    lease_namespace: String,
    #[arg(long, default_value = "portico-controller")]
    lease_name: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, default_value_t = 15)]
    lease_duration_s: u64,
    #[arg(long, default_value_t = 5)]
    renew_every_s: u64,
    #[arg(long, default_value_t = 50)]
    debounce_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let identity = args
        .identity
        .unwrap_or_else(|| format!("portico-controller-{}", std::process::id()));
    let client = kube::Client::try_default().await?;
    let settings = Settings {
        controller_name: args.controller_name,
        lease: LeaseSettings {
            namespace: args.lease_namespace,
            name: args.lease_name,
            identity,
            lease_duration: Duration::from_secs(args.lease_duration_s.max(1)),
            renew_every: Duration::from_secs(args.renew_every_s.max(1)),
        },
        debounce: Duration::from_millis(args.debounce_ms),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
    };
    run(client, settings, stop).await;
    Ok(())
}
