//! The Portico dataplane: the proxy that serves snapshots.
//!
//! ```text
//!  snapshots ──▶ table::build ──▶ listen::SocketService per socket (ArcSwap in listen::Server)
//!                    │               └─ Http: SocketRouter + TLS settings
//!                    ├──▶ policy::Chain per rule and parent (opaque to the router)
//!                    └──▶ upstream::Upstreams: a BackendPool per backend ◀── discovery pushes
//!                                                      endpoints
//!  listen (accept, admission) ──▶ listen::http (TLS, hyper server) ──▶ proxy::serve
//!        ──▶ sanitize ─▶ router ─▶ chain ─▶ filters ─▶ upstream::attempt (h1: ours, h2: hyper)
//! ```
//!
//! The request path ([`proxy::Proxy::serve`]): [`sanitize`] what a client may send → [`router`]
//! (with [`path`] normalisation) → the rule's [`policy::Chain`] ([`auth`], [`ratelimit`]) →
//! [`filters`] → a backend of the [`rule`] and an endpoint of its [`upstream`] pool → the
//! response. One [`request::RequestCtx`] per request carries what the steps read and decide.
//! Failures are [`errors::ProxyError`]s, turned into responses in one place (gRPC-aware);
//! policies answer through [`body::LocalReply`], so [`errors`] and [`body`] (the leaves) name
//! no policy.
//!
//! Around it: [`listen`] sockets and the services they run (HTTP now; TLS passthrough, TCP
//! and UDP are further [`listen::SocketService`] kinds), [`conn`] connection limits, [`tls`]
//! certificates by SNI, [`table`] snapshots compiled into routers, [`endpoints`]
//! EndpointSlices, [`metrics`] and [`admin`] telemetry, [`dataplane`] the whole applied
//! together, [`standalone`] the directory-driven mode, [`channel`] the controller-driven one.

pub mod admin;
pub mod auth;
pub mod body;
pub mod cache;
pub mod channel;
pub mod codec;
pub mod compress;
pub mod conn;
pub mod cors;
pub mod dataplane;
pub mod endpoints;
pub mod errors;
pub mod filters;
pub mod listen;
pub mod metrics;
pub mod mirror;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod request;
pub mod router;
pub mod rule;
pub mod sanitize;
pub mod standalone;
pub mod table;
pub mod tee;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod util;

pub use dataplane::{Dataplane, DataplaneSettings};
