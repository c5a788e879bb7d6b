//! One Gateway's [`Snapshot`], assembled from what the passes concluded: its programmable
//! listeners ([`crate::gateway`]), the routes attached to it with their backends
//! ([`crate::route`], [`crate::stream`]), and the policies those name ([`crate::auth`], [`crate::ratelimit`],
//! [`crate::backend_policy`]).
//!
//! The passes only produce; this module only reads them, so no pass needs to know the
//! snapshot's shape and the passes do not import each other to build it.

use crate::auth::AuthPolicies;
use crate::backend_policy::BackendPolicies;
use crate::backend_tls::BackendTlsPolicies;
use crate::cache::CachePolicies;
use crate::gateway::GatewayState;
use crate::ratelimit::RateLimitPolicies;
use crate::route::AttachedRoutes;
use crate::stream::AttachedStreams;
use portico_model::{Listener, ListenerTls, PolicyKind, PolicySet, Protocol, Snapshot};

/// The policies of every kind, resolved once per compile and named in each snapshot.
pub(crate) struct ResolvedPolicies {
    pub(crate) auth: AuthPolicies,
    pub(crate) rate_limit: RateLimitPolicies,
    pub(crate) cache: CachePolicies,
    pub(crate) backend: BackendPolicies,
    pub(crate) backend_tls: BackendTlsPolicies,
}

impl ResolvedPolicies {
    /// Names each rule's and route parent's policies in `snapshot` and adds the compiled
    /// policies it uses, kind by kind.
    fn attach(&self, snapshot: &mut Snapshot) {
        for kind in PolicyKind::ALL {
            match kind {
                PolicyKind::Auth => self.auth.attach(snapshot),
                PolicyKind::RateLimit => self.rate_limit.attach(snapshot),
                PolicyKind::Cache => self.cache.attach(snapshot),
                PolicyKind::Invalidation => self.cache.attach_purges(snapshot),
                PolicyKind::Backend => self.backend.attach(snapshot),
            }
        }
        self.backend_tls.attach(snapshot);
    }
}

/// The snapshot of an accepted Gateway (`None` for one that is not): usable listeners,
/// attached routes, their backends and policies. `version` is 0; the publisher stamps it.
pub(crate) fn gateway_snapshot(
    gw: &GatewayState,
    routes: &AttachedRoutes,
    streams: &AttachedStreams,
    policies: &ResolvedPolicies,
) -> Option<Snapshot> {
    if !gw.accepted() {
        return None;
    }
    let listeners = gw
        .listeners
        .iter()
        .filter(|l| l.programmable())
        .map(|l| {
            let terminates = l.terminates_tls();
            Listener {
                name: l.key(),
                addresses: gw.bind_addresses().to_vec(),
                port: u16::try_from(l.port).unwrap_or_default(),
                protocol: match l.protocol.as_str() {
                    "HTTPS" => Protocol::Https,
                    "TCP" => Protocol::Tcp,
                    "UDP" => Protocol::Udp,
                    "TLS" if l.passthrough => Protocol::TlsPassthrough,
                    "TLS" => Protocol::TlsTerminate,
                    _ => Protocol::Http,
                },
                hostname: l.hostname.clone(),
                tls: terminates.then(|| ListenerTls {
                    certificates: l.certificates.clone(),
                    client_validation: l.client_validation.clone(),
                }),
            }
        })
        .collect();
    let (routes, mut backends) = routes.for_gateway(&gw.id);
    let (stream_routes, stream_backends) = streams.for_gateway(&gw.id);
    // One entry per backend, sorted, whichever kinds of route use it.
    backends.extend(stream_backends);
    backends.sort_by(|a, b| a.id.cmp(&b.id));
    backends.dedup_by(|a, b| a.id == b.id);
    let mut snapshot = Snapshot {
        version: 0,
        gateway: gw.id.clone(),
        listeners,
        routes,
        stream_routes,
        backends,
        policies: PolicySet::default(),
        session_key: None,
        purges: Vec::new(),
    };
    policies.attach(&mut snapshot);
    // Over TLS, backends get the Gateway's own client certificate, if it names a usable one.
    if let Some(Ok(cert)) = &gw.backend_client_certificate {
        for tls in snapshot.backends.iter_mut().filter_map(|b| b.tls.as_mut()) {
            tls.client_certificate = Some(cert.clone());
        }
    }
    Some(snapshot)
}
