//! The snapshot schema: what the controller (or standalone mode) tells a dataplane to serve.
//!
//! Plain data with no I/O and no Kubernetes, hyper or tokio types, so that both sides of the
//! snapshot channel depend on it and nothing else. One [`Snapshot`] describes one Gateway.
//! Besides the data, the few rules both sides must apply alike live here, so neither side
//! imports the other for them: the size limit of route regexes ([`REGEX_SIZE_LIMIT`]) and how
//! a certificate pair is read ([`tls`]).
//!
//! The shape is deliberately as fine-grained as the user API, with children naming their
//! parents rather than being nested inside them:
//!
//! ```text
//!   Snapshot (one Gateway, versioned)
//!     ├── listeners[]           name, bind addresses, port, protocol, hostname
//!     ├── routes[]  ──parents──▶ listener name (+ effective hostnames)
//!     │     └── rules[] ──backend_refs──▶ BackendId
//!     ├── streamRoutes[] ──parents──▶ listener name (+ SNI hostnames); backend_refs ──▶ BackendId
//!     └── backends[]            BackendId → endpoints, settings (a BackendPolicy compiled)
//! ```
//!
//! A route change touches one `routes[]` entry, an endpoint change one `backends[]` entry, so a
//! later incremental channel can send only what changed. Policies are one more top-level
//! collection that routes refer to by name ([`policy`]): the snapshot's [`PolicySet`]
//! (`authPolicies[]` of [`auth`], `rateLimitPolicies[]` of [`ratelimit`], `cachePolicies[]`
//! of [`cache`]), named by a rule's
//! [`AttachedPolicies`] (a policy on its HTTPRoute or rule) or a route parent's (on its
//! listener or Gateway).
//!
//! Everything is ordered deterministically (compile sorts before it emits), so the same inputs
//! serialise to byte-identical snapshots.
//!
//! One module per concern: [`listener`], [`route`], [`stream`] (TCP, TLS passthrough), [`filter`], [`backend`], [`policy`] (how
//! policies attach) and a module per policy kind; their types are re-exported here, so users
//! write `portico_model::RouteRule`.

pub mod auth;
pub mod backend;
pub mod budget;
pub mod cache;
pub mod channel;
pub mod filter;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod listener;
pub mod object;
pub mod policy;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod snapshot;
pub mod stream;
pub mod tls;

pub use backend::{
    AppProtocol, Backend, BackendId, BackendRef, BackendSettings, BackendTarget, BackendTls,
    Compression, Encoding, Endpoint, SubjectAltName,
};
pub use filter::{Cors, Filter, Header, HeaderModifier, PathRewrite, Redirect, UrlRewrite};
pub use listener::{Certificate, ClientValidation, Listener, ListenerTls, Protocol};
pub use object::ObjectRef;
pub use policy::{AttachedPolicies, PolicyKind, PolicySet};
pub use route::{
    HttpRoute, KeyValueMatch, Mirror, PathMatch, REGEX_SIZE_LIMIT, RouteKind, RouteMatch,
    RouteParent, RouteRetry, RouteRule, StringMatch, Timeouts,
};
pub use snapshot::Snapshot;
pub use stream::{StreamParent, StreamRoute};

#[cfg(test)]
mod tests;
