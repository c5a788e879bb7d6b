//! Who a snapshot client is: the ServiceAccount its bearer token proves, checked with a
//! TokenReview for our audience.
//!
//! The API server is asked once per token: an accepted token is remembered (by its SHA-256,
//! never the token itself) until it expires, at most [`MAX_CACHED`] so a revoked token (its
//! pod deleted) stops working soon after; a refused one for [`REFUSED_CACHED`]. A peer whose
//! tokens keep being refused is answered 429 without an API call once it has used
//! [`FAILURES_PER_PEER`] in [`FAILURE_WINDOW`], so a flood of garbage costs the API server
//! nothing.

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Client;
use kube::api::{Api, PostParams};
use parking_lot::Mutex;
use portico_model::ObjectRef;
use portico_model::budget::FailureBudget;
use portico_model::channel::TOKEN_AUDIENCE;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Longest an accepted token is trusted without asking again.
const MAX_CACHED: Duration = Duration::from_secs(600);
/// How long a refused token is refused without asking again.
const REFUSED_CACHED: Duration = Duration::from_secs(10);
const FAILURES_PER_PEER: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Entries each map holds at most; beyond, expired ones go, then all.
const MAX_ENTRIES: usize = 10_000;

type Digest = [u8; 32];

/// What a token proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// ServiceAccount (namespace, name).
    Account(String, String),
    Refused,
    /// This peer failed too often lately.
    Throttled,
    /// The API server could not be asked (an error, its own throttling): not the client's
    /// fault, neither cached nor counted against the peer.
    Unavailable,
}

/// Counters for the controller's `/metrics`.
#[derive(Debug, Default)]
pub struct TokenCounters {
    pub reviews: AtomicU64,
    pub cache_hits: AtomicU64,
    pub throttled: AtomicU64,
}

/// Checks tokens with the API server, remembering the answers.
pub struct Authenticator {
    client: Client,
    /// Where the dataplanes' ServiceAccounts are (`--dataplane-namespace`,
    /// `--gateway-namespaces`).
    placement: portico_compile::Placement,
    answers: Mutex<HashMap<Digest, (Verdict, Instant)>>,
    failures: FailureBudget<IpAddr>,
    pub counters: TokenCounters,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("cached", &self.answers.lock().len())
            .finish()
    }
}

impl Authenticator {
    pub fn new(client: Client, placement: portico_compile::Placement) -> Self {
        Self {
            client,
            placement,
            answers: Mutex::new(HashMap::new()),
            failures: FailureBudget::new(FAILURES_PER_PEER, FAILURE_WINDOW, MAX_ENTRIES),
            counters: TokenCounters::default(),
        }
    }

    /// Whether ServiceAccount `ns/name` may read Gateway `gw`'s snapshots: only the one its
    /// dataplane runs as (see [`portico_compile::Placement::account_for`]).
    pub fn admits(&self, ns: &str, name: &str, gw: &ObjectRef) -> bool {
        let (account_ns, account) = self.placement.account_for(&gw.namespace, &gw.name);
        ns == account_ns && name == account
    }

    /// The ServiceAccount `token` proves, as seen from `peer`.
    pub async fn verdict(&self, token: &str, peer: IpAddr) -> Verdict {
        let key = digest(token);
        let now = Instant::now();
        if let Some((v, until)) = self.answers.lock().get(&key)
            && *until > now
        {
            // A refused token asked again costs nothing and is not counted again: only
            // reviews count against a peer.
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return v.clone();
        }
        if self.over_budget(peer) {
            self.counters.throttled.fetch_add(1, Ordering::Relaxed);
            return Verdict::Throttled;
        }
        self.counters.reviews.fetch_add(1, Ordering::Relaxed);
        let verdict = self.review(token).await;
        let ttl = match &verdict {
            Verdict::Account(..) => accepted_ttl(token, unix_now()),
            Verdict::Unavailable => return verdict,
            _ => {
                self.failed(peer);
                REFUSED_CACHED
            }
        };
        let mut answers = self.answers.lock();
        if answers.len() >= MAX_ENTRIES {
            answers.retain(|_, (_, until)| *until > now);
            if answers.len() >= MAX_ENTRIES {
                answers.clear();
            }
        }
        answers.insert(key, (verdict.clone(), now + ttl));
        verdict
    }

    async fn review(&self, token: &str) -> Verdict {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![TOKEN_AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let status = match api.create(&PostParams::default(), &review).await {
            Ok(r) => r.status,
            Err(e) => {
                tracing::warn!(error = %e, "TokenReview failed");
                return Verdict::Unavailable;
            }
        };
        let Some(status) = status else {
            return Verdict::Refused;
        };
        if status.authenticated != Some(true) {
            return Verdict::Refused;
        }
        // The audiences the token is valid for, of those asked: ours must be among them (an
        // authenticator that ignores audiences answers none).
        let for_us = status
            .audiences
            .as_ref()
            .is_some_and(|a| a.iter().any(|a| a == TOKEN_AUDIENCE));
        if !for_us {
            tracing::warn!("refused a token that is not for the audience {TOKEN_AUDIENCE}");
            return Verdict::Refused;
        }
        match status
            .user
            .and_then(|u| u.username)
            .as_deref()
            .and_then(service_account)
        {
            Some((ns, name)) => Verdict::Account(ns, name),
            None => Verdict::Refused,
        }
    }

    fn over_budget(&self, peer: IpAddr) -> bool {
        self.failures.exhausted_at(&peer, Instant::now().into_std())
    }

    fn failed(&self, peer: IpAddr) {
        self.failures.record_at(peer, Instant::now().into_std());
    }
}

fn digest(token: &str) -> Digest {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long an accepted token may be trusted: until its `exp` (read from the payload the API
/// server just verified), at most [`MAX_CACHED`]; a minute if it says nothing.
fn accepted_ttl(token: &str, now: u64) -> Duration {
    let exp = token.split('.').nth(1).and_then(|p| {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice::<serde_json::Value>(&raw)
            .ok()?
            .get("exp")?
            .as_u64()
    });
    match exp {
        Some(exp) => Duration::from_secs(exp.saturating_sub(now)).min(MAX_CACHED),
        None => Duration::from_secs(60),
    }
}

/// `system:serviceaccount:<ns>:<name>` → (ns, name).
fn service_account(user: &str) -> Option<(String, String)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty()).then(|| (ns.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with(payload: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b("{\"alg\":\"RS256\"}"), b(payload))
    }

    #[test]
    fn accepted_tokens_are_trusted_until_they_expire_at_most_ten_minutes() {
        let now = 1_000_000;
        assert_eq!(
            accepted_ttl(&token_with(&format!("{{\"exp\":{}}}", now + 120)), now),
            Duration::from_secs(120)
        );
        assert_eq!(
            accepted_ttl(&token_with(&format!("{{\"exp\":{}}}", now + 7200)), now),
            MAX_CACHED
        );
        assert_eq!(
            accepted_ttl(&token_with(&format!("{{\"exp\":{}}}", now - 5)), now),
            Duration::ZERO
        );
        assert_eq!(accepted_ttl("not-a-jwt", now), Duration::from_secs(60));
        assert_eq!(
            accepted_ttl(&token_with("{}"), now),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn service_account_names() {
        assert_eq!(
            service_account("system:serviceaccount:ns:portico-gw"),
            Some(("ns".into(), "portico-gw".into()))
        );
        assert_eq!(service_account("system:serviceaccount:ns:"), None);
        assert_eq!(service_account("alice"), None);
    }
}
