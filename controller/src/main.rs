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
    /// The shortest time between two compiles. Changes arriving meanwhile are compiled
    /// together; a compile only recomputes the Gateways they touch, so this can stay short.
    #[arg(long, default_value_t = 10)]
    debounce_ms: u64,
    /// The Redis (`redis://host:port[/db]`) of `Global` rate limits whose RateLimitPolicy
    /// names none. Dataplanes connect to it themselves.
    #[arg(long, env = "PORTICO_REDIS_URL")]
    redis_url: Option<String>,
    /// Where dataplanes connect for snapshots (HTTP/2 over TLS). Empty to serve none.
    #[arg(long, default_value = "0.0.0.0:9443")]
    snapshot_address: String,
    /// Serving certificate and key (PEM) of the snapshot channel. Without them a self-signed
    /// certificate for --tls-server-name is generated at start-up.
    #[arg(long, requires = "tls_key_file")]
    tls_cert_file: Option<std::path::PathBuf>,
    #[arg(long, requires = "tls_cert_file")]
    tls_key_file: Option<std::path::PathBuf>,
    /// Names (DNS or IP) of the self-signed certificate.
    #[arg(long, default_values_t = vec!["portico-controller".to_string(), "localhost".to_string()])]
    tls_server_name: Vec<String>,
    /// Write the self-signed certificate here, for dataplanes to trust.
    #[arg(long)]
    write_ca_file: Option<std::path::PathBuf>,
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
        redis_url: args.redis_url.clone(),
    };
    let channel = if args.snapshot_address.is_empty() {
        None
    } else {
        let (cert, key) = match (&args.tls_cert_file, &args.tls_key_file) {
            (Some(c), Some(k)) => (std::fs::read_to_string(c)?, std::fs::read_to_string(k)?),
            _ => {
                let (cert, key) = portico_controller::channel::self_signed(&args.tls_server_name)?;
                if let Some(path) = &args.write_ca_file {
                    std::fs::write(path, &cert)?;
                }
                (cert, key)
            }
        };
        let tls = portico_controller::channel::acceptor(&cert, &key)?;
        let listener = tokio::net::TcpListener::bind(&args.snapshot_address).await?;
        tracing::info!(address = %listener.local_addr()?, "serving snapshots");
        Some((listener, tls))
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
    };
    run(client, settings, channel, stop).await;
    Ok(())
}
