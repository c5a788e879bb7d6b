//! The policies a request passes on its way to a backend, as one [`Chain`] per rule and
//! parent (listener or Gateway) it is reached through. The only module that names every
//! policy kind: a new kind is a [`Step`] variant, one arm in each `match` here, and its place
//! in [`Chain::new`]'s order.
//!
//! A step lets the request on, edits it (identity headers), adds headers for the response to
//! the [`RequestCtx`], or refuses it with a [`ProxyError`] that carries its whole answer
//! ([`crate::body::LocalReply`]).

use crate::auth::AuthEngine;
use crate::cache::step::{CacheShared, RuleCache};
use crate::errors::ProxyError;
use crate::ratelimit::RateLimitEngine;
use crate::request::RequestCtx;
use http::Request;
use std::sync::Arc;

/// One policy, ready to enforce.
#[derive(Debug)]
pub enum Step {
    Auth(Arc<AuthEngine>),
    RateLimit(Arc<RateLimitEngine>),
}

impl Step {
    async fn on_request<B>(
        &self,
        req: &mut Request<B>,
        cx: &mut RequestCtx,
    ) -> Result<(), ProxyError> {
        match self {
            Step::Auth(engine) => {
                cx.identity = engine.check(req, cx).await?;
                Ok(())
            }
            Step::RateLimit(engine) => {
                if let Some(h) = engine.check(req, cx).await.map_err(|r| r.into_error())? {
                    h.apply(|name, value| cx.response_headers.insert(name, value));
                }
                Ok(())
            }
        }
    }
}

/// The steps of one rule as reached through one parent, in order: authentication first (a
/// rate limit may be keyed by the consumer it found), then rate limits; and the cache, which
/// wraps the upstream rather than running before it (the proxy asks for it by
/// [`Chain::cache`]): a cached answer is only for requests the steps before it let through.
#[derive(Debug, Default)]
pub struct Chain {
    steps: Box<[Step]>,
    cache: Option<RuleCache>,
    /// Where the rule's unsafe requests invalidate what they change (RFC 9111 §4.4, also
    /// a POST through a rule of its own making the GET another rule cached stale).
    invalidates: Option<(Arc<CacheShared>, Arc<[String]>)>,
}

impl Chain {
    /// The rule's policy of each kind, else its parent's (the most specific applies whole).
    pub fn new(
        auth: Option<Arc<AuthEngine>>,
        rate_limit: Option<Arc<RateLimitEngine>>,
        cache: Option<RuleCache>,
    ) -> Self {
        let steps: Vec<Step> = [auth.map(Step::Auth), rate_limit.map(Step::RateLimit)]
            .into_iter()
            .flatten()
            .collect();
        Chain {
            steps: steps.into_boxed_slice(),
            cache,
            invalidates: None,
        }
    }

    /// This chain, invalidating the entries of the routes `reach` marks (see
    /// [`crate::cache::step::route_mark`]) in `shared` after its unsafe requests.
    pub fn invalidating(mut self, shared: &Arc<CacheShared>, reach: &Arc<[String]>) -> Self {
        if !reach.is_empty() {
            self.invalidates = Some((shared.clone(), reach.clone()));
        }
        self
    }

    /// Where the rule's unsafe requests invalidate.
    pub fn invalidates(&self) -> Option<(&CacheShared, &Arc<[String]>)> {
        self.invalidates.as_ref().map(|(s, r)| (&**s, r))
    }

    /// The cache of the rule, if a CachePolicy applies.
    pub fn cache(&self) -> Option<&RuleCache> {
        self.cache.as_ref()
    }

    /// Runs every step on the request, in order, until one refuses it.
    /// Whether there is anything to run (most rules have no policy).
    pub fn has_steps(&self) -> bool {
        !self.steps.is_empty()
    }

    pub async fn on_request<B>(
        &self,
        req: &mut Request<B>,
        cx: &mut RequestCtx,
    ) -> Result<(), ProxyError> {
        for step in &self.steps {
            step.on_request(req, cx).await?;
        }
        Ok(())
    }
}
