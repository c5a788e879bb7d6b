//! The gateway's own HTTP client, for the calls its policies make (JWKS documents, external
//! authorization, token introspection): HTTP/1.1 over TCP or TLS on hyper's `client::conn`,
//! with idle connections kept per origin. Not the proxy's path ([`super::attempt`]): these
//! are a handful of services named by URL, resolved by DNS, usually over TLS.
//!
//! TLS trusts the system's roots, offers only `http/1.1` by ALPN and checks the server's name.
//! A connection goes back to its origin's idle ones only once its response body was read
//! whole; idle ones older than the idle timeout are not reused.

use super::tls::UpstreamIo;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// How a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("invalid URL: {0}")]
    Url(&'static str),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("cannot connect to {host}: {source}")]
    Connect { host: String, source: io::Error },
    #[error("TLS with {host} failed: {source}")]
    Tls { host: String, source: io::Error },
    #[error("https is unavailable: {0}")]
    NoTls(String),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Where a connection leads: scheme, host and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Origin {
    https: bool,
    host: String,
    port: u16,
}

type Sender = http1::SendRequest<Full<Bytes>>;

struct Idle {
    sender: Sender,
    since: Instant,
}

struct Inner {
    /// `Err`: why https cannot be offered (no usable TLS configuration).
    tls: Result<TlsConnector, String>,
    idle: Mutex<HashMap<Origin, Vec<Idle>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_origin: usize,
}

/// A client for the gateway's own calls; clones share their connections.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("origins", &self.inner.idle.lock().len())
            .finish()
    }
}

impl HttpClient {
    /// A client trusting the system's CA certificates.
    pub fn new() -> Self {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!(error = %e, "loading system CA certificates");
        }
        let (added, _) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, "system CA certificates for the gateway's own calls");
        Self::with_roots(roots)
    }

    /// A client trusting `roots`.
    pub fn with_roots(roots: rustls::RootCertStore) -> Self {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| {
            let mut config = b.with_root_certificates(roots).with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            TlsConnector::from(Arc::new(config))
        })
        .map_err(|e| {
            tracing::error!(error = %e, "TLS for the gateway's own calls unavailable; https URLs will fail");
            e.to_string()
        });
        Self {
            inner: Arc::new(Inner {
                tls,
                idle: Mutex::new(HashMap::new()),
                connect_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(60),
                max_idle_per_origin: 32,
            }),
        }
    }

    /// Sends `req`, whose URI is absolute (`http` or `https`). The answer's body must be read
    /// to its end for the connection to be reused.
    pub async fn request(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<CallBody>, CallError> {
        let origin = origin(req.uri())?;
        let authority = req
            .uri()
            .authority()
            .cloned()
            .ok_or(CallError::Url("no host"))?;
        let target = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(target);
        if !req.headers().contains_key(header::HOST) {
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|_| CallError::Url("invalid host"))?;
            req.headers_mut().insert(header::HOST, host);
        }
        loop {
            let (mut sender, reused) = match self.checkout(&origin) {
                Some(s) => (s, true),
                None => (self.connect(&origin).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let home = Some((sender, self.inner.clone(), origin));
                    return Ok(resp.map(|body| CallBody {
                        body,
                        ended: false,
                        home,
                    }));
                }
                // An idle connection the server had closed: the request never left.
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    fn checkout(&self, origin: &Origin) -> Option<Sender> {
        let mut idle = self.inner.idle.lock();
        let list = idle.get_mut(origin)?;
        while let Some(c) = list.pop() {
            if c.sender.is_ready() && c.since.elapsed() < self.inner.idle_timeout {
                return Some(c.sender);
            }
        }
        None
    }

    async fn connect(&self, origin: &Origin) -> Result<Sender, CallError> {
        let tcp = tokio::time::timeout(self.inner.connect_timeout, connect_tcp(origin))
            .await
            .map_err(|_| CallError::Connect {
                host: origin.host.clone(),
                source: io::ErrorKind::TimedOut.into(),
            })??;
        let io = if origin.https {
            let tls = self
                .inner
                .tls
                .as_ref()
                .map_err(|e| CallError::NoTls(e.clone()))?;
            let name = ServerName::try_from(origin.host.clone())
                .map_err(|_| CallError::Url("invalid TLS server name"))?;
            let stream = tokio::time::timeout(self.inner.connect_timeout, tls.connect(name, tcp))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))
                .and_then(|r| r)
                .map_err(|source| CallError::Tls {
                    host: origin.host.clone(),
                    source,
                })?;
            UpstreamIo::Tls(Box::new(stream))
        } else {
            UpstreamIo::Plain(tcp)
        };
        let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "call connection ended");
            }
        });
        Ok(sender)
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

fn origin(uri: &Uri) -> Result<Origin, CallError> {
    let https = match uri.scheme() {
        Some(s) if *s == Scheme::HTTPS => true,
        Some(s) if *s == Scheme::HTTP => false,
        _ => return Err(CallError::Url("the scheme must be http or https")),
    };
    let authority: &Authority = uri.authority().ok_or(CallError::Url("no host"))?;
    if authority.as_str().contains('@') {
        return Err(CallError::Url("user info in the URL"));
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Ok(Origin {
        https,
        host: host.to_ascii_lowercase(),
        port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
    })
}

/// Resolves the origin's host and connects to the first address that answers.
async fn connect_tcp(origin: &Origin) -> Result<TcpStream, CallError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((origin.host.as_str(), origin.port))
        .await
        .map_err(|source| CallError::Resolve {
            host: origin.host.clone(),
            source,
        })?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                s.set_nodelay(true).map_err(|source| CallError::Connect {
                    host: origin.host.clone(),
                    source,
                })?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(CallError::Connect {
        host: origin.host.clone(),
        source: last,
    })
}

/// A call's response body; its connection goes back to its origin's idle ones once the
/// body has been read whole.
pub struct CallBody {
    body: Incoming,
    ended: bool,
    home: Option<(Sender, Arc<Inner>, Origin)>,
}

impl Drop for CallBody {
    fn drop(&mut self) {
        let Some((mut sender, inner, origin)) = self.home.take() else {
            return;
        };
        if !(self.ended || self.body.is_end_stream()) || sender.is_closed() {
            return;
        }
        let checkin = move |sender: Sender, inner: &Inner| {
            let mut idle = inner.idle.lock();
            let list = idle.entry(origin).or_default();
            list.retain(|c| !c.sender.is_closed() && c.since.elapsed() < inner.idle_timeout);
            if list.len() < inner.max_idle_per_origin {
                list.push(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        };
        if sender.is_ready() {
            checkin(sender, &inner);
            return;
        }
        // The connection task has not caught up with the end of the message yet.
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                let wait = tokio::time::timeout(inner.idle_timeout, sender.ready());
                if let Ok(Ok(())) = wait.await {
                    checkin(sender, &inner);
                }
            });
        }
    }
}

impl Body for CallBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn origins_come_from_absolute_urls_only() {
        let o = origin(&"https://Auth.Example:8443/jwks".parse().expect("uri")).expect("origin");
        assert_eq!(
            o,
            Origin {
                https: true,
                host: "auth.example".into(),
                port: 8443
            }
        );
        let o = origin(&"http://[::1]/x".parse().expect("uri")).expect("origin");
        assert_eq!((o.host.as_str(), o.port), ("::1", 80));
        for bad in ["/relative", "ftp://host/x", "http://user:pw@host/x"] {
            assert!(origin(&bad.parse().expect("uri")).is_err(), "{bad}");
        }
    }

    /// A plain HTTP server on 127.0.0.1 that counts the connections it accepts.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let host = req.headers()[header::HOST]
                            .to_str()
                            .unwrap_or("")
                            .to_string();
                        let body = format!("{} {} {host}", req.method(), req.uri());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn calls_reuse_a_connection_once_its_body_was_read() {
        let (addr, accepted) = server().await;
        let client = HttpClient::with_roots(rustls::RootCertStore::empty());
        for _ in 0..3 {
            let req = Request::get(format!("http://{addr}/keys?x=1"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let resp = client.request(req).await.expect("answer");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(body, format!("GET /keys?x=1 {addr}"));
        }
        // Read whole each time: one connection carried all three calls.
        let deadline = Instant::now() + Duration::from_secs(5);
        while client
            .inner
            .idle
            .lock()
            .values()
            .map(Vec::len)
            .sum::<usize>()
            == 0
        {
            assert!(Instant::now() < deadline, "the connection never went back");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // An answer dropped unread does not give its connection back.
        let req = Request::get(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = client.request(req).await.expect("answer");
        drop(resp);
        let req = Request::get(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = client.request(req).await.expect("answer");
        resp.into_body().collect().await.expect("body");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn https_to_an_untrusted_server_fails() {
        let (addr, _) = server().await;
        let client = HttpClient::with_roots(rustls::RootCertStore::empty());
        // A plain server spoken to over TLS: the handshake fails.
        let req = Request::get(format!("https://{addr}/"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        assert!(matches!(
            client.request(req).await,
            Err(CallError::Tls { .. })
        ));
    }
}
