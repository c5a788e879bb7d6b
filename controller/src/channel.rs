//! The snapshot channel, server side: the newest snapshot of each Gateway, pushed to the
//! dataplanes that connect for it, and what they acknowledged (see
//! `portico_model::channel` for the wire format).
//!
//! Who may read: a dataplane presents a ServiceAccount token issued for
//! [`TOKEN_AUDIENCE`]; the controller checks it with a TokenReview and serves Gateway `ns/gw`
//! only to the ServiceAccount its dataplane runs as (its own in the dataplane namespace, or
//! the installer's in a namespace whose dataplanes run beside their Gateways: see
//! [`portico_compile::Placement`]). Snapshots carry TLS keys, so nothing is sent before that
//! check, and only over TLS.

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use portico_model::channel::{Ack, REPLICA_HEADER, encode_frame};
use portico_model::{ObjectRef, Snapshot};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;

mod tokens;
pub use tokens::{Authenticator, TokenCounters, Verdict};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What the connected dataplanes of one Gateway say about its current version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// No dataplane is connected.
    NoDataplane,
    /// Connected dataplanes have not all acknowledged the current version yet.
    Waiting,
    /// Every connected dataplane serves the current version.
    Acked,
    /// A dataplane rejected the current version.
    Rejected(String),
}

#[derive(Debug, Default)]
struct Replica {
    /// Open streams from this replica (a reconnect may overlap the old stream briefly).
    streams: usize,
    acked: Option<u64>,
    error: Option<(u64, String)>,
}

struct GatewayChannel {
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    version: u64,
    replicas: HashMap<String, Replica>,
}

impl Default for GatewayChannel {
    fn default() -> Self {
        Self {
            tx: watch::channel(None).0,
            version: 0,
            replicas: HashMap::new(),
        }
    }
}

/// The secret session-persistence keys are derived from: every controller replica must
/// hold the same one, so that every dataplane replica of a Gateway seals and opens the same
/// tokens whichever controller it reached. `main` uses the snapshot channel's private key,
/// which the replicas already share (through `--tls-secret` or the same files), under a
/// label of its own (HKDF), so neither use weakens the other.
#[derive(Clone)]
pub struct SessionSecret(Vec<u8>);

impl SessionSecret {
    pub fn new(secret: &[u8]) -> Self {
        Self(secret.to_vec())
    }

    /// A random secret: sessions then hold only while this controller runs.
    pub fn random() -> Self {
        let mut b = vec![0u8; 32];
        // The system generator does not fail on Linux; an all-zero secret would only make
        // sessions predictable, so fail loudly rather than go on.
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .expect("the system random generator failed");
        Self(b)
    }

    /// Gateway `gw`'s key (base64, 32 bytes): one Gateway's tokens open nowhere else.
    pub fn for_gateway(&self, gw: &ObjectRef) -> portico_model::auth::Sensitive {
        use base64::Engine as _;
        use ring::hkdf;
        struct Len;
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                32
            }
        }
        let prk =
            hkdf::Salt::new(hkdf::HKDF_SHA256, b"portico session persistence v1").extract(&self.0);
        let info = gw.to_string();
        let mut key = [0u8; 32];
        let info = [info.as_bytes()];
        // Only fails when asked for more than 255 blocks; 32 bytes is one.
        if let Ok(okm) = prk.expand(&info, Len) {
            let _ = okm.fill(&mut key);
        }
        portico_model::auth::Sensitive(base64::engine::general_purpose::STANDARD.encode(key))
    }
}

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The newest snapshot per Gateway, and the dataplanes' answers.
pub struct Hub {
    gateways: Mutex<BTreeMap<ObjectRef, GatewayChannel>>,
    /// Woken when an answer or a connection changes what status should say.
    changed: Arc<Notify>,
    next_version: AtomicU64,
    sessions: SessionSecret,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("gateways", &self.gateways.lock().len())
            .finish()
    }
}

impl Hub {
    pub fn new(changed: Arc<Notify>, sessions: SessionSecret) -> Self {
        // Versions start from the clock so a restarted controller never reuses a number a
        // dataplane already holds.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() * 1000)
            .unwrap_or(1);
        Self {
            gateways: Mutex::new(BTreeMap::new()),
            changed,
            next_version: AtomicU64::new(start),
            sessions,
        }
    }

    /// Publishes the snapshots of the Gateways just compiled (`snapshot` gives each one's, or
    /// `None` if it is not served). A Gateway whose content did not change keeps its version
    /// and nothing is sent. A Gateway of ours that is not served (not accepted: `ours` says
    /// it is still ours) gets an empty snapshot, also for dataplanes that connect later: they
    /// serve nothing and say they are ready, rather than wait for a configuration that will
    /// not come. A Gateway that is gone gets an empty snapshot while dataplanes are connected
    /// to it, and its channel is dropped once none is.
    pub fn publish<'a>(
        &self,
        compiled: &BTreeSet<ObjectRef>,
        snapshot: impl Fn(&ObjectRef) -> Option<&'a Snapshot>,
        ours: impl Fn(&ObjectRef) -> bool,
    ) {
        let mut gateways = self.gateways.lock();
        for gw in compiled {
            match snapshot(gw) {
                Some(snap) => self.send(&mut gateways, gw, snap.clone()),
                None => {
                    let connected = gateways
                        .get(gw)
                        .is_some_and(|ch| ch.replicas.values().any(|r| r.streams > 0));
                    if connected || ours(gw) {
                        let empty = Snapshot {
                            gateway: gw.clone(),
                            ..Snapshot::default()
                        };
                        self.send(&mut gateways, gw, empty);
                    } else {
                        gateways.remove(gw);
                    }
                }
            }
        }
    }

    fn send(
        &self,
        gateways: &mut BTreeMap<ObjectRef, GatewayChannel>,
        gw: &ObjectRef,
        mut snap: Snapshot,
    ) {
        let ch = gateways.entry(gw.clone()).or_default();
        snap.session_key = Some(self.sessions.for_gateway(gw));
        let same = ch.tx.borrow().as_ref().is_some_and(|cur| {
            snap.version = cur.version;
            **cur == snap
        });
        if same {
            return;
        }
        ch.version = self.next_version.fetch_add(1, Ordering::Relaxed);
        snap.version = ch.version;
        ch.tx.send_replace(Some(Arc::new(snap)));
    }

    /// Per Gateway: dataplanes connected now, and how many of them acknowledged the current
    /// version (for the admin port).
    pub fn dataplanes(&self) -> Vec<(ObjectRef, usize, usize)> {
        self.gateways
            .lock()
            .iter()
            .map(|(gw, ch)| {
                let connected: Vec<&Replica> =
                    ch.replicas.values().filter(|r| r.streams > 0).collect();
                let current = connected
                    .iter()
                    .filter(|r| r.acked == Some(ch.version))
                    .count();
                (gw.clone(), connected.len(), current)
            })
            .collect()
    }

    /// The replicas of `gw` connected now that serve its current version, by name.
    pub fn current_replicas(&self, gw: &ObjectRef) -> Vec<String> {
        let gateways = self.gateways.lock();
        let Some(ch) = gateways.get(gw) else {
            return Vec::new();
        };
        let mut names: Vec<String> = ch
            .replicas
            .iter()
            .filter(|(_, r)| r.streams > 0 && r.acked == Some(ch.version))
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    pub fn delivery(&self, gw: &ObjectRef) -> Delivery {
        let gateways = self.gateways.lock();
        let Some(ch) = gateways.get(gw) else {
            return Delivery::NoDataplane;
        };
        let connected: Vec<&Replica> = ch.replicas.values().filter(|r| r.streams > 0).collect();
        if connected.is_empty() {
            return Delivery::NoDataplane;
        }
        if let Some((_, reason)) = connected
            .iter()
            .filter_map(|r| r.error.as_ref())
            .find(|(v, _)| *v == ch.version)
        {
            return Delivery::Rejected(reason.clone());
        }
        if connected.iter().all(|r| r.acked == Some(ch.version)) {
            Delivery::Acked
        } else {
            Delivery::Waiting
        }
    }

    fn subscribe(&self, gw: &ObjectRef, replica: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
        let mut gateways = self.gateways.lock();
        let ch = gateways.entry(gw.clone()).or_default();
        ch.replicas.entry(replica.to_string()).or_default().streams += 1;
        let mut rx = ch.tx.subscribe();
        rx.mark_changed();
        drop(gateways);
        self.changed.notify_one();
        rx
    }

    fn disconnected(&self, gw: &ObjectRef, replica: &str) {
        let mut gateways = self.gateways.lock();
        if let Some(ch) = gateways.get_mut(gw)
            && let Some(r) = ch.replicas.get_mut(replica)
        {
            r.streams = r.streams.saturating_sub(1);
            if r.streams == 0 {
                ch.replicas.remove(replica);
            }
            // A channel opened for a name no compile published (a Gateway not made yet, or
            // one the client made up: a namespace's shared dataplane account may ask for
            // any name there) goes with its last client, so clients cannot grow the map.
            if ch.replicas.is_empty() && ch.tx.borrow().is_none() {
                gateways.remove(gw);
            }
        }
        drop(gateways);
        self.changed.notify_one();
    }

    fn answer(&self, gw: &ObjectRef, replica: &str, ack: Ack) {
        if let Some(ch) = self.gateways.lock().get_mut(gw) {
            let r = ch.replicas.entry(replica.to_string()).or_default();
            match ack.error {
                None => {
                    r.acked = Some(ack.version);
                    r.error = None;
                }
                Some(reason) => r.error = Some((ack.version, reason)),
            }
        }
        self.changed.notify_one();
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync());
    *r.status_mut() = status;
    r
}

/// The bearer token of a request, if it has one.
fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let v = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let t = v.strip_prefix("Bearer ")?.trim();
    (!t.is_empty()).then_some(t)
}

async fn handle(
    req: Request<Incoming>,
    peer: std::net::IpAddr,
    hub: Arc<Hub>,
    auth: Arc<Authenticator>,
    leading: watch::Receiver<bool>,
) -> Response<Body> {
    // Only the leader writes status, so only the leader may collect the ACKs it reports on;
    // a dataplane that reached another replica retries and lands on the leader.
    if !*leading.borrow() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "not the leader; retry\n");
    }
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').split('/');
    let (Some("v1"), Some(kind), Some(ns), Some(name), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let gw = ObjectRef::new(ns, name);
    let verdict = match bearer(&req) {
        Some(token) => auth.verdict(token, peer).await,
        None => Verdict::Refused,
    };
    let (sa_ns, sa_name) = match verdict {
        Verdict::Account(ns, name) => (ns, name),
        Verdict::Refused => {
            return plain(
                StatusCode::UNAUTHORIZED,
                "a valid ServiceAccount token is required\n",
            );
        }
        Verdict::Throttled => {
            return plain(
                StatusCode::TOO_MANY_REQUESTS,
                "too many refused tokens from this address; retry later\n",
            );
        }
        Verdict::Unavailable => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot check the token with the API server now; retry\n",
            );
        }
    };
    if !auth.admits(&sa_ns, &sa_name, &gw) {
        tracing::warn!(gateway = %gw, account = %format!("{sa_ns}/{sa_name}"), "refused a snapshot client");
        return plain(
            StatusCode::FORBIDDEN,
            "this ServiceAccount may not read this Gateway\n",
        );
    }
    let replica = req
        .headers()
        .get(REPLICA_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(&sa_name)
        .to_string();
    match (req.method(), kind) {
        (&Method::GET, "snapshots") => stream(hub, gw, replica, leading),
        (&Method::POST, "acks") => {
            let Ok(body) = http_body_util::Limited::new(req.into_body(), 64 * 1024)
                .collect()
                .await
            else {
                return plain(StatusCode::BAD_REQUEST, "unreadable body\n");
            };
            let Ok(ack) = serde_json::from_slice::<Ack>(&body.to_bytes()) else {
                return plain(StatusCode::BAD_REQUEST, "body is not an Ack\n");
            };
            match &ack.error {
                None => tracing::debug!(gateway = %gw, replica, version = ack.version, "ACK"),
                Some(e) => {
                    tracing::warn!(gateway = %gw, replica, version = ack.version, error = %e, "NACK")
                }
            }
            hub.answer(&gw, &replica, ack);
            plain(StatusCode::NO_CONTENT, "")
        }
        _ => plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

/// Streams the newest snapshot whenever it changes, until the client goes away or this
/// replica stops leading: the stream ends then, so that the dataplane reconnects to the new
/// leader, whose hub must see it (a dataplane kept streaming from a former leader would be
/// reported as not connected, and its ACKs refused, for as long as it stayed).
fn stream(
    hub: Arc<Hub>,
    gw: ObjectRef,
    replica: String,
    leading: watch::Receiver<bool>,
) -> Response<Body> {
    struct Guard {
        hub: Arc<Hub>,
        gw: ObjectRef,
        replica: String,
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            self.hub.disconnected(&self.gw, &self.replica);
        }
    }
    let rx = hub.subscribe(&gw, &replica);
    tracing::info!(gateway = %gw, replica, "dataplane connected");
    let guard = Guard { hub, gw, replica };
    let state = (rx, guard, leading);
    let frames = futures::stream::unfold(state, |(mut rx, guard, mut leading)| async move {
        loop {
            tokio::select! {
                r = rx.changed() => r.ok()?,
                _ = leading.wait_for(|l| !*l) => {
                    tracing::info!(gateway = %guard.gw, replica = %guard.replica, "no longer leading: ending the dataplane's stream");
                    return None;
                }
            }
            let snap = rx.borrow_and_update().clone();
            let Some(snap) = snap else { continue };
            match encode_frame(&snap) {
                Ok(bytes) => {
                    return Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(bytes))),
                        (rx, guard, leading),
                    ));
                }
                Err(e) => tracing::error!(error = %e, "cannot encode a snapshot"),
            }
        }
    });
    Response::new(BodyExt::boxed_unsync(StreamBody::new(frames.boxed())))
}

/// Serves the channel over TLS (HTTP/2 only) until the process ends, answering only while
/// `leading`.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    hub: Arc<Hub>,
    auth: Arc<Authenticator>,
    leading: watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Frames are small writes; Nagle's algorithm would hold them for the peer's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let (tls, hub, auth, builder, leading) = (
            tls.clone(),
            hub.clone(),
            auth.clone(),
            builder.clone(),
            leading.clone(),
        );
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = service_fn(move |req| {
                let (hub, auth, leading) = (hub.clone(), auth.clone(), leading.clone());
                async move { Ok::<_, Infallible>(handle(req, peer.ip(), hub, auth, leading).await) }
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%peer, error = %e, "snapshot connection ended");
            }
        });
    }
}

/// A self-signed serving certificate for the given names, as (cert PEM, key PEM), used when
/// no certificate is configured. Dataplanes must trust the certificate itself.
pub fn self_signed(names: &[String]) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portico-controller");
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A TLS acceptor for HTTP/2 from PEM text.
pub fn acceptor(cert_pem: &str, key_pem: &str) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_of_ours_not_served_gives_late_dataplanes_an_empty_snapshot() {
        let hub = Hub::new(Arc::new(Notify::new()), SessionSecret::new(b"s"));
        let refused = ObjectRef::new("default", "refused");
        let gone = ObjectRef::new("default", "gone");
        let compiled = BTreeSet::from([refused.clone(), gone.clone()]);
        hub.publish(&compiled, |_| None, |gw| *gw == refused);
        // A dataplane of the refused Gateway connecting after the compile gets an empty
        // snapshot at once; nobody is kept waiting for the Gateway that is gone.
        let rx = hub.subscribe(&refused, "pod-a");
        let snap = rx.borrow().clone().expect("an empty snapshot");
        assert_eq!(snap.gateway, refused);
        assert!(snap.listeners.is_empty());
        assert!(!hub.gateways.lock().contains_key(&gone));
        // A name nothing was published for is forgotten with its last client.
        let made_up = ObjectRef::new("default", "made-up");
        let rx = hub.subscribe(&made_up, "pod-b");
        assert!(rx.borrow().is_none());
        hub.disconnected(&made_up, "pod-b");
        assert!(!hub.gateways.lock().contains_key(&made_up));
        hub.disconnected(&refused, "pod-a");
        assert!(
            hub.gateways.lock().contains_key(&refused),
            "a published channel stays"
        );
    }

    #[test]
    fn session_keys_are_the_same_on_every_replica_and_differ_per_gateway() {
        let gw = |n: &str| ObjectRef::new("default", n);
        let (a, b) = (SessionSecret::new(b"shared"), SessionSecret::new(b"shared"));
        assert_eq!(a.for_gateway(&gw("web")), b.for_gateway(&gw("web")));
        assert_ne!(a.for_gateway(&gw("web")), a.for_gateway(&gw("api")));
        assert_ne!(
            a.for_gateway(&gw("web")),
            SessionSecret::new(b"other").for_gateway(&gw("web"))
        );
        assert_ne!(
            SessionSecret::random().for_gateway(&gw("web")),
            SessionSecret::random().for_gateway(&gw("web"))
        );
        use base64::Engine as _;
        let key = a.for_gateway(&gw("web"));
        let raw = base64::engine::general_purpose::STANDARD.decode(&key.0);
        assert_eq!(raw.map(|k| k.len()).ok(), Some(32));
        assert_eq!(format!("{a:?} {key:?}"), "<redacted> <redacted>");
    }
}
