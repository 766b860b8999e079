//! What admission checks, with the same parser and rules as the CNI plugin
//! (plexus-npwg, plexus-cni): a NAD's name and `spec.config`, a pod's selection and
//! default-network annotations, `namespaceIsolation`, the networks a pod names that do
//! not exist, networks on `hostNetwork` pods; and the resource requests a pod's
//! device-backed networks need (network-resources-injector's job). Pure: NADs are read
//! through [`NadSource`].

use plexus_npwg::nad::Nad;
use plexus_npwg::names::{is_dns1123_subdomain, isolation_allows, ObjectRef};
use plexus_npwg::selection::{parse_default_network, parse_networks, NetworkSelection};
use plexus_npwg::{DEFAULT_NETWORK_ANNOTATION, NETWORKS_ANNOTATION, RESOURCE_NAME_ANNOTATION};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// What to do about a pod that names a NAD that does not exist (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// Admit it with a warning (the NAD may be created before the pod starts).
    #[default]
    Warn,
    /// Refuse it.
    Deny,
}

/// The rules' settings: the keys of the node configuration (Multus's) that admission
/// enforces, plus admission's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Policy {
    /// `namespaceIsolation`.
    pub namespace_isolation: bool,
    /// `globalNamespaces` (comma-separated; `default` when empty).
    pub global_namespaces: String,
    /// `multusNamespace`: unqualified default-network names live there.
    pub multus_namespace: String,
    /// Pods naming a NAD that does not exist.
    pub missing_networks: Missing,
    /// A pod may use a NAD only when its creator or its service account may `use` it
    /// (RBAC, through SubjectAccessReviews).
    pub access_control: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            namespace_isolation: false,
            global_namespaces: String::new(),
            multus_namespace: "kube-system".into(),
            missing_networks: Missing::Warn,
            access_control: false,
        }
    }
}

impl Policy {
    /// The global namespaces, as the CNI plugin reads them.
    pub fn globals(&self) -> Vec<String> {
        plexus_npwg::names::global_namespaces(&self.global_namespaces)
    }
}

/// Where NADs come from (the API, or the files `kubectl plexus validate` was given).
pub trait NadSource {
    /// The NAD, `None` when it does not exist; an error when it cannot be known.
    fn nad(&self, namespace: &str, name: &str) -> Result<Option<Nad>, String>;
}

/// No NADs known (nothing is looked up).
pub struct NoNads;

impl NadSource for NoNads {
    fn nad(&self, _: &str, _: &str) -> Result<Option<Nad>, String> {
        Err("no NAD source".into())
    }
}

impl AccessSource for NoNads {
    fn may_use(&self, _: &Subject, _: &str, _: &str) -> Result<bool, String> {
        Err("no access source".into())
    }
}

/// Someone RBAC is asked about: a user and its groups.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject {
    /// The user name.
    pub user: String,
    /// Its groups.
    pub groups: Vec<String>,
}

impl Subject {
    /// The pod's service account (`spec.serviceAccountName`, else `default`), with the
    /// groups the API server gives service accounts.
    pub fn service_account_of(pod: &Value) -> Subject {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let sa = pod["spec"]["serviceAccountName"]
            .as_str()
            .or_else(|| pod["spec"]["serviceAccount"].as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        Subject {
            user: format!("system:serviceaccount:{ns}:{sa}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        }
    }
}

/// The verb a pod's use of a NAD is authorized as.
pub const USE_VERB: &str = "use";

/// Where RBAC's answers come from (SubjectAccessReviews).
pub trait AccessSource {
    /// May `who` use the NAD `namespace/name`? An error when it cannot be known.
    fn may_use(&self, who: &Subject, namespace: &str, name: &str) -> Result<bool, String>;
}

/// The networks whose use needs authorization: those the pod's annotations name.
pub fn access_checks(obj: &Value, policy: &Policy) -> Vec<ObjectRef> {
    let mut v: Vec<ObjectRef> = pod_networks(obj, policy)
        .map(|n| n.into_iter().map(|(_, s)| s.network).collect())
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

/// Access control (opt in): every NAD the pod names must be usable by its creator or
/// by its service account.
pub fn review_access(
    obj: &Value,
    policy: &Policy,
    requester: &Subject,
    access: &dyn AccessSource,
) -> Result<Verdict, String> {
    let sa = Subject::service_account_of(obj);
    for nad in access_checks(obj, policy) {
        let ok = access.may_use(requester, &nad.namespace, &nad.name)?
            || access.may_use(&sa, &nad.namespace, &nad.name)?;
        if !ok {
            return Ok(Verdict::deny(
                format!(
                    "pod \"{}\": neither {} nor the pod's service account {} may use network \"{nad}\": grant the verb \"{USE_VERB}\" on networkattachmentdefinitions (group k8s.cni.cncf.io, resourceNames [{}]) in namespace {} with a Role and a RoleBinding",
                    key(obj),
                    requester.user,
                    sa.user,
                    nad.name,
                    nad.namespace
                ),
                vec![],
            ));
        }
    }
    Ok(Verdict::allow(vec![]))
}

/// Admission's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// Admitted.
    pub allowed: bool,
    /// Why not (naming the field and the object).
    pub message: String,
    /// What is odd but admitted.
    pub warnings: Vec<String>,
    /// JSONPatch operations (mutation).
    pub patch: Vec<Value>,
}

impl Verdict {
    fn allow(warnings: Vec<String>) -> Verdict {
        Verdict {
            allowed: true,
            warnings,
            ..Default::default()
        }
    }

    fn deny(message: String, warnings: Vec<String>) -> Verdict {
        Verdict {
            allowed: false,
            message,
            warnings,
            patch: vec![],
        }
    }
}

fn key(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"]
            .as_str()
            .or_else(|| obj["metadata"]["generateName"].as_str())
            .unwrap_or_default()
    )
}

/// A NetworkAttachmentDefinition, as the CNI plugin will load it.
pub fn review_nad(obj: &Value) -> Verdict {
    let what = format!("NetworkAttachmentDefinition \"{}\"", key(obj));
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if !is_dns1123_subdomain(name) {
        return Verdict::deny(
            format!("{what}: metadata.name {name:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.'; NPWG §3.3)"),
            vec![],
        );
    }
    let nad = match Nad::from_object(obj) {
        Ok(n) => n,
        Err(e) => return Verdict::deny(e.msg, vec![]),
    };
    let mut warnings = Vec::new();
    if let Some(r) = obj["metadata"]["annotations"][RESOURCE_NAME_ANNOTATION].as_str() {
        if r.trim().is_empty() {
            warnings.push(format!("{what}: annotation {RESOURCE_NAME_ANNOTATION:?} is empty: the network gets no device"));
        }
    }
    match nad.network_config() {
        Err(e) => Verdict::deny(e.msg, warnings),
        Ok(None) => {
            warnings.push(format!("{what}: no spec.config: each node looks the network up on its own disk by the name {name:?} (NPWG §3.4.1), and a pod using it fails where it is missing"));
            Verdict::allow(warnings)
        }
        Ok(Some(list)) => {
            if list.name != name {
                warnings.push(format!("{what}: spec.config names the network {:?}, not {name:?}: NPWG §3.4.3 recommends one name; delegates and their caches use the config's", list.name));
            }
            Verdict::allow(warnings)
        }
    }
}

/// The pod's networks: the selection and the default-network override, parsed; a
/// denial naming the annotation and the element when they are invalid.
pub fn pod_networks(
    obj: &Value,
    policy: &Policy,
) -> Result<Vec<(String, NetworkSelection)>, String> {
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
    let what = format!("pod \"{}\"", key(obj));
    let ann = &obj["metadata"]["annotations"];
    let mut out = Vec::new();
    if let Some(v) = ann[NETWORKS_ANNOTATION].as_str() {
        let sel = parse_networks(v, ns).map_err(|e| {
            format!(
                "{what}: {}",
                e.describe(&format!("annotation {NETWORKS_ANNOTATION:?}"))
            )
        })?;
        out.extend(
            sel.into_iter()
                .map(|s| (NETWORKS_ANNOTATION.to_string(), s)),
        );
    }
    if let Some(v) = ann[DEFAULT_NETWORK_ANNOTATION]
        .as_str()
        .filter(|v| !v.trim().is_empty())
    {
        let s = parse_default_network(v, &policy.multus_namespace).map_err(|e| {
            format!(
                "{what}: {}",
                e.describe(&format!("annotation {DEFAULT_NETWORK_ANNOTATION:?}"))
            )
        })?;
        out.push((DEFAULT_NETWORK_ANNOTATION.to_string(), s));
    }
    Ok(out)
}

/// True when an update (`old` given) leaves the pod's network annotations as they were.
pub fn networks_unchanged(obj: &Value, old: Option<&Value>) -> bool {
    let ann = |o: &Value, k: &str| o["metadata"]["annotations"][k].as_str().map(str::to_string);
    old.is_some_and(|old| {
        [NETWORKS_ANNOTATION, DEFAULT_NETWORK_ANNOTATION]
            .iter()
            .all(|k| ann(obj, k) == ann(old, k))
    })
}

/// A pod (created, or its selection edited: hot-plug acts on that), with the rules the
/// CNI plugin applies when it is set up.
pub fn review_pod(
    obj: &Value,
    old: Option<&Value>,
    policy: &Policy,
    nads: &dyn NadSource,
) -> Verdict {
    if networks_unchanged(obj, old) {
        return Verdict::allow(vec![]);
    }
    let what = format!("pod \"{}\"", key(obj));
    let pod_ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
    let nets = match pod_networks(obj, policy) {
        Ok(n) => n,
        Err(m) => return Verdict::deny(m, vec![]),
    };
    if nets.is_empty() {
        return Verdict::allow(vec![]);
    }
    if obj["spec"]["hostNetwork"] == true {
        return Verdict::deny(
            format!("{what}: spec.hostNetwork is true: a pod on the host's network has no network namespace of its own and gets none of the networks its annotations name"),
            vec![],
        );
    }
    let mut warnings = Vec::new();
    let globals = policy.globals();
    for (annotation, sel) in &nets {
        let target = &sel.network.namespace;
        // The node's own networks are the administrator's; a pod's override is not.
        if !isolation_allows(policy.namespace_isolation, pod_ns, target, &globals) {
            return Verdict::deny(
                format!("{what}: namespace isolation enabled, annotation {annotation:?} violates permission: pod is in namespace {pod_ns} but refers to target namespace {target} (network \"{}\")", sel.network),
                warnings,
            );
        }
        match nads.nad(&sel.network.namespace, &sel.network.name) {
            Ok(Some(_)) => {}
            Ok(None) => {
                let m = format!("{what}: annotation {annotation:?} names network \"{}\", but no NetworkAttachmentDefinition {} exists in namespace {}", sel.network, sel.network.name, sel.network.namespace);
                match policy.missing_networks {
                    Missing::Deny => return Verdict::deny(m, warnings),
                    Missing::Warn => {
                        warnings.push(format!("{m}: the pod will not start until it does"))
                    }
                }
            }
            Err(e) => warnings.push(format!(
                "{what}: network \"{}\" could not be checked: {e}",
                sel.network
            )),
        }
    }
    Verdict::allow(warnings)
}

/// JSON Pointer escaping of one path segment.
fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// network-resources-injector's job: for each device resource the pod's selected NADs
/// name, one unit per reference in the requests and limits of the pod's first
/// container. What the user set is never changed.
pub fn inject_resources(obj: &Value, policy: &Policy, nads: &dyn NadSource) -> Vec<Value> {
    let Ok(nets) = pod_networks(obj, policy) else {
        return vec![];
    };
    let mut wanted: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen: BTreeMap<ObjectRef, Option<String>> = BTreeMap::new();
    for (annotation, sel) in nets {
        if annotation != NETWORKS_ANNOTATION {
            continue;
        }
        let res = seen
            .entry(sel.network.clone())
            .or_insert_with(|| {
                nads.nad(&sel.network.namespace, &sel.network.name)
                    .ok()
                    .flatten()
                    .and_then(|n| n.resource_name)
                    .filter(|r| !r.trim().is_empty())
            })
            .clone();
        if let Some(r) = res {
            *wanted.entry(r).or_default() += 1;
        }
    }
    let Some(container) = obj["spec"]["containers"].get(0) else {
        return vec![];
    };
    let mut ops = Vec::new();
    let resources = &container["resources"];
    if wanted.is_empty() {
        return ops;
    }
    if !resources.is_object() {
        ops.push(json!({"op": "add", "path": "/spec/containers/0/resources", "value": {}}));
    }
    for part in ["requests", "limits"] {
        if !resources[part].is_object() {
            ops.push(json!({"op": "add", "path": format!("/spec/containers/0/resources/{part}"), "value": {}}));
        }
        for (res, n) in &wanted {
            if resources[part].get(res).is_none() {
                ops.push(json!({"op": "add",
                    "path": format!("/spec/containers/0/resources/{part}/{}", escape(res)),
                    "value": n.to_string()}));
            }
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Nads(HashMap<(String, String), Nad>);

    impl NadSource for Nads {
        fn nad(&self, ns: &str, name: &str) -> Result<Option<Nad>, String> {
            Ok(self.0.get(&(ns.to_string(), name.to_string())).cloned())
        }
    }

    fn nads(list: &[(&str, &str, Option<&str>)]) -> Nads {
        let mut m = HashMap::new();
        for (ns, name, res) in list {
            let mut o = json!({"metadata": {"name": name, "namespace": ns, "annotations": {}},
                               "spec": {"config": "{\"cniVersion\":\"1.0.0\",\"type\":\"macvlan\"}"}});
            if let Some(r) = res {
                o["metadata"]["annotations"][RESOURCE_NAME_ANNOTATION] = json!(r);
            }
            m.insert(
                (ns.to_string(), name.to_string()),
                Nad::from_object(&o).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        Nads(m)
    }

    fn pod(ns: &str, networks: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": ns, "annotations": {NETWORKS_ANNOTATION: networks}},
               "spec": {"containers": [{"name": "app"}]}})
    }

    #[test]
    fn nads_are_checked_as_the_plugin_loads_them() {
        let ok = json!({"metadata": {"name": "mv", "namespace": "ns"},
                        "spec": {"config": "{\"cniVersion\":\"1.0.0\",\"type\":\"macvlan\"}"}});
        assert!(review_nad(&ok).allowed);
        let named = json!({"metadata": {"name": "mv", "namespace": "ns"},
                           "spec": {"config": "{\"cniVersion\":\"1.0.0\",\"name\":\"other\",\"type\":\"macvlan\"}"}});
        let v = review_nad(&named);
        assert!(v.allowed && v.warnings[0].contains("\"other\""), "{v:?}");
        for (obj, needle) in [
            (
                json!({"metadata": {"name": "Bad_Name", "namespace": "ns"}}),
                "metadata.name",
            ),
            (
                json!({"metadata": {"name": "mv", "namespace": "ns"}, "spec": {"config": "{nope"}}),
                "spec.config",
            ),
            (
                json!({"metadata": {"name": "mv", "namespace": "ns"}, "spec": {"config": "{\"cniVersion\":\"1.0.0\",\"plugins\":[{}]}"}}),
                "\"type\"",
            ),
            (
                json!({"metadata": {"name": "mv", "namespace": "ns"}, "spec": {"config": "{\"cniVersion\":\"9.9.9\",\"type\":\"x\"}"}}),
                "9.9.9",
            ),
            (
                json!({"metadata": {"name": "mv", "namespace": "ns"}, "spec": {"config": 3}}),
                "spec.config",
            ),
        ] {
            let v = review_nad(&obj);
            assert!(!v.allowed && v.message.contains(needle), "{needle}: {v:?}");
        }
        let v = review_nad(&json!({"metadata": {"name": "disk", "namespace": "ns"}}));
        assert!(
            v.allowed && v.warnings[0].contains("no spec.config"),
            "{v:?}"
        );
    }

    #[test]
    fn pods_selection_isolation_missing_and_host_network() {
        let n = nads(&[
            ("ns", "a", None),
            ("default", "g", None),
            ("other", "o", None),
        ]);
        let mut p = Policy::default();
        assert!(review_pod(&pod("ns", "a,default/g,other/o"), None, &p, &n).allowed);
        let v = review_pod(
            &pod("ns", "[{\"name\": \"a\", \"ips\": [\"300.1.1.1\"]}]"),
            None,
            &p,
            &n,
        );
        assert!(
            !v.allowed
                && v.message
                    .contains("annotation \"k8s.v1.cni.cncf.io/networks\"")
                && v.message.contains("ips"),
            "{v:?}"
        );
        p.namespace_isolation = true;
        let v = review_pod(&pod("ns", "a,other/o"), None, &p, &n);
        assert!(
            !v.allowed && v.message.contains("target namespace other"),
            "{v:?}"
        );
        assert!(review_pod(&pod("ns", "a,default/g"), None, &p, &n).allowed);
        let v = review_pod(&pod("ns", "missing"), None, &p, &n);
        assert!(v.allowed && v.warnings[0].contains("missing"), "{v:?}");
        p.missing_networks = Missing::Deny;
        assert!(!review_pod(&pod("ns", "missing"), None, &p, &n).allowed);
        let mut hn = pod("ns", "a");
        hn["spec"]["hostNetwork"] = json!(true);
        let v = review_pod(&hn, None, &p, &n);
        assert!(
            !v.allowed && v.message.contains("spec.hostNetwork"),
            "{v:?}"
        );
        // An update that does not touch the selection is not checked again.
        let old = pod("ns", "other/o");
        assert!(review_pod(&old, Some(&old), &p, &n).allowed);
    }

    #[test]
    fn device_resources_are_requested_once_per_reference_never_overriding() {
        let n = nads(&[("ns", "vf", Some("vendor.example/vf")), ("ns", "a", None)]);
        let p = Policy::default();
        let ops = inject_resources(&pod("ns", "vf,a,vf"), &p, &n);
        assert!(
            ops.iter().any(|o| o["path"]
                == "/spec/containers/0/resources/requests/vendor.example~1vf"
                && o["value"] == "2"),
            "{ops:?}"
        );
        assert!(
            ops.iter()
                .any(|o| o["path"] == "/spec/containers/0/resources/limits/vendor.example~1vf"),
            "{ops:?}"
        );
        let mut set = pod("ns", "vf");
        set["spec"]["containers"][0]["resources"] =
            json!({"requests": {"vendor.example/vf": "3"}, "limits": {"vendor.example/vf": "3"}});
        assert!(inject_resources(&set, &p, &n).is_empty());
        assert!(inject_resources(&pod("ns", "a"), &p, &n).is_empty());
    }
}
