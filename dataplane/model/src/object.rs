//! How the snapshot names Kubernetes objects. A leaf: every other module names objects with
//! it, and it imports none of them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The namespaced name of a Kubernetes object.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Never empty once compile made it (`default` when the object named none).
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl ObjectRef {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
