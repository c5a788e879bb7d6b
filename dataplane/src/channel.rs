//! The snapshot channel, dataplane side: connect to the controller, serve every snapshot it
//! pushes, answer ACK or NACK, and keep the last good snapshot on disk so a restart serves it
//! even while the controller is unreachable.

use crate::dataplane::Dataplane;
use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portico_model::channel::{Ack, FrameDecoder, REPLICA_HEADER};
use portico_model::{ObjectRef, Snapshot};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;

#[derive(Clone, Debug)]
pub struct ChannelSettings {
    /// `host:port` of the controller's snapshot channel.
    pub controller: String,
    /// The name the controller's certificate is checked against.
    pub server_name: String,
    pub gateway: ObjectRef,
    /// A projected ServiceAccount token for `portico.dev/snapshots`, re-read on every connect
    /// (the kubelet rotates it).
    pub token_file: PathBuf,
    /// PEM certificates to trust for the controller.
    pub ca_file: PathBuf,
    /// Where the last good snapshot is kept.
    pub state_dir: PathBuf,
    /// This replica's name (the pod name).
    pub replica: String,
}

impl ChannelSettings {
    fn state_file(&self) -> PathBuf {
        self.state_dir.join(format!(
            "snapshot-{}-{}.json",
            self.gateway.namespace, self.gateway.name
        ))
    }
}

/// The last good snapshot from disk, if there is one for this Gateway.
pub fn load_persisted(s: &ChannelSettings) -> Option<Snapshot> {
    let text = std::fs::read(s.state_file()).ok()?;
    match serde_json::from_slice::<Snapshot>(&text) {
        Ok(snap) if snap.gateway == s.gateway => Some(snap),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable persisted snapshot");
            None
        }
    }
}

fn persist(s: &ChannelSettings, snap: &Snapshot) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(&s.state_dir)?;
    let tmp = s.state_dir.join(".snapshot.tmp");
    // Snapshots will hold private keys: readable by this user only.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec(snap).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, s.state_file())
}

/// How long a snapshot waits for the EndpointSlices of a namespace it newly sends traffic to.
const ENDPOINTS_WAIT: Duration = Duration::from_secs(5);

/// Applies one snapshot. A snapshot the dataplane cannot serve (a socket that cannot be bound)
/// is refused whole: the last good one keeps serving, untouched.
fn apply(dp: &Dataplane, snap: &Snapshot, last_good: &mut Option<Snapshot>) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    let report = dp.apply(std::slice::from_ref(snap), snap.version);
    let apply_us = started.elapsed().as_micros();
    for w in &report.warnings {
        tracing::warn!(version = snap.version, "{w}");
    }
    if report.bind_failures.is_empty() {
        *last_good = Some(snap.clone());
        tracing::info!(version = snap.version, routes = report.routes, sockets = ?report.sockets, apply_us, "snapshot applied");
        return Ok(());
    }
    let reason = report
        .bind_failures
        .iter()
        .map(|(addr, e)| format!("cannot listen on {addr}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    Err(reason)
}

fn connector(ca_file: &std::path::Path) -> anyhow::Result<TlsConnector> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file)
        .with_context(|| format!("read {}", ca_file.display()))?
    {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One connection: stream snapshots until the controller or the network goes away.
async fn session(
    dp: &Dataplane,
    s: &ChannelSettings,
    last_good: &mut Option<Snapshot>,
) -> anyhow::Result<()> {
    let tls = connector(&s.ca_file)?;
    let token = std::fs::read_to_string(&s.token_file)
        .with_context(|| format!("read the token {}", s.token_file.display()))?;
    let token = token.trim();
    let tcp = tokio::net::TcpStream::connect(&s.controller).await?;
    // ACKs are small writes; Nagle's algorithm would hold them for a delayed ACK.
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(s.server_name.clone())?;
    let stream = tls.connect(name, tcp).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "snapshot connection closed");
        }
    });
    let request = |method: http::Method, kind: &str, body: Bytes| {
        Request::builder()
            .method(method)
            .uri(format!(
                "https://{}/v1/{kind}/{}/{}",
                s.server_name, s.gateway.namespace, s.gateway.name
            ))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(REPLICA_HEADER, &s.replica)
            .body(Full::new(body))
    };
    let mut snapshots = sender.clone();
    let resp = snapshots
        .send_request(request(http::Method::GET, "snapshots", Bytes::new())?)
        .await?;
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let text = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!(
            "the controller answered {status}: {}",
            String::from_utf8_lossy(&text).trim()
        );
    }
    tracing::info!(controller = %s.controller, gateway = %s.gateway, "connected to the controller");
    let mut body = resp.into_body();
    let mut decoder = FrameDecoder::default();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        decoder.push(&data);
        while let Some(snap) = decoder.next_snapshot()? {
            if last_good
                .as_ref()
                .is_some_and(|g| g.version == snap.version)
            {
                // Already serving it (a reconnect resends the current version).
                answer(
                    &sender,
                    &request,
                    Ack {
                        version: snap.version,
                        error: None,
                    },
                )
                .await?;
                continue;
            }
            dp.prepare(std::slice::from_ref(&snap), ENDPOINTS_WAIT)
                .await;
            let ack = match apply(dp, &snap, last_good) {
                Ok(()) => {
                    if let Err(e) = persist(s, &snap) {
                        tracing::warn!(error = %e, "cannot persist the snapshot");
                    }
                    Ack {
                        version: snap.version,
                        error: None,
                    }
                }
                Err(reason) => {
                    tracing::error!(version = snap.version, %reason, "snapshot rejected; still serving the last good one");
                    Ack {
                        version: snap.version,
                        error: Some(reason),
                    }
                }
            };
            answer(&sender, &request, ack).await?;
        }
    }
    bail!("the controller closed the stream")
}

async fn answer<F>(
    sender: &http2::SendRequest<Full<Bytes>>,
    request: &F,
    ack: Ack,
) -> anyhow::Result<()>
where
    F: Fn(http::Method, &str, Bytes) -> http::Result<Request<Full<Bytes>>>,
{
    let body = Bytes::from(serde_json::to_vec(&ack)?);
    let resp = sender
        .clone()
        .send_request(request(http::Method::POST, "acks", body)?)
        .await?;
    if !resp.status().is_success() {
        bail!("the controller refused the answer: {}", resp.status());
    }
    Ok(())
}

/// Serves the persisted snapshot if any, then follows the controller until `stop`.
pub async fn run(dp: &Dataplane, s: &ChannelSettings, stop: impl std::future::Future<Output = ()>) {
    let mut last_good = None;
    if let Some(snap) = load_persisted(s) {
        tracing::info!(
            version = snap.version,
            "serving the persisted snapshot until the controller answers"
        );
        dp.prepare(std::slice::from_ref(&snap), ENDPOINTS_WAIT)
            .await;
        if apply(dp, &snap, &mut last_good).is_err() {
            tracing::warn!("the persisted snapshot cannot be served");
        }
    }
    tokio::pin!(stop);
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = tokio::time::Instant::now();
        tokio::select! {
            _ = &mut stop => return,
            result = session(dp, s, &mut last_good) => {
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(200);
                }
                if let Err(e) = result {
                    tracing::warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "snapshot channel down; serving the last good snapshot");
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
