//! The adversarial suites of the gateway's edge, each tried as an attacker would against real
//! `portico` and `portico-echo` processes on 127.0.0.x:
//!
//! - [`paths`]: the path matrix (encodings, dot segments with and without `;parameters`,
//!   empty segments, case, absolute-form, HTTP/2 `:path`) against API-key routes, an Exact
//!   route, an authorization path rule and a rate-limit match, asserting what the backend got
//!   and how a servlet container and a plain server would read it;
//! - [`headers`]: Host / `:authority` / absolute-form confusion, identity headers a client
//!   tries to remove or smuggle, forwarding headers;
//! - [`framing`]: HTTP/1.1 framing (Content-Length and Transfer-Encoding anomalies, chunk
//!   syntax, pipelining, smuggling attempts, a 101 nobody asked for);
//! - [`h2spec`]: the HTTP/2 conformance tester against the h2c and TLS listeners;
//! - [`logins`]: password floods and unreadable credentials;
//! - [`credentials`]: credentials a backend would read differently (scheme spellings,
//!   repeated cookies, headers and query parameters) under `allowAnonymous`;
//! - [`slow`]: silent and slow clients (prefaces, heads, TLS, bodies, readers) and the
//!   connection caps, while normal traffic keeps succeeding.

#[path = "edge/credentials.rs"]
mod credentials;
#[path = "edge/framing.rs"]
mod framing;
#[path = "edge/h2spec.rs"]
mod h2spec;
#[path = "edge/headers.rs"]
mod headers;
#[path = "edge/logins.rs"]
mod logins;
#[path = "edge/paths.rs"]
mod paths;
#[path = "edge/slow.rs"]
mod slow;
