//! Standalone mode: the same manifests a user would `kubectl apply`, read from a directory,
//! compiled with the controller's compile function and served directly.
//!
//! The directory is polled (not watched with inotify) because polling sees every way a
//! file can change: editors that write a new file and rename it over the old one, and the
//! symlink swap by which Kubernetes updates a mounted ConfigMap. A poll only stats files; they
//! are read and compiled only when the fingerprint changes.
//!
//! A directory that does not parse (malformed YAML, an unknown kind, an object that does not
//! fit its schema, a duplicate) is rejected as a whole and the last good configuration keeps
//! serving. Objects that parse but are invalid by the Gateway API's rules get the status
//! they would get in a cluster (logged with their file), and everything else is served.

use crate::dataplane::Dataplane;
use portico_compile::manifests::{ManifestError, ManifestSet, Origins, UnknownFields};
use portico_compile::status::Problem;
use portico_compile::{Output, compile};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The files of a configuration directory, in a stable order (or the one file `dir` names).
fn config_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    if std::fs::metadata(dir)?.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let name = entry.file_name();
            // Hidden entries: editor swap files and ConfigMap `..data` internals.
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Names, sizes and modification times: changes when any file changes.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    config_files(dir)?
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p)?;
            Ok((p, m.len(), m.modified().ok()))
        })
        .collect()
}

/// A configuration that parsed, compiled.
#[derive(Debug)]
pub struct Loaded {
    pub output: Output,
    pub origins: Origins,
    /// Unknown fields ignored under `--unknown-fields warn`.
    pub warnings: Vec<ManifestError>,
    /// What nothing serves, and why ([`portico_compile::unserved`]).
    pub unserved: Vec<Problem>,
    /// How many Gateways, routes (of every kind) and policies were read.
    pub counts: (usize, usize, usize),
}

impl Loaded {
    /// Every problem: what compile reports in status, then what nothing serves.
    pub fn problems(&self) -> Vec<Problem> {
        let mut all = self.output.status.problems();
        all.extend(self.unserved.iter().cloned());
        all
    }
}

/// What compile needs besides the manifests.
#[derive(Clone, Debug)]
pub struct CompileSettings {
    /// Serve the GatewayClasses with this `controllerName`.
    pub controller_name: String,
    /// The Redis of `Global` rate limits whose policy names none.
    pub redis_url: Option<String>,
    /// Whether a field the schema does not know fails the load (the default) or warns.
    pub unknown_fields: UnknownFields,
}

/// Reads and compiles a directory. Errors name the file and the object.
pub fn load(dir: &Path, settings: &CompileSettings) -> Result<Loaded, Vec<ManifestError>> {
    let io_error = |file: &Path, e: std::io::Error| ManifestError {
        file: file.display().to_string(),
        object: String::new(),
        message: e.to_string(),
    };
    let files = config_files(dir).map_err(|e| vec![io_error(dir, e)])?;
    let mut set = ManifestSet {
        unknown_fields: settings.unknown_fields,
        ..ManifestSet::default()
    };
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| vec![io_error(f, e)])?;
        let shown = match f.strip_prefix(dir) {
            Ok(p) if !p.as_os_str().is_empty() => p.display().to_string(),
            _ => f.display().to_string(),
        };
        set.add_file(&shown, &text);
    }
    if !set.errors.is_empty() {
        return Err(set.errors);
    }
    set.inputs.redis_url = settings.redis_url.clone();
    let i = &set.inputs;
    let counts = (
        i.gateways.len(),
        i.http_routes.len() + i.grpc_routes.len() + i.tcp_routes.len() + i.tls_routes.len(),
        i.auth_policies.len()
            + i.unreadable_auth_policies.len()
            + i.rate_limit_policies.len()
            + i.cache_policies.len()
            + i.backend_policies.len(),
    );
    Ok(Loaded {
        output: compile(&set.inputs, &settings.controller_name),
        unserved: portico_compile::unserved::unserved(&set.inputs, &settings.controller_name),
        origins: set.origins,
        warnings: set.warnings,
        counts,
    })
}

/// Logs every condition that says something is wrong, with the file the object came from.
pub fn log_problems(loaded: &Loaded) {
    for w in &loaded.warnings {
        tracing::warn!(file = %w.file, object = %w.object, "{}", w.message);
    }
    for p in loaded.problems() {
        tracing::warn!(
            file = loaded.origins.file_of_problem(&p.object).unwrap_or("-"),
            object = %p.object,
            condition = %p.condition.type_,
            status = %p.condition.status,
            reason = %p.condition.reason,
            "{}",
            p.condition.message
        );
    }
}

/// Applies a loaded configuration; returns whether it was (every socket it needs could be
/// bound; otherwise it was refused and the running one kept).
pub fn apply(dp: &Dataplane, loaded: &Loaded, version: u64) -> bool {
    let mut snapshots: Vec<_> = loaded.output.snapshots.values().cloned().collect();
    for s in &mut snapshots {
        s.version = version;
    }
    let started = tokio::time::Instant::now();
    let report = dp.apply(&snapshots, version);
    let apply_ms = started.elapsed().as_secs_f64() * 1e3;
    log_problems(loaded);
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    for (addr, e) in &report.bind_failures {
        tracing::error!(%addr, error = %e, "cannot listen");
    }
    if !report.bind_failures.is_empty() {
        dp.metrics.config_errors.inc();
        if report.sockets.is_empty() {
            tracing::error!(
                version,
                "configuration refused: a socket it needs cannot be bound"
            );
        } else {
            tracing::error!(
                version,
                sockets = ?report.sockets,
                "configuration refused: a socket it needs cannot be bound; the running configuration keeps serving"
            );
        }
        return false;
    }
    tracing::info!(
        version,
        gateways = snapshots.len(),
        routes = report.routes,
        sockets = ?report.sockets,
        apply_ms = format!("{apply_ms:.1}"),
        "configuration applied"
    );
    report.bind_failures.is_empty()
}

/// Polls `dir` every `interval` and applies each change that loads; a change that does not
/// load is logged and the running configuration kept. Returns when `stop` resolves.
pub async fn watch(
    dp: &Dataplane,
    dir: &Path,
    settings: &CompileSettings,
    interval: Duration,
    mut version: u64,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut last = fingerprint(dir).ok();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = match fingerprint(dir) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the configuration directory");
                continue;
            }
        };
        if now == last {
            continue;
        }
        last = now;
        match load(dir, settings) {
            Ok(loaded) => {
                if apply(dp, &loaded, version + 1) {
                    version += 1;
                }
            }
            Err(errors) => {
                dp.metrics.config_errors.inc();
                for e in &errors {
                    tracing::error!(file = %e.file, object = %e.object, "{}", e.message);
                }
                tracing::error!(
                    errors = errors.len(),
                    "configuration rejected; still serving version {version}"
                );
            }
        }
    }
}
