//! `portico`: the dataplane binary. `portico standalone` serves a directory of manifests;
//! `portico check` validates one and prints the status each object would get.

/// The proxy allocates and frees on every request (read buffers, bodies, header maps), in
/// sizes glibc's allocator serves from shared bins; mimalloc's thread-local free lists make
/// that cheaper (measured in `make bench`, see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use portico_dataplane::body::{BodyLimits, MinRate};
use portico_dataplane::channel::ChannelSettings;
use portico_dataplane::conn::ConnectionLimits;
use portico_dataplane::listen::ServerSettings;
use portico_dataplane::listen::tcp::StreamSettings;
use portico_dataplane::proxy::ProxySettings;
use portico_dataplane::sanitize::EdgeSettings;
use portico_dataplane::{Dataplane, DataplaneSettings, admin, standalone};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "portico", version, about = "Portico API gateway dataplane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Gateway API manifests in a directory, reloading when they change.
    Standalone(StandaloneArgs),
    /// Serve the snapshots the controller pushes for one Gateway (the in-cluster mode).
    Connect(ConnectArgs),
    /// Load a directory (or file) of manifests and print its problems and a summary. Exit
    /// status: 0 clean, 1 problems (or manifests that do not load), 2 wrong usage.
    Check {
        /// Directory (or one file) of YAML manifests.
        dir: PathBuf,
        #[arg(long, default_value = portico_compile::CONTROLLER_NAME)]
        controller_name: String,
        /// The Redis of global rate limits whose policy names none.
        #[arg(long, env = "PORTICO_REDIS_URL")]
        redis_url: Option<String>,
        /// A field the schema does not know: an error (the default), or a warning (in an
        /// AuthPolicy's spec, a warning and a policy that refuses its targets' requests).
        #[arg(long, value_enum, default_value_t = UnknownFieldsArg::Error)]
        unknown_fields: UnknownFieldsArg,
        /// Also print the status every object would get (YAML).
        #[arg(long)]
        status: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum UnknownFieldsArg {
    Error,
    Warn,
}

impl From<UnknownFieldsArg> for portico_compile::manifests::UnknownFields {
    fn from(a: UnknownFieldsArg) -> Self {
        match a {
            UnknownFieldsArg::Error => Self::Error,
            UnknownFieldsArg::Warn => Self::Warn,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct StandaloneArgs {
    /// Directory (or one file) of YAML manifests (GatewayClass, Gateway, HTTPRoute,
    /// GRPCRoute, ReferenceGrant, Service, EndpointSlice, Secret, Namespace, AuthPolicy,
    /// RateLimitPolicy, GatewayConfig).
    #[arg(
        long,
        env = "PORTICO_CONFIG",
        required_unless_present = "dir",
        conflicts_with = "dir"
    )]
    config: Option<PathBuf>,
    /// The same, given without `--config`.
    #[arg(value_name = "DIR")]
    dir: Option<PathBuf>,
    /// A field the schema does not know: an error that keeps the configuration from loading
    /// (the default), or a warning (in an AuthPolicy's spec, a warning and a policy that
    /// refuses its targets' requests, since ignoring the field could weaken it).
    #[arg(long, value_enum, default_value_t = UnknownFieldsArg::Error)]
    unknown_fields: UnknownFieldsArg,
    #[arg(long, default_value = portico_compile::CONTROLLER_NAME)]
    controller_name: String,
    /// The Redis (`redis://host:port[/db]`) of global rate limits whose RateLimitPolicy
    /// names none.
    #[arg(long, env = "PORTICO_REDIS_URL")]
    redis_url: Option<String>,
    /// How often to look for changed files, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    watch_interval_ms: u64,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args)]
struct ConnectArgs {
    /// `host:port` of the controller's snapshot channel.
    #[arg(long, env = "PORTICO_CONTROLLER")]
    controller: String,
    /// Name to check the controller's certificate against.
    #[arg(long, default_value = "portico-controller")]
    server_name: String,
    /// The Gateway this dataplane serves, as namespace/name.
    #[arg(long, env = "PORTICO_GATEWAY")]
    gateway: String,
    /// Projected ServiceAccount token (audience portico.dev/snapshots).
    #[arg(long, default_value = "/var/run/secrets/portico/token")]
    token_file: PathBuf,
    /// PEM certificate(s) to trust for the controller.
    #[arg(long, default_value = "/etc/portico/controller-ca.crt")]
    ca_file: PathBuf,
    /// Where the last good snapshot is kept across restarts.
    #[arg(long, default_value = "/var/lib/portico")]
    state_dir: PathBuf,
    /// This replica's name.
    #[arg(long, env = "POD_NAME")]
    replica: Option<String>,
    #[command(flatten)]
    serve: ServeArgs,
}

/// Settings of the proxy itself, shared by both modes.
#[derive(clap::Args)]
struct ServeArgs {
    /// Address for listeners of Gateways without `spec.addresses`.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Address of the admin server (/healthz, /readyz, /metrics, /cache/purge).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin_address: SocketAddr,
    /// A file holding the bearer token `POST /cache/purge` requires. Without one, purges
    /// are served only on a loopback admin address.
    #[arg(long)]
    admin_token_file: Option<std::path::PathBuf>,
    /// How long in-flight requests may take to finish on SIGTERM, in seconds.
    #[arg(long, default_value_t = 30)]
    drain_timeout_s: u64,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// `error`, `warn`, `info` or `debug`, or any `RUST_LOG` filter (`info,access=off`).
    /// Default: `RUST_LOG`, else `info`.
    #[arg(long)]
    log_level: Option<String>,
    /// Log one line per request (target `access`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    access_log: bool,
    /// Largest request head a client may send; larger gets 431.
    #[arg(long, default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// Time a client may take to send a request head (also an idle HTTP/1.1 keep-alive
    /// wait) and to finish a TLS handshake, in seconds.
    #[arg(long, default_value_t = 30)]
    header_read_timeout_s: u64,
    /// Downstream connections open at once, over every listener (0: no cap). Beyond it, new
    /// connections are closed at once.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Downstream connections open at once from one source address (an IPv6 /64 counts as
    /// one; 0: no cap). Behind a load balancer that does not keep client addresses, raise it.
    #[arg(long, default_value_t = 1_000)]
    max_connections_per_source: usize,
    /// Downstream connections open at once on one listening socket (a listener, or the
    /// listeners sharing its address and port; 0: no cap), so one busy listener cannot take
    /// every connection the dataplane allows. Beyond it, new ones are closed at once.
    #[arg(long, default_value_t = 0)]
    max_connections_per_listener: usize,
    /// A connection must send its first bytes (after a TLS handshake) within this, in seconds.
    #[arg(long, default_value_t = 10)]
    first_bytes_timeout_s: u64,
    /// Longest wait for the next byte of a request or response body, for a backend's answer
    /// once the request is sent (on routes without timeouts of their own), and the time an
    /// HTTP/2 connection may stay open with nothing in flight, in seconds.
    #[arg(long, default_value_t = 60)]
    idle_timeout_s: u64,
    /// An upgraded connection (WebSocket) with no byte either way for this long is closed, in
    /// seconds.
    #[arg(long, default_value_t = 3600)]
    websocket_idle_timeout_s: u64,
    /// A connection of a TCP listener with no byte either way for this long is closed, in
    /// seconds. One whose TCPRoute goes away is closed `--drain-timeout-s` later.
    #[arg(long, default_value_t = 3600)]
    tcp_idle_timeout_s: u64,
    /// A flow of a UDP listener (the datagrams of one client address) with no datagram either
    /// way for this long ends, in seconds; the client's next datagram starts a new one.
    #[arg(long, default_value_t = 60)]
    udp_idle_timeout_s: u64,
    /// Flows one UDP listener socket keeps at most; datagrams that would start more are
    /// dropped.
    #[arg(long, default_value_t = 10_000)]
    udp_max_flows: usize,
    /// A write to a client that reads nothing for this long ends its connection, in seconds;
    /// so does a write to a WebSocket's backend.
    #[arg(long, default_value_t = 60)]
    write_timeout_s: u64,
    /// Slowest average rate a request body may arrive at, in bytes per second, once its
    /// grace period is over (0: no minimum). gRPC streams are exempt.
    #[arg(long, default_value_t = 500)]
    body_min_rate: u32,
    /// Seconds a request body may take before `--body-min-rate` applies.
    #[arg(long, default_value_t = 20)]
    body_min_rate_grace_s: u64,
    /// Request headers whose names contain `_`: reject (400), drop, or allow.
    #[arg(long, value_enum, default_value = "reject")]
    headers_with_underscores: portico_dataplane::sanitize::UnderscoreHeaders,
    /// Proxies in front of this gateway that append to X-Forwarded-For (0: this gateway is
    /// the edge and the peer address is the client). RateLimitPolicies without
    /// `clientIP.trustedHops` use it too.
    #[arg(long, default_value_t = 0)]
    trusted_hops: usize,
    /// Worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Keys each local rate limit holds at most (per limit, per replica); beyond it, idle
    /// keys and then the oldest-looking ones are dropped. About 100 bytes per key.
    #[arg(long, default_value_t = portico_dataplane::ratelimit::DEFAULT_MAX_KEYS)]
    rate_limit_max_keys: usize,

    /// The memory cache's budget per replica, in bytes (bodies, headers and keys of the
    /// responses CachePolicies store); beyond it, the least recently used go.
    #[arg(long, default_value_t = 128 << 20, env = "PORTICO_CACHE_MEMORY_BYTES")]
    cache_memory_bytes: usize,
}

fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let channel = match &cli.command {
        Command::Connect(a) => channel_settings(a),
        _ => Err(anyhow::anyhow!("not connecting")),
    };
    let (serve, mode) = match cli.command {
        Command::Check {
            dir,
            controller_name,
            redis_url,
            unknown_fields,
            status,
        } => {
            let settings = standalone::CompileSettings {
                controller_name,
                redis_url,
                unknown_fields: unknown_fields.into(),
            };
            return check(&dir, &settings, status);
        }
        Command::Standalone(args) => {
            let StandaloneArgs {
                config,
                dir,
                unknown_fields,
                controller_name,
                redis_url,
                watch_interval_ms,
                serve,
            } = args;
            let Some(config) = config.or(dir) else {
                eprintln!(
                    "portico: give the manifests' directory (or file): portico standalone DIR"
                );
                return ExitCode::from(2);
            };
            (
                serve,
                Mode::Standalone {
                    config,
                    compile: standalone::CompileSettings {
                        controller_name,
                        redis_url,
                        unknown_fields: unknown_fields.into(),
                    },
                    watch_interval_ms,
                },
            )
        }
        Command::Connect(args) => {
            let ConnectArgs { serve, .. } = args;
            match channel {
                Ok(c) => (serve, Mode::Connect(Box::new(c))),
                Err(e) => {
                    eprintln!("portico: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let log_format = serve.log_format;
    init_logging(serve.log_format, serve.log_level.as_deref());
    // The multi-thread scheduler even for one worker: this thread (`run`, below) then does
    // the configuration work (compiling standalone manifests, applying snapshots: 0.3 s at
    // 10,000 routes) while the worker thread goes on serving. The current-thread scheduler
    // saved 2.5 % of a request's instructions, but stalled every request for that long on
    // each configuration change.
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = serve.workers {
        rt.worker_threads(n.max(1));
    }
    let result = rt
        .enable_all()
        .build()
        .context("cannot start the runtime")
        .and_then(|rt| rt.block_on(run(serve, mode)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once: as a log line where logs are JSON (collected), plainly otherwise.
            match log_format {
                LogFormat::Json => tracing::error!("{e:#}"),
                LogFormat::Text => eprintln!("portico: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

enum Mode {
    Standalone {
        config: PathBuf,
        compile: standalone::CompileSettings,
        watch_interval_ms: u64,
    },
    Connect(Box<ChannelSettings>),
}

fn channel_settings(a: &ConnectArgs) -> anyhow::Result<ChannelSettings> {
    let (ns, name) = a
        .gateway
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--gateway must be namespace/name, not {:?}", a.gateway))?;
    Ok(ChannelSettings {
        controller: a.controller.clone(),
        server_name: a.server_name.clone(),
        gateway: portico_model::ObjectRef::new(ns, name),
        token_file: a.token_file.clone(),
        ca_file: a.ca_file.clone(),
        state_dir: a.state_dir.clone(),
        replica: a
            .replica
            .clone()
            .unwrap_or_else(|| format!("portico-{}", std::process::id())),
    })
}

/// `portico check`: problems first, one line each with the file they come from, then a
/// summary line; the full status only with `--status`.
fn check(dir: &std::path::Path, settings: &standalone::CompileSettings, status: bool) -> ExitCode {
    let loaded = match standalone::load(dir, settings) {
        Err(errors) => {
            for e in &errors {
                println!("error: {e}");
            }
            println!(
                "{} error{}: the configuration does not load (a running gateway would keep its last good one)",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            return ExitCode::FAILURE;
        }
        Ok(l) => l,
    };
    for w in &loaded.warnings {
        println!("warning: {w}");
    }
    let problems = loaded.problems();
    for p in &problems {
        let file = loaded.origins.file_of_problem(&p.object).unwrap_or("-");
        println!(
            "problem: {file}: {}: {}={} ({}): {}",
            p.object,
            p.condition.type_,
            p.condition.status,
            p.condition.reason,
            p.condition.message
        );
    }
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let (gateways, routes, policies) = loaded.counts;
    println!(
        "{}, {}, {}, {}",
        plural(gateways, "Gateway", "Gateways"),
        plural(routes, "route", "routes"),
        plural(policies, "policy", "policies"),
        plural(problems.len(), "problem", "problems")
    );
    if status {
        match serde_yaml::to_string(&loaded.output.status) {
            Ok(y) => print!("{y}"),
            Err(e) => eprintln!("cannot print the status: {e}"),
        }
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(args: ServeArgs, mode: Mode) -> anyhow::Result<()> {
    let secs = Duration::from_secs;
    let settings = DataplaneSettings {
        default_bind: args.bind_address,
        proxy: ProxySettings {
            access_log: args.access_log,
            edge: EdgeSettings {
                underscore_headers: args.headers_with_underscores,
                trusted_hops: args.trusted_hops,
            },
            body: BodyLimits {
                idle_timeout: secs(args.idle_timeout_s.max(1)),
                min_rate: (args.body_min_rate > 0).then(|| MinRate {
                    bytes_per_second: args.body_min_rate,
                    grace: secs(args.body_min_rate_grace_s),
                }),
            },
            tunnel_idle_timeout: secs(args.websocket_idle_timeout_s.max(1)),
            tunnel_write_timeout: secs(args.write_timeout_s.max(1)),
            ..ProxySettings::default()
        },
        server: ServerSettings {
            max_header_bytes: args.max_header_bytes,
            header_read_timeout: secs(args.header_read_timeout_s.max(1)),
            connections: ConnectionLimits {
                max_connections: args.max_connections,
                max_connections_per_source: args.max_connections_per_source,
                max_connections_per_listener: args.max_connections_per_listener,
                first_bytes_timeout: secs(args.first_bytes_timeout_s.max(1)),
                write_timeout: secs(args.write_timeout_s.max(1)),
                idle_timeout: secs(args.idle_timeout_s.max(1)),
                ..ConnectionLimits::default()
            },
            streams: StreamSettings {
                idle_timeout: secs(args.tcp_idle_timeout_s.max(1)),
                write_timeout: secs(args.write_timeout_s.max(1)),
                drain: secs(args.drain_timeout_s),
                hello_timeout: secs(args.first_bytes_timeout_s.max(1)),
                datagram_idle_timeout: secs(args.udp_idle_timeout_s.max(1)),
                max_flows: args.udp_max_flows.max(1),
                ..StreamSettings::default()
            },
            ..ServerSettings::default()
        },
        rate_limit_max_keys: args.rate_limit_max_keys,
        cache_memory_bytes: args.cache_memory_bytes,
    };
    let dp = Arc::new(Dataplane::new(&settings));
    // Standalone mode refuses to start on a directory that does not load.
    let initial = match &mode {
        Mode::Standalone {
            config, compile, ..
        } => Some(standalone::load(config, compile).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!(
                "the configuration in {} is invalid:\n  {}",
                config.display(),
                lines.join("\n  ")
            )
        })?),
        Mode::Connect(_) => None,
    };
    let admin = tokio::net::TcpListener::bind(args.admin_address)
        .await
        .with_context(|| format!("cannot listen on the admin address {}", args.admin_address))?;
    if args.admin_address.ip().is_unspecified() {
        // In a pod this is what probes and Prometheus need; say so, since it is reachable
        // from the whole pod network unless a NetworkPolicy says otherwise.
        tracing::info!(
            address = %args.admin_address,
            "admin server listening on every interface: /healthz, /readyz and /metrics \
             (no configuration, no secrets) are reachable by anyone who can reach this \
             address; restrict it with a NetworkPolicy or --admin-address"
        );
    } else {
        tracing::info!(address = %args.admin_address, "admin server listening");
    }
    let token = match &args.admin_token_file {
        None => None,
        Some(path) => {
            let token = std::fs::read(path)
                .with_context(|| format!("cannot read the admin token {}", path.display()))?
                .trim_ascii()
                .to_vec();
            anyhow::ensure!(
                !token.is_empty(),
                "the admin token file {} is empty",
                path.display()
            );
            Some(token)
        }
    };
    let access = admin::PurgeAccess::new(token, args.admin_address);
    tokio::spawn(admin::serve(admin, dp.clone(), access));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    };
    match mode {
        Mode::Standalone {
            config,
            compile,
            watch_interval_ms,
        } => {
            if let Some(loaded) = initial {
                if !standalone::apply(&dp, &loaded, 1) {
                    anyhow::bail!(
                        "cannot serve the configuration in {}: a socket it needs cannot be bound (logged above)",
                        config.display()
                    );
                }
                // The objects and statuses are not needed once served; only the tables are.
                drop(loaded);
            }
            standalone::watch(
                &dp,
                &config,
                &compile,
                Duration::from_millis(watch_interval_ms.max(50)),
                1,
                stop,
            )
            .await;
        }
        Mode::Connect(channel) => {
            // Endpoints come from the cluster's EndpointSlices (in-cluster credentials or
            // KUBECONFIG), not from the snapshot.
            let client = kube::Client::try_default()
                .await
                .context("cannot reach the Kubernetes API for EndpointSlices")?;
            let _slices = portico_dataplane::endpoints::start(client, &dp);
            portico_dataplane::channel::run(&dp, &channel, stop).await
        }
    }

    tracing::info!(deadline_s = args.drain_timeout_s, "draining connections");
    if dp.shutdown(Duration::from_secs(args.drain_timeout_s)).await {
        tracing::info!("all connections closed; exiting");
    } else {
        tracing::warn!("drain deadline reached with connections still open; exiting");
    }
    Ok(())
}
