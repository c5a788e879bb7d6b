//! The route table of one listening socket, built once per snapshot and shared read-only.
//!
//! A request is matched in two steps, as the Gateway API orders it:
//! 1. the most specific listener hostname on the socket (exact, then the longest wildcard,
//!    then a listener without hostname); requests match at most one listener;
//! 2. within that listener, the route hostnames from most to least specific, and for each the
//!    path table: exact paths, then regular expressions, then path prefixes from the longest;
//!    within one path bucket, candidates are pre-sorted by method, number of header matches,
//!    number of query matches, then route age/name, rule order and match order.
//!
//! Lookups are hash probes per hostname label and per path segment; no scan over all routes.
//! Only regex candidates of the selected host are tried one by one.

use crate::policy::Chain;
use crate::rule::CompiledRule;
use http::{HeaderMap, Method};
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;

/// Exact, wildcard-suffix and catch-all entries keyed by hostname.
#[derive(Debug)]
pub struct HostMap<T> {
    exact: HashMap<Box<str>, T>,
    /// Keyed by the suffix with its leading dot: `*.example.com` → `.example.com`.
    wildcard: HashMap<Box<str>, T>,
    any: Option<T>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: None,
        }
    }
}

impl<T: Default> HostMap<T> {
    /// The entry for a hostname pattern (`None` for any host), created if absent.
    pub fn entry(&mut self, pattern: Option<&str>) -> &mut T {
        match pattern {
            None => self.any.get_or_insert_with(T::default),
            Some(p) => match p.strip_prefix('*') {
                Some(suffix) => self.wildcard.entry(suffix.into()).or_default(),
                None => self.exact.entry(p.into()).or_default(),
            },
        }
    }
}

impl<T> HostMap<T> {
    /// Entries that cover `host`, most specific first.
    pub fn lookup<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a T> + 'a {
        let exact = self.exact.get(host);
        let wildcards = host
            .char_indices()
            .filter(|&(i, c)| c == '.' && i > 0)
            .filter_map(move |(i, _)| self.wildcard.get(&host[i..]));
        exact.into_iter().chain(wildcards).chain(self.any.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_none()
    }

    /// The entry for any host, if there is one.
    pub fn any(&self) -> Option<&T> {
        self.any.as_ref()
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain(self.any.iter())
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.exact
            .values_mut()
            .chain(self.wildcard.values_mut())
            .chain(self.any.iter_mut())
    }
}

/// Method, header and query conditions of one match, checked after the path selected it.
#[derive(Debug)]
pub struct Conditions {
    pub method: Option<Method>,
    pub headers: Vec<(http::HeaderName, ValueMatch)>,
    pub query: Vec<(Box<str>, ValueMatch)>,
}

#[derive(Debug)]
pub enum ValueMatch {
    Exact(Box<str>),
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => **v == *value,
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

impl Conditions {
    fn matches(&self, method: &Method, headers: &HeaderMap, query: Option<&str>) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(name, want)| {
            headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| want.matches(v)))
        });
        headers_ok
            && self.query.iter().all(|(name, want)| {
                query
                    .and_then(|q| crate::util::query_param(q, name))
                    .is_some_and(|v| want.matches(&v))
            })
    }

    /// Specificity key: more conditions sort first.
    fn rank(&self) -> (bool, usize, usize) {
        (
            self.method.is_none(),
            usize::MAX - self.headers.len(),
            usize::MAX - self.query.len(),
        )
    }
}

/// One way to reach a rule: its conditions and where it stands among the routes.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub conditions: Arc<Conditions>,
    pub rule: Arc<CompiledRule>,
    /// Route precedence index, rule index, match index.
    pub order: (usize, usize, usize),
    /// For a PathPrefix match, the prefix (for ReplacePrefixMatch).
    pub prefix: Option<Arc<str>>,
    /// The policies of the rule as reached through this candidate's parent (listener or
    /// Gateway): opaque here.
    pub chain: Arc<Chain>,
    /// The counters of the route as reached through this candidate's listener.
    pub metrics: Arc<crate::metrics::RouteMetrics>,
}

impl Candidate {
    fn sort_key(&self) -> ((bool, usize, usize), (usize, usize, usize)) {
        (self.conditions.rank(), self.order)
    }
}

fn sort(candidates: &mut [Candidate]) {
    candidates.sort_by_key(Candidate::sort_key);
}

#[derive(Debug, Default)]
struct PrefixNode {
    children: HashMap<Box<str>, PrefixNode>,
    candidates: Vec<Candidate>,
}

/// Paths of one hostname.
#[derive(Debug, Default)]
pub struct PathTable {
    exact: HashMap<Box<str>, Vec<Candidate>>,
    regex: Vec<(Regex, Candidate)>,
    prefix: PrefixNode,
}

impl PathTable {
    pub fn add_exact(&mut self, path: &str, c: Candidate) {
        self.exact.entry(path.into()).or_default().push(c);
    }

    pub fn add_regex(&mut self, regex: Regex, c: Candidate) {
        self.regex.push((regex, c));
    }

    /// `prefix` is normalised: `/` or a path without a trailing slash.
    pub fn add_prefix(&mut self, prefix: &str, c: Candidate) {
        let mut node = &mut self.prefix;
        for seg in prefix.split('/').filter(|s| !s.is_empty()) {
            node = node.children.entry(seg.into()).or_default();
        }
        node.candidates.push(c);
    }

    /// Puts every bucket in precedence order. Called once after building.
    pub fn finish(&mut self) {
        self.exact.values_mut().for_each(|v| sort(v));
        self.regex.sort_by_key(|(_, c)| c.sort_key());
        fn walk(n: &mut PrefixNode) {
            sort(&mut n.candidates);
            n.children.values_mut().for_each(walk);
        }
        walk(&mut self.prefix);
    }

    fn find(
        &self,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Option<&Candidate> {
        let ok = |c: &&Candidate| c.conditions.matches(method, headers, query);
        if let Some(c) = self.exact.get(path).and_then(|v| v.iter().find(ok)) {
            return Some(c);
        }
        if let Some((_, c)) = self.regex.iter().find(|(r, c)| r.is_match(path) && ok(&c)) {
            return Some(c);
        }
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        find_prefix(&self.prefix, &mut segments, &ok)
    }
}

/// Deepest (longest) prefix first. Recursion depth is bounded by the deepest configured
/// prefix, not by the request path.
fn find_prefix<'a, 'p>(
    node: &'a PrefixNode,
    segments: &mut impl Iterator<Item = &'p str>,
    ok: &impl Fn(&&'a Candidate) -> bool,
) -> Option<&'a Candidate> {
    if let Some(child) = segments.next().and_then(|seg| node.children.get(seg))
        && let Some(c) = find_prefix(child, segments, ok)
    {
        return Some(c);
    }
    node.candidates.iter().find(ok)
}

/// Routes of one listener, by route hostname.
#[derive(Debug, Default)]
pub struct ListenerRoutes {
    pub hosts: HostMap<PathTable>,
}

/// Everything bound to one socket: its listeners by hostname.
#[derive(Debug, Default)]
pub struct SocketRouter {
    pub listeners: HostMap<ListenerRoutes>,
}

/// What the router chose.
#[derive(Debug)]
pub struct Matched<'a> {
    pub candidate: &'a Candidate,
}

impl SocketRouter {
    /// Puts every path table in precedence order; called once after building.
    pub fn finish(&mut self) {
        for listener in self.listeners.values_mut() {
            listener.hosts.values_mut().for_each(PathTable::finish);
        }
    }

    /// Whether two hosts (lower-case, without port) select the same listener: a TLS server
    /// name and the Host of a request on that connection must.
    pub fn same_listener(&self, a: &str, b: &str) -> bool {
        if a.eq_ignore_ascii_case(b) {
            return true;
        }
        match (
            self.listeners.lookup(a).next(),
            self.listeners.lookup(b).next(),
        ) {
            (Some(x), Some(y)) => std::ptr::eq(x, y),
            (None, None) => true,
            _ => false,
        }
    }

    /// `host` must already be lower-case without port.
    pub fn route<'a>(
        &'a self,
        host: &'a str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Option<Matched<'a>> {
        let listener = self.listeners.lookup(host).next()?;
        listener
            .hosts
            .lookup(host)
            .find_map(|table| table.find(path, method, headers, query))
            .map(|candidate| Matched { candidate })
    }
}

#[cfg(test)]
mod tests;
