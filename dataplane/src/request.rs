//! One request's context: what the steps of the request path read (the connection, the
//! route it matched) and what they decide (who the client is, headers for the response).
//! One value per request, passed by reference to every step, instead of a fact struct per
//! policy.

use http::{HeaderMap, HeaderValue};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What the proxy knows about the downstream connection.
#[derive(Clone, Debug)]
pub struct Downstream {
    pub client: SocketAddr,
    pub local_port: u16,
    pub scheme: &'static str,
    /// The TLS server name the client asked for, if it did: a request for a host that another
    /// listener (another certificate) serves gets 421.
    pub sni: Option<Arc<str>>,
    /// The client's address as a header value, made once per connection (it is each
    /// request's `X-Forwarded-For` at the edge).
    pub client_ip: HeaderValue,
    /// The certificate the client presented in the TLS handshake, if it did.
    pub client_cert: Option<Arc<ClientCert>>,
}

impl Downstream {
    pub fn new(
        client: SocketAddr,
        local_port: u16,
        scheme: &'static str,
        sni: Option<Arc<str>>,
    ) -> Self {
        let client_ip = HeaderValue::from_str(&client.ip().to_string())
            .expect("an IP address is a valid header value");
        Self {
            client,
            local_port,
            scheme,
            sni,
            client_ip,
            client_cert: None,
        }
    }
}

/// What a client certificate says, read once per connection.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// It leads to the port's CAs (always, unless the port falls back insecurely).
    pub verified: bool,
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
}

/// Who a request that passed authenticated as, for the access log and rate-limit keys.
#[derive(Debug, Default)]
pub struct Authenticated {
    pub consumer: Option<Arc<str>>,
    /// The verified token's claims (JWT or introspection).
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

#[derive(Debug)]
pub struct RequestCtx {
    /// `x-request-id`, the client's when it sent a usable one.
    pub id: HeaderValue,
    pub down: Downstream,
    /// The dataplane's `--trusted-hops` of `X-Forwarded-For`.
    pub trusted_hops: usize,
    /// The request speaks gRPC: the gateway's own answers are gRPC statuses.
    pub grpc: bool,
    /// `namespace/name` of the route routing chose (`None` until then).
    pub route: Option<Arc<str>>,
    /// The index of the rule in its route.
    pub rule_index: usize,
    /// The path routing matched, when it differs from the forwarded one (`;parameters`).
    pub matching: Option<String>,
    /// For a PathPrefix match, the prefix (for ReplacePrefixMatch).
    pub prefix: Option<Arc<str>>,
    /// Who the client authenticated as, once an auth policy said so.
    pub identity: Authenticated,
    /// Headers steps add to the response, whoever answers (the quota's RateLimit headers).
    pub response_headers: AddedHeaders,
    /// Attempts at the backend (more than one after retries); 0 when none was made.
    pub attempts: u32,
    /// The request opens a WebSocket.
    pub upgrade: Option<crate::sanitize::Upgrade>,
    /// The client's request carried credentials (`Authorization`, `Proxy-Authorization`),
    /// whatever policies and filters removed on the way.
    pub credentials: bool,
    /// The client's request carried a `Cookie` header (a credential unless it holds only
    /// the gateway's own session cookie, which the forwarding step tells).
    pub cookie: bool,
}

impl RequestCtx {
    pub fn new(id: HeaderValue, down: Downstream, trusted_hops: usize, grpc: bool) -> Self {
        Self {
            id,
            down,
            trusted_hops,
            grpc,
            route: None,
            rule_index: 0,
            matching: None,
            prefix: None,
            identity: Authenticated::default(),
            response_headers: AddedHeaders::default(),
            attempts: 0,
            upgrade: None,
            credentials: false,
            cookie: false,
        }
    }

    /// A context for a request the gateway makes on this one's behalf after answering it
    /// (a cache refresh): the same connection, route and identity; nothing decided yet.
    pub fn fork(&self) -> Self {
        Self {
            route: self.route.clone(),
            rule_index: self.rule_index,
            matching: self.matching.clone(),
            prefix: self.prefix.clone(),
            identity: Authenticated {
                consumer: self.identity.consumer.clone(),
                claims: self.identity.claims.clone(),
            },
            credentials: self.credentials,
            cookie: self.cookie,
            ..Self::new(
                self.id.clone(),
                self.down.clone(),
                self.trusted_hops,
                self.grpc,
            )
        }
    }

    /// The path policies match on: the one routing matched.
    pub fn path<'a>(&'a self, forwarded: &'a str) -> &'a str {
        self.matching.as_deref().unwrap_or(forwarded)
    }

    /// The connection's peer.
    pub fn peer(&self) -> IpAddr {
        self.down.client.ip()
    }
}

/// Headers the steps add to a response, in order: a few at most, kept in a list rather than
/// a map (no hashing until they reach the response's own map). Setting a name again replaces
/// what was set before.
#[derive(Debug, Default)]
pub struct AddedHeaders(Vec<(http::HeaderName, HeaderValue)>);

impl AddedHeaders {
    pub fn insert(&mut self, name: http::HeaderName, value: HeaderValue) {
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, value));
    }

    /// Onto `headers`: each replaces the response's own of its name (a quota is ours to
    /// state, whatever the backend said).
    pub fn apply_to(&mut self, headers: &mut HeaderMap) {
        for (name, value) in self.0.drain(..) {
            headers.insert(name, value);
        }
    }
}
