//! `portico-authd`: the identity services the auth tests and examples talk to, in one process.
//!
//! - `GET /jwks`: the JSON Web Key Set in `--jwks FILE` (by default, the public half of a key
//!   made at start-up), or, as `POST /mode?jwks=` sets it, a 500, an answer that never comes
//!   (`timeout`) or `garbage`.
//! - `GET /token?sub=NAME[&scope=...][&aud=...][&ttl=SECONDS]`: a demo identity provider: an
//!   ES256 token for NAME signed with the start-up key (`kid` `demo-1`, `iss` `--issuer`).
//! - `POST /introspect`: RFC 7662 token introspection for the client `--client ID:SECRET`
//!   (HTTP Basic). `active-<name>` tokens are active with `sub` `<name>`, scope `read` and an
//!   hour to live, `short-<name>` the same with two seconds to live; every other token is
//!   inactive.
//! - `/ext/...` (any method): external authorization. `x-ext-token: good` is allowed (with
//!   `x-auth-user: ext-alice`), `slow` is allowed after 3 s, `broken` gets a 500, anything else
//!   a 401 with a `WWW-Authenticate` challenge and a body.
//! - `GET /stats`: how many JWKS fetches, introspections and external checks it answered.
//!
//! With `--tls-cert` and `--tls-key` (PEM) it speaks HTTPS instead of HTTP.

#[path = "../logging.rs"]
mod logging;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl State {
    fn new() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pk8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("generating a key"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pk8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("loading the key"))?;
        Ok(Self {
            key,
            rng,
            jwks_mode: AtomicU8::new(OK),
            jwks_fetches: AtomicU64::new(0),
            introspections: AtomicU64::new(0),
            external: AtomicU64::new(0),
        })
    }

    fn own_jwks(&self) -> serde_json::Value {
        let p = self.key.public_key().as_ref();
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "demo-1", "use": "sig", "alg": "ES256",
                         "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])}]})
    }

    fn mint(&self, claims: &serde_json::Value) -> Option<String> {
        let header = json!({"alg": "ES256", "kid": "demo-1", "typ": "JWT"});
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.key.sign(&self.rng, msg.as_bytes()).ok()?;
        Some(format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }
}

#[derive(Parser)]
#[command(
    name = "portico-authd",
    about = "Identity services for Portico's auth tests and examples"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// The JSON Web Key Set to serve at /jwks (read on every fetch, so it can change).
    #[arg(long)]
    jwks: Option<PathBuf>,
    /// The `iss` of the tokens `/token` mints.
    #[arg(long, default_value = "https://idp.portico.test")]
    issuer: String,
    /// Serve HTTPS with this PEM certificate chain (and `--tls-key`).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Introspection client credentials, `ID:SECRET`.
    #[arg(long, default_value = "portico:portico-secret")]
    client: String,
    /// `error`, `warn`, `info` or `debug` (each request and connection error), or any
    /// `RUST_LOG` filter. Default: `RUST_LOG`, else `warn`.
    #[arg(long)]
    log_level: Option<String>,
}

struct State {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    jwks_mode: AtomicU8,
    jwks_fetches: AtomicU64,
    introspections: AtomicU64,
    external: AtomicU64,
}

const OK: u8 = 0;
const FAIL: u8 = 1;
const HANG: u8 = 2;
const GARBAGE: u8 = 3;

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

fn json_answer(body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::OK, &body.to_string());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn form_value(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(
    req: Request<Incoming>,
    args: Arc<Args>,
    state: Arc<State>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/stats") => json_answer(json!({
            "jwksFetches": state.jwks_fetches.load(Ordering::Relaxed),
            "introspections": state.introspections.load(Ordering::Relaxed),
            "external": state.external.load(Ordering::Relaxed),
        })),
        (Method::POST, "/mode") => {
            let mode = match req.uri().query().and_then(|q| q.strip_prefix("jwks=")) {
                Some("ok") => OK,
                Some("500") => FAIL,
                Some("timeout") => HANG,
                Some("garbage") => GARBAGE,
                _ => return text(StatusCode::BAD_REQUEST, "mode?jwks=ok|500|timeout|garbage"),
            };
            state.jwks_mode.store(mode, Ordering::Relaxed);
            text(StatusCode::OK, "ok")
        }
        (Method::GET, "/jwks") => {
            state.jwks_fetches.fetch_add(1, Ordering::Relaxed);
            match state.jwks_mode.load(Ordering::Relaxed) {
                FAIL => text(StatusCode::INTERNAL_SERVER_ERROR, "broken"),
                HANG => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    text(StatusCode::OK, "{}")
                }
                GARBAGE => text(StatusCode::OK, "<html>not a key set</html>"),
                _ => match args
                    .jwks
                    .as_ref()
                    .map(std::fs::read_to_string)
                    .unwrap_or_else(|| Ok(state.own_jwks().to_string()))
                {
                    Ok(body) => {
                        let mut r = text(StatusCode::OK, &body);
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            header::HeaderValue::from_static("application/json"),
                        );
                        r
                    }
                    Err(e) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("reading --jwks: {e}"),
                    ),
                },
            }
        }
        (Method::GET, "/token") => {
            let q = req.uri().query().unwrap_or_default().to_string();
            let get = |k: &str| form_value(&q, k);
            let Some(sub) = get("sub") else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "/token?sub=NAME[&scope=...][&aud=...][&ttl=SECONDS]",
                );
            };
            let ttl: u64 = get("ttl").and_then(|t| t.parse().ok()).unwrap_or(3600);
            let mut claims = json!({"iss": args.issuer, "sub": sub, "iat": now(), "exp": now() + ttl,
                                    "aud": get("aud").unwrap_or_else(|| "api".into())});
            if let Some(scope) = get("scope") {
                claims["scope"] = json!(scope);
            }
            if let Some(roles) = get("roles") {
                claims["roles"] = json!(roles.split(',').collect::<Vec<_>>());
            }
            match state.mint(&claims) {
                Some(token) => text(StatusCode::OK, &format!("{token}\n")),
                None => text(StatusCode::INTERNAL_SERVER_ERROR, "signing failed"),
            }
        }
        (Method::POST, "/introspect") => {
            state.introspections.fetch_add(1, Ordering::Relaxed);
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(&args.client)
            );
            let authorized = req
                .headers()
                .get(header::AUTHORIZATION)
                .is_some_and(|v| v.as_bytes() == expected.as_bytes());
            if !authorized {
                return text(StatusCode::UNAUTHORIZED, "client authentication failed");
            }
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let token = form_value(&String::from_utf8_lossy(&body), "token").unwrap_or_default();
            let now = now();
            let active = token
                .strip_prefix("active-")
                .map(|sub| (sub, 3600))
                .or_else(|| token.strip_prefix("short-").map(|sub| (sub, 2)));
            match active {
                Some((sub, ttl)) => json_answer(json!({
                    "active": true, "sub": sub, "scope": "read", "exp": now + ttl,
                    "client_id": "demo-app", "token_type": "Bearer"
                })),
                None => json_answer(json!({"active": false})),
            }
        }
        (_, p) if p.starts_with("/ext/") => {
            state.external.fetch_add(1, Ordering::Relaxed);
            let token = req
                .headers()
                .get("x-ext-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            match token.as_str() {
                "good" | "slow" => {
                    if token == "slow" {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    let mut r = text(StatusCode::OK, "");
                    r.headers_mut()
                        .insert("x-auth-user", header::HeaderValue::from_static("ext-alice"));
                    r.headers_mut()
                        .insert("x-not-copied", header::HeaderValue::from_static("1"));
                    r
                }
                "broken" => text(StatusCode::INTERNAL_SERVER_ERROR, "ext is broken"),
                _ => {
                    let mut r = text(StatusCode::UNAUTHORIZED, "ext says no\n");
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Ext realm=\"ext\""),
                    );
                    r
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    logging::init(args.log_level.as_deref());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Arc<Args>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("portico-authd listening on {}", listener.local_addr()?);
    let state = Arc::new(State::new()?);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (args, state, builder, tls) =
            (args.clone(), state.clone(), builder.clone(), tls.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (args, state) = (args.clone(), state.clone());
                async move {
                    let (method, path) = (req.method().clone(), req.uri().path().to_string());
                    let resp = handle(req, args, state).await;
                    tracing::debug!(%method, path, status = resp.status().as_u16(), "answered");
                    Ok::<_, Infallible>(resp)
                }
            });
            let served = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => builder.serve_connection(TokioIo::new(stream), svc).await,
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => builder.serve_connection(TokioIo::new(stream), svc).await,
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
