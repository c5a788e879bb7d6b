//! Log setup shared by the test backends (`portico-echo`, `portico-authd`).

/// Logs to stderr at `level` (`--log-level`), else `RUST_LOG`, else `warn`.
pub(crate) fn init(level: Option<&str>) {
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
