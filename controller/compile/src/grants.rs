//! ReferenceGrants: whether an object in one namespace may refer to an object in another.

use crate::refs::namespace_of;
use portico_crds::gateway_api::referencegrants::ReferenceGrant;
use std::collections::BTreeMap;

/// The ReferenceGrants of every namespace.
pub(crate) struct ReferenceGrants<'a>(BTreeMap<String, Vec<&'a ReferenceGrant>>);

/// One side of a reference: an API group ("" for core) and a kind.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupKind<'a> {
    pub(crate) group: &'a str,
    pub(crate) kind: &'a str,
}

impl<'a> ReferenceGrants<'a> {
    pub(crate) fn new(grants: &'a [ReferenceGrant]) -> Self {
        let mut map: BTreeMap<String, Vec<&ReferenceGrant>> = BTreeMap::new();
        for g in grants {
            map.entry(namespace_of(&g.metadata)).or_default().push(g);
        }
        Self(map)
    }

    /// Whether a `from` object in `from_ns` may refer to the `to` object `to_ns/to_name`. A
    /// reference within one namespace needs no grant.
    pub(crate) fn allows(
        &self,
        from: GroupKind<'_>,
        from_ns: &str,
        to: GroupKind<'_>,
        to_ns: &str,
        to_name: &str,
    ) -> bool {
        if from_ns == to_ns {
            return true;
        }
        let core = |g: &str| g.is_empty() || g == "core";
        let same_group = |a: &str, b: &str| a == b || (core(a) && core(b));
        self.0.get(to_ns).into_iter().flatten().any(|g| {
            let from_ok = g.spec.from.iter().any(|f| {
                same_group(&f.group, from.group) && f.kind == from.kind && f.namespace == from_ns
            });
            let to_ok = g.spec.to.iter().any(|t| {
                same_group(&t.group, to.group)
                    && t.kind == to.kind
                    && t.name.as_deref().is_none_or(|n| n == to_name)
            });
            from_ok && to_ok
        })
    }
}
