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
    /// Serve /healthz, /readyz and /metrics here (`0.0.0.0:9902` in the chart). Empty: none.
    #[arg(long, default_value = "")]
    admin_address: String,
    /// Keep the serving certificate in this Secret (in --lease-namespace), created
    /// self-signed by the first replica: every replica then serves the same certificate.
    #[arg(long, conflicts_with = "tls_cert_file")]
    tls_secret: Option<String>,
    /// Write the self-signed certificate here, for dataplanes to trust.
    #[arg(long)]
    write_ca_file: Option<std::path::PathBuf>,
    /// Provision each Gateway's dataplane (Deployment, Service, HPA, PDB) with this image,
    /// unless its GatewayConfig names another. Without it nothing is provisioned.
    #[arg(long, env = "PORTICO_DATAPLANE_IMAGE")]
    dataplane_image: Option<String>,
    /// `host:port` where dataplane pods reach the snapshot channel (the controller's
    /// Service).
    #[arg(long, default_value = "portico-controller.portico-system.svc:9443")]
    controller_address: String,
    /// The CA (PEM) dataplanes trust for the controller; default: --tls-cert-file, or the
    /// self-signed certificate.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// The namespace Gateways' dataplanes are provisioned in (default: the controller's own,
    /// --lease-namespace), but for those of --gateway-namespaces. Only a dataplane's own
    /// ServiceAccount there may read its Gateway's snapshots.
    #[arg(long, env = "PORTICO_DATAPLANE_NAMESPACE")]
    dataplane_namespace: Option<String>,
    /// Namespaces whose Gateways get their dataplane in their own namespace instead
    /// (comma-separated). Each needs the installer's Role for the controller there and the
    /// ServiceAccount --gateway-namespace-account, bound to read EndpointSlices.
    #[arg(
        long,
        env = "PORTICO_GATEWAY_NAMESPACES",
        value_delimiter = ',',
        num_args = 0..
    )]
    gateway_namespaces: Vec<String>,
    /// The ServiceAccount dataplanes run as in the --gateway-namespaces (made there by the
    /// installer, not by the controller).
    #[arg(long, default_value = "portico-dataplane")]
    gateway_namespace_account: String,
    /// The ClusterRole that, bound in a namespace, lets the controller read Secrets there
    /// (named in the status of a listener or policy whose Secret it may not read).
    #[arg(long, default_value = "portico-secret-reader")]
    secret_reader_role: String,
    /// The controller's own ServiceAccount (in --lease-namespace), for the same message.
    #[arg(
        long,
        env = "POD_SERVICE_ACCOUNT",
        default_value = "portico-controller"
    )]
    service_account: String,
    /// `text` or `json` (one object per line, for log collectors).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// `error`, `warn`, `info` or `debug`, or any `RUST_LOG` filter. Default: `RUST_LOG`,
    /// else `info`.
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = match &args.log_level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.with_ansi(false).init(),
    }
    let identity = args
        .identity
        .unwrap_or_else(|| format!("portico-controller-{}", std::process::id()));
    let dataplane_namespace = args
        .dataplane_namespace
        .clone()
        .unwrap_or_else(|| args.lease_namespace.clone());
    // Dataplanes beside their Gateways run as a shared account: never where the per-Gateway
    // accounts are, nor next to the controller's own Secrets.
    if let Some(ns) = args
        .gateway_namespaces
        .iter()
        .map(|n| n.trim())
        .find(|n| *n == dataplane_namespace || *n == args.lease_namespace)
    {
        anyhow::bail!(
            "--gateway-namespaces may not name {ns}: it is the dataplane or the controller's namespace"
        );
    }
    let client = kube::Client::try_default().await?;
    let mut settings = Settings {
        controller_name: args.controller_name.clone(),
        lease: LeaseSettings {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity,
            lease_duration: Duration::from_secs(args.lease_duration_s.max(1)),
            renew_every: Duration::from_secs(args.renew_every_s.max(1)),
        },
        debounce: Duration::from_millis(args.debounce_ms),
        redis_url: args.redis_url.clone(),
        placement: portico_compile::Placement {
            namespace: dataplane_namespace,
            beside: args
                .gateway_namespaces
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            beside_account: args.gateway_namespace_account.clone(),
        },
        secret_hint: format!(
            "the controller has no RBAC grant to read Secrets in namespace {{namespace}}; give it one with `kubectl create rolebinding portico-secrets --namespace {{namespace}} --clusterrole {} --serviceaccount {}:{}` (with helm: add the namespace to rbac.secretNamespaces)",
            args.secret_reader_role, args.lease_namespace, args.service_account
        ),
        provision: None,
        admin_address: if args.admin_address.is_empty() {
            None
        } else {
            Some(args.admin_address.parse()?)
        },
        session_secret: None,
    };
    let mut served_cert = None;
    let channel = if args.snapshot_address.is_empty() {
        None
    } else {
        let (cert, key) = match (&args.tls_cert_file, &args.tls_key_file, &args.tls_secret) {
            (Some(c), Some(k), _) => (std::fs::read_to_string(c)?, std::fs::read_to_string(k)?),
            (_, _, Some(secret)) => {
                portico_controller::certs::load_or_create(
                    &client,
                    &settings.lease.namespace,
                    secret,
                    &args.tls_server_name,
                )
                .await?
            }
            _ => {
                let (cert, key) = portico_controller::channel::self_signed(&args.tls_server_name)?;
                if let Some(path) = &args.write_ca_file {
                    std::fs::write(path, &cert)?;
                }
                (cert, key)
            }
        };
        let tls = portico_controller::channel::acceptor(&cert, &key)?;
        settings.session_secret = Some(portico_controller::channel::SessionSecret::new(
            key.as_bytes(),
        ));
        served_cert = Some(cert);
        let listener = tokio::net::TcpListener::bind(&args.snapshot_address).await?;
        tracing::info!(address = %listener.local_addr()?, "serving snapshots");
        Some((listener, tls))
    };
    if let Some(image) = args.dataplane_image.clone() {
        let ca_pem = match (&args.ca_file, served_cert) {
            (Some(path), _) => std::fs::read_to_string(path)?,
            (None, Some(cert)) => cert,
            (None, None) => anyhow::bail!(
                "provisioning dataplanes needs the CA they trust for the controller: --ca-file"
            ),
        };
        settings.provision = Some(portico_controller::provision::ProvisionSettings {
            controller_name: settings.controller_name.clone(),
            image,
            controller_address: args.controller_address.clone(),
            server_name: args
                .tls_server_name
                .first()
                .cloned()
                .unwrap_or_else(|| "portico-controller".into()),
            ca_pem,
            placement: settings.placement.clone(),
            identity: settings.lease.identity.clone(),
        });
    }
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
