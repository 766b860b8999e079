//! Kubernetes names as NPWG uses them.

/// Longest DNS-1123 label.
pub const MAX_LABEL: usize = 63;

/// True for a DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 bytes.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// True for a DNS-1123 subdomain (object names such as NADs): labels joined by dots, at most 253 bytes.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A reference to a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ObjectRef {
        ObjectRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `globalNamespaces` as Multus reads it: comma-separated, blanks ignored, `default`
/// when none is given.
pub fn global_namespaces(value: &str) -> Vec<String> {
    let v: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if v.is_empty() {
        vec!["default".into()]
    } else {
        v
    }
}

/// `namespaceIsolation` (NPWG §7.4): whether a pod in `pod_namespace` may use a network
/// of `target_namespace`. With isolation on, only its own namespace and the global ones
/// (`globalNamespaces`) are allowed. The CNI plugin and the admission webhook both ask
/// this, so they give the same verdicts.
pub fn isolation_allows(
    enabled: bool,
    pod_namespace: &str,
    target_namespace: &str,
    global_namespaces: &[String],
) -> bool {
    !enabled
        || target_namespace == pod_namespace
        || global_namespaces.iter().any(|g| g == target_namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "net-a", "0abc", "a1"] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "..",
            "a/b",
            &"x".repeat(64),
        ] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
        assert!(is_dns1123_subdomain("macvlan.conf"));
        let g = vec!["default".to_string()];
        assert!(isolation_allows(false, "a", "b", &g));
        assert!(isolation_allows(true, "a", "a", &g));
        assert!(isolation_allows(true, "a", "default", &g));
        assert!(!isolation_allows(true, "a", "b", &g));
        assert!(!is_dns1123_subdomain("a..b"));
    }
}
