//! The Portico dataplane: the proxy that serves snapshots.
//!
//! ```text
//!  snapshots ──▶ table::build ──▶ SocketRouter per socket (ArcSwap) ◀── server (accept, hyper)
//!                    ├──▶ tls: rustls config per HTTPS socket (ArcSwap) ◀──┤ (handshake)
//!                    │                                                   │
//!                    └──▶ balancer::Pools (shared, endpoints in place)   ▼
//!                                                                proxy::serve ─▶ upstream
//! ```
//!
//! Module per stage: [`router`] matching, [`rule`] compiled rules, [`filters`] redirect and
//! rewrite, [`balancer`] endpoint pools, [`proxy`] the request path, [`errors`] failure →
//! response, [`server`] sockets and connections, [`conn`] connection limits, [`sanitize`] what a
//! client may send, [`body`] body time limits, [`tls`] certificates by SNI, [`metrics`] and [`admin`] telemetry,
//! [`standalone`] the directory-driven mode, [`channel`] the controller-driven one.

pub mod admin;
pub mod auth;
pub mod balancer;
pub mod body;
pub mod channel;
pub mod conn;
pub mod dataplane;
pub mod endpoints;
pub mod errors;
pub mod filters;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod ratelimit;
pub mod router;
pub mod rule;
pub mod sanitize;
pub mod server;
pub mod standalone;
pub mod table;
pub mod tls;
pub mod util;

pub use dataplane::{Dataplane, DataplaneSettings};
