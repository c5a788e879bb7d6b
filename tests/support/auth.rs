//! Identity for the auth tests: a running `portico-authd` (JWKS, introspection, external
//! auth), tokens signed the way identity providers sign them, and a standalone Portico with
//! one echo backend to put policies in front of.

use crate::{
    Echo, HttpClient, Portico, Proc, Resp, TempDir, binaries, free_port, loopback_ip, wait_port,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// The test-only RSA key (2048 bits, PKCS#8) the dataplane's unit tests use too.
pub const RSA_PKCS8: &[u8] = include_bytes!("../../dataplane/src/auth/testdata/rsa-2048.pk8");

pub fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs tokens with an RSA key (`kid` `rsa-1`) and an EC P-256 key (`kid` `ec-1`).
pub struct Issuer {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Default for Issuer {
    fn default() -> Self {
        Self::new()
    }
}

impl Issuer {
    pub fn new() -> Self {
        let rng = SystemRandom::new();
        let pk8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("EC key");
        Self {
            rsa: RsaKeyPair::from_pkcs8(RSA_PKCS8).expect("RSA key"),
            ec: EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                pk8.as_ref(),
                &rng,
            )
            .expect("EC key"),
            rng,
        }
    }

    /// The public keys as a JSON Web Key Set.
    pub fn jwks(&self) -> Value {
        let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(self.rsa.public());
        let p = self.ec.public_key().as_ref();
        json!({"keys": [
            {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": b64(&c.n), "e": b64(&c.e)},
            {"kty": "EC", "kid": "ec-1", "use": "sig", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])}
        ]})
    }

    /// The RSA public modulus (for the key-confusion attack).
    pub fn rsa_public_bytes(&self) -> Vec<u8> {
        signature::RsaPublicKeyComponents::<Vec<u8>>::from(self.rsa.public()).n
    }

    pub fn unsigned(header: &Value, claims: &Value) -> String {
        format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    }

    pub fn rs256(&self, header: Value, claims: &Value) -> String {
        let msg = Self::unsigned(&header, claims);
        let mut sig = vec![0; self.rsa.public().modulus_len()];
        self.rsa
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &self.rng,
                msg.as_bytes(),
                &mut sig,
            )
            .expect("sign");
        format!("{msg}.{}", b64(&sig))
    }

    pub fn es256(&self, header: Value, claims: &Value) -> String {
        let msg = Self::unsigned(&header, claims);
        let sig = self.ec.sign(&self.rng, msg.as_bytes()).expect("sign");
        format!("{msg}.{}", b64(sig.as_ref()))
    }

    pub fn hs256(key: &[u8], header: Value, claims: &Value) -> String {
        let msg = Self::unsigned(&header, claims);
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            msg.as_bytes(),
        );
        format!("{msg}.{}", b64(tag.as_ref()))
    }
}

/// Claims that pass a policy with issuer `https://idp.test` and audience `api`.
pub fn claims(sub: &str) -> Value {
    json!({"iss": "https://idp.test", "aud": "api", "sub": sub, "exp": now() + 600, "iat": now() - 5})
}

/// A running `portico-authd`.
pub struct AuthD {
    pub addr: SocketAddr,
    pub proc: Proc,
    _dir: TempDir,
}

impl AuthD {
    /// Serving `jwks` at /jwks.
    pub fn start(jwks: &Value) -> Self {
        Self::start_with(Some(jwks), None)
    }

    /// As the demo identity provider: /jwks serves the key /token signs with.
    pub fn start_demo() -> Self {
        Self::start_with(None, None)
    }

    /// Serving `jwks` over HTTPS with a certificate for its own IP address; returns the
    /// certificate's PEM too (the CA a client must trust).
    pub fn start_https(jwks: &Value) -> (Self, String) {
        let ip = loopback_ip();
        let (cert, key) = crate::tls::self_signed(&[&ip.to_string()]);
        (Self::start_with(Some(jwks), Some((ip, &cert, &key))), cert)
    }

    fn start_with(jwks: Option<&Value>, tls: Option<(IpAddr, &str, &str)>) -> Self {
        let ip = tls.map_or_else(loopback_ip, |(ip, _, _)| ip);
        let addr = SocketAddr::new(ip, free_port(ip));
        let dir = TempDir::new("authd");
        let mut args = vec!["--listen".to_string(), addr.to_string()];
        if let Some((_, cert, key)) = tls {
            dir.write("tls.crt", cert);
            dir.write("tls.key", key);
            for (flag, file) in [("--tls-cert", "tls.crt"), ("--tls-key", "tls.key")] {
                args.push(flag.into());
                args.push(dir.path().join(file).display().to_string());
            }
        }
        if let Some(jwks) = jwks {
            dir.write("jwks.json", &jwks.to_string());
            args.push("--jwks".into());
            args.push(dir.path().join("jwks.json").display().to_string());
        }
        let proc = Proc::spawn("authd", &binaries().authd, &args);
        wait_port(addr);
        Self {
            addr,
            proc,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Makes `/jwks` answer `ok`, `500`, `timeout` or `garbage`.
    pub async fn jwks_mode(&self, mode: &str) {
        let r = HttpClient::new()
            .try_request(
                "POST",
                self.addr,
                "authd",
                &format!("/mode?jwks={mode}"),
                &[],
            )
            .await
            .expect("authd answers");
        assert_eq!(r.status, 200, "{}", r.text());
    }

    pub async fn stat(&self, name: &str) -> u64 {
        HttpClient::new()
            .get(self.addr, "authd", "/stats")
            .await
            .json()[name]
            .as_u64()
            .unwrap_or_default()
    }
}

/// A token from the demo identity provider's `/token` (query `sub=...&scope=...`).
pub async fn demo_token(idp: &AuthD, query: &str) -> String {
    let r = HttpClient::new()
        .get(idp.addr, "authd", &format!("/token?{query}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text().trim().to_string()
}

/// The host the auth suites send requests for.
pub const HOST: &str = "api.test";

/// Standalone configuration: Gateway `gw` on `port`, a Service `echo` for the backend, and `docs`.
pub fn config(port: u16, backend: SocketAddr, docs: &str) -> String {
    config_with_endpoints(port, &[backend], docs)
}

/// As [`config`], with Service `echo` backed by every one of `endpoints`.
pub fn config_with_endpoints(port: u16, endpoints: &[SocketAddr], docs: &str) -> String {
    config_with_listeners(&[port], endpoints, docs)
}

/// As [`config_with_endpoints`], with an HTTP listener on each of `ports` (`http` on the
/// first, `http-<port>` on the others).
pub fn config_with_listeners(ports: &[u16], endpoints: &[SocketAddr], docs: &str) -> String {
    let listeners: String = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let name = if i == 0 {
                "http".to_string()
            } else {
                format!("http-{p}")
            };
            format!("  - {{name: {name}, port: {p}, protocol: HTTP}}\n")
        })
        .collect();
    let backend = endpoints
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portico}}
spec: {{controllerName: portico.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: portico
  listeners:
{listeners}---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: default
  annotations: {{portico.dev/endpoints: "{backend}"}}
spec:
  ports: [{{name: http, port: 80}}]
{docs}"#
    )
}

/// An HTTPRoute `name` for `prefix` to the echo Service.
pub fn route(name: &str, prefix: &str) -> String {
    format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{HOST}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    backendRefs: [{{name: echo, port: 80}}]
"#
    )
}

/// An AuthPolicy on HTTPRoute `target`.
pub fn policy(name: &str, target: &str, body: &str) -> String {
    policy_of_kind("AuthPolicy", name, target, body)
}

/// A Portico policy of `kind` on HTTPRoute `target`.
pub fn policy_of_kind(kind: &str, name: &str, target: &str, body: &str) -> String {
    format!(
        r#"---
apiVersion: portico.dev/v1alpha1
kind: {kind}
metadata: {{name: {name}, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {target}}}]
{body}
"#
    )
}

pub struct Setup {
    pub portico: Portico,
    pub echo: Echo,
    pub port: u16,
    pub client: HttpClient,
}

impl Setup {
    pub async fn start(docs: &str) -> Self {
        Self::start_with_env(docs, &[]).await
    }

    /// With environment variables for the dataplane (`SSL_CERT_FILE` for a test CA).
    pub async fn start_with_env(docs: &str, env: &[(&str, &std::path::Path)]) -> Self {
        Self::start_full(docs, &[], env).await
    }

    /// With extra arguments for `portico standalone`.
    pub async fn start_with_args(docs: &str, args: &[&str]) -> Self {
        Self::start_full(docs, args, &[]).await
    }

    async fn start_full(docs: &str, args: &[&str], env: &[(&str, &std::path::Path)]) -> Self {
        let echo = Echo::start("echo");
        let ip = loopback_ip();
        let port = free_port(ip);
        let text = config(port, echo.addr, docs);
        let portico = Portico::start_with_env(ip, &[("config.yaml", &text)], args, env).await;
        Self {
            portico,
            echo,
            port,
            client: HttpClient::new(),
        }
    }

    /// The gateway's listener.
    pub fn addr(&self) -> SocketAddr {
        self.portico.addr(self.port)
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.client
            .get_with(self.portico.addr(self.port), HOST, path, headers)
            .await
    }

    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.client
            .try_request(method, self.portico.addr(self.port), HOST, path, headers)
            .await
            .expect("portico answers")
    }

    pub fn rewrite(&self, docs: &str) {
        let text = config(self.port, self.echo.addr, docs);
        self.portico.config.write("config.yaml", &text);
    }

    /// Everything the dataplane logged must be free of `secrets`.
    pub fn assert_not_logged(&self, secrets: &[&str]) {
        let logs = self.portico.proc.logs();
        for s in secrets {
            assert!(
                !logs.contains(s),
                "a credential appears in the logs: {s:.12}..."
            );
        }
    }
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A Service `name` for `backend` and an HTTPRoute `name` from `host` to it (on Gateway `gw`).
pub fn service_route(name: &str, host: &str, backend: SocketAddr) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  annotations: {{portico.dev/endpoints: "{backend}"}}
spec:
  ports: [{{name: http, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{host}]
  rules:
  - backendRefs: [{{name: {name}, port: 80}}]
"#
    )
}
