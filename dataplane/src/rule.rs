//! A route rule ready to serve: header operations parsed into `http` types, backends with
//! cumulative weights pointing at shared endpoint pools, and the rule's metric handles.

use crate::cors::CorsPolicy;
use crate::mirror::MirrorTo;
use crate::upstream::BackendPool;
use crate::upstream::session::Sealer;
use http::{HeaderMap, HeaderName, HeaderValue};
use portico_model::backend::SessionPersistence;
use portico_model::{HeaderModifier, Redirect, Timeouts, UrlRewrite};
use std::sync::Arc;
use std::time::Duration;

/// Header operations with names and values validated once, at build time.
#[derive(Debug, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Fails on a name or value `http` rejects (compile validated them, so this is a guard
    /// against a snapshot from elsewhere).
    pub fn new(m: &HeaderModifier) -> Result<Self, String> {
        let pair = |h: &portico_model::Header| -> Result<(HeaderName, HeaderValue), String> {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|e| format!("header {:?}: {e}", h.name))?;
            let value =
                HeaderValue::from_str(&h.value).map_err(|e| format!("header {:?}: {e}", h.name))?;
            Ok((name, value))
        };
        Ok(Self {
            set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: m
                .remove
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("header {n:?}: {e}"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// Set replaces, add appends another value, remove deletes every value.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

/// Filters of a rule or a backendRef. Most rules have none, so rules keep them boxed and
/// optional: a rule without filters costs one pointer for them.
#[derive(Debug, Default)]
pub struct RuleFilters {
    pub request_headers: Option<HeaderOps>,
    pub response_headers: Option<HeaderOps>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<UrlRewrite>,
    pub cors: Option<Arc<CorsPolicy>>,
    /// `RequestMirror` filters.
    pub mirrors: Vec<MirrorTo>,
}

static NO_FILTERS: RuleFilters = RuleFilters {
    request_headers: None,
    response_headers: None,
    redirect: None,
    rewrite: None,
    cors: None,
    mirrors: Vec::new(),
};

impl RuleFilters {
    /// `None` when there is nothing to do.
    pub fn boxed(self) -> Option<Box<Self>> {
        let empty = self.request_headers.is_none()
            && self.response_headers.is_none()
            && self.redirect.is_none()
            && self.rewrite.is_none()
            && self.cors.is_none()
            && self.mirrors.is_empty();
        (!empty).then(|| Box::new(self))
    }
}

fn or_none(f: &Option<Box<RuleFilters>>) -> &RuleFilters {
    f.as_deref().unwrap_or(&NO_FILTERS)
}

#[derive(Debug)]
pub enum Target {
    Pool {
        pool: Arc<BackendPool>,
        /// Header modifiers of the backendRef.
        filters: Option<Box<RuleFilters>>,
    },
    /// A backendRef compile could not resolve: its share of traffic gets 500.
    Unresolved,
}

impl Target {
    pub fn filters(&self) -> &RuleFilters {
        match self {
            Target::Pool { filters, .. } => or_none(filters),
            Target::Unresolved => &NO_FILTERS,
        }
    }
}

#[derive(Debug)]
pub struct WeightedTarget {
    /// Cumulative weight up to and including this target.
    pub upto: u32,
    pub target: Target,
}

#[derive(Debug)]
pub struct CompiledRule {
    /// `namespace/name` of the HTTPRoute, for metrics and logs; shared by its rules.
    pub route: Arc<str>,
    pub filters: Option<Box<RuleFilters>>,
    /// Zero-weight targets are left out.
    pub targets: Vec<WeightedTarget>,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    /// HTTPRoute `retry`.
    pub retry: Option<Box<portico_model::RouteRetry>>,
    /// Session persistence, when the rule or one of its backends' policies asks for it.
    pub session: Option<Box<RuleSession>>,
}

/// What a rule needs to keep sessions.
#[derive(Debug)]
pub struct RuleSession {
    /// The rule's own `sessionPersistence`, which pins the backend too; `None`: the one of
    /// the backend's policy, if any.
    pub own: Option<SessionPersistence>,
    /// The Gateway's.
    pub sealer: Arc<Sealer>,
    /// Binds tokens to this rule: sessions are never shared between rules.
    pub scope: Box<str>,
    /// [`crate::upstream::session::scope_tag`] of the scope: a policy's cookie name ends in
    /// it.
    pub tag: Box<str>,
}

impl CompiledRule {
    pub fn filters(&self) -> &RuleFilters {
        or_none(&self.filters)
    }

    pub fn timeouts(t: &Timeouts) -> (Option<Duration>, Option<Duration>) {
        (
            t.request_ms.map(Duration::from_millis),
            t.backend_request_ms.map(Duration::from_millis),
        )
    }

    /// The target of backend `tag` ([`crate::upstream::session::backend_tag`]), if it is one
    /// of this rule's.
    pub fn target_tagged(&self, tag: u64) -> Option<&Target> {
        self.targets
            .iter()
            .map(|t| &t.target)
            .find(|t| matches!(t, Target::Pool { pool, .. } if pool.tag == tag))
    }

    /// Weighted random choice; `None` when the rule has no backend with weight.
    pub fn pick(&self) -> Option<&Target> {
        let total = self.targets.last()?.upto;
        if self.targets.len() == 1 {
            return Some(&self.targets[0].target);
        }
        let r = fastrand::u32(0..total);
        self.targets.iter().find(|t| r < t.upto).map(|t| &t.target)
    }
}
