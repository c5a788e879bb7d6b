//! A JSON Web Key Set fetched from a URL: fetched when first needed and every refresh period,
//! again (at most every [`MIN_REFETCH`]) when a token names a `kid` it does not have. A failed
//! fetch (error status, timeout, garbage, an empty set) keeps the keys already held.
//!
//! One cache per URL is shared by every policy and every snapshot that names it
//! ([`super::AuthShared`]), so a config change does not refetch or lose keys.

use super::jwt::KeySet;
use crate::upstream::HttpClient;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Unknown `kid`s trigger at most one fetch per this interval.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 1 << 20;

#[derive(Debug)]
pub struct JwksCache {
    uri: String,
    refresh: Duration,
    client: HttpClient,
    keys: ArcSwap<KeySet>,
    /// When the last fetch started; held during a fetch so that waiters see its result.
    fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl JwksCache {
    /// Creates the cache and, inside a tokio runtime, its refresher task (which ends when the
    /// last user drops the cache).
    pub fn new(uri: &str, refresh: Duration, client: HttpClient) -> Arc<Self> {
        let cache = Arc::new(Self {
            uri: uri.to_string(),
            refresh,
            client,
            keys: ArcSwap::from_pointee(KeySet::default()),
            fetch: tokio::sync::Mutex::new(None),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(refresher(Arc::downgrade(&cache)));
        }
        cache
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The keys to verify a token with `kid`, refetched first (rate-limited) when the set has
    /// no such key.
    pub async fn keys_for(&self, kid: Option<&str>) -> Arc<KeySet> {
        let keys = self.keys.load_full();
        let known = match kid {
            Some(k) => keys.has_kid(k),
            None => !keys.is_empty(),
        };
        if known {
            return keys;
        }
        let mut last = self.fetch.lock().await;
        if last.is_none_or(|t| t.elapsed() >= MIN_REFETCH) {
            *last = Some(Instant::now());
            self.fetch_logged().await;
        }
        drop(last);
        self.keys.load_full()
    }

    async fn fetch_logged(&self) -> bool {
        match self.fetch_once().await {
            Ok(n) => {
                tracing::debug!(uri = %self.uri, keys = n, "JWKS fetched");
                true
            }
            Err(e) => {
                let held = self.keys.load().len();
                tracing::warn!(uri = %self.uri, error = %e, keys_kept = held, "JWKS fetch failed; keeping the keys held");
                false
            }
        }
    }

    async fn fetch_once(&self) -> Result<usize, String> {
        let req = http::Request::get(&self.uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("bad JWKS URL: {e}"))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("status {}", resp.status()));
            }
            Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("reading the body: {e}"))
        };
        let body = tokio::time::timeout(FETCH_TIMEOUT, work)
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
        let (set, skipped) = KeySet::from_jwks(&body)?;
        if set.is_empty() {
            return Err(format!("no usable signing key ({skipped} skipped)"));
        }
        let n = set.len();
        self.keys.store(Arc::new(set));
        Ok(n)
    }
}

async fn refresher(cache: Weak<JwksCache>) {
    loop {
        let Some(c) = cache.upgrade() else { return };
        let ok = {
            let mut last = c.fetch.lock().await;
            *last = Some(Instant::now());
            c.fetch_logged().await
        };
        // After a failure, try again sooner than the refresh period (but not in a hot loop).
        let wait = if ok {
            c.refresh
        } else {
            c.refresh.min(MIN_REFETCH)
        };
        drop(c);
        tokio::time::sleep(wait).await;
    }
}
