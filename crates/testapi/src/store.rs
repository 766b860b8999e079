//! The objects, their resourceVersions and the watch history.

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::broadcast;

/// The resources served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// core/v1 pods.
    Pods,
    /// core/v1 events.
    Events,
    /// k8s.cni.cncf.io/v1 network-attachment-definitions.
    Nads,
    /// resource.k8s.io/v1 resourceslices (cluster-scoped): what DRA drivers publish.
    ResourceSlices,
    /// core/v1 namespaces (cluster-scoped).
    Namespaces,
    /// rbac.authorization.k8s.io/v1 roles.
    Roles,
    /// rbac.authorization.k8s.io/v1 rolebindings.
    RoleBindings,
    /// rbac.authorization.k8s.io/v1 clusterroles (cluster-scoped).
    ClusterRoles,
    /// rbac.authorization.k8s.io/v1 clusterrolebindings (cluster-scoped).
    ClusterRoleBindings,
    /// authorization.k8s.io/v1 subjectaccessreviews: created, answered by RBAC, not stored.
    SubjectAccessReviews,
}

impl Resource {
    /// From the URL's group, version and plural.
    pub fn from_path(group: &str, version: &str, plural: &str) -> Option<Resource> {
        match (group, version, plural) {
            ("", "v1", "pods") => Some(Resource::Pods),
            ("", "v1", "events") => Some(Resource::Events),
            ("k8s.cni.cncf.io", "v1", "network-attachment-definitions") => Some(Resource::Nads),
            ("resource.k8s.io", "v1", "resourceslices") => Some(Resource::ResourceSlices),
            ("", "v1", "namespaces") => Some(Resource::Namespaces),
            ("rbac.authorization.k8s.io", "v1", "roles") => Some(Resource::Roles),
            ("rbac.authorization.k8s.io", "v1", "rolebindings") => Some(Resource::RoleBindings),
            ("rbac.authorization.k8s.io", "v1", "clusterroles") => Some(Resource::ClusterRoles),
            ("rbac.authorization.k8s.io", "v1", "clusterrolebindings") => {
                Some(Resource::ClusterRoleBindings)
            }
            ("authorization.k8s.io", "v1", "subjectaccessreviews") => {
                Some(Resource::SubjectAccessReviews)
            }
            _ => None,
        }
    }

    /// `apiVersion` of its objects.
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Pods | Resource::Events | Resource::Namespaces => "v1",
            Resource::Nads => "k8s.cni.cncf.io/v1",
            Resource::ResourceSlices => "resource.k8s.io/v1",
            Resource::Roles
            | Resource::RoleBindings
            | Resource::ClusterRoles
            | Resource::ClusterRoleBindings => "rbac.authorization.k8s.io/v1",
            Resource::SubjectAccessReviews => "authorization.k8s.io/v1",
        }
    }

    /// `kind` of its objects.
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Events => "Event",
            Resource::Nads => "NetworkAttachmentDefinition",
            Resource::ResourceSlices => "ResourceSlice",
            Resource::Namespaces => "Namespace",
            Resource::Roles => "Role",
            Resource::RoleBindings => "RoleBinding",
            Resource::ClusterRoles => "ClusterRole",
            Resource::ClusterRoleBindings => "ClusterRoleBinding",
            Resource::SubjectAccessReviews => "SubjectAccessReview",
        }
    }

    /// The plural, as in URLs and Status details.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Events => "events",
            Resource::Nads => "network-attachment-definitions",
            Resource::ResourceSlices => "resourceslices",
            Resource::Namespaces => "namespaces",
            Resource::Roles => "roles",
            Resource::RoleBindings => "rolebindings",
            Resource::ClusterRoles => "clusterroles",
            Resource::ClusterRoleBindings => "clusterrolebindings",
            Resource::SubjectAccessReviews => "subjectaccessreviews",
        }
    }

    /// The API group ("" for core).
    pub fn group(self) -> &'static str {
        match self {
            Resource::Nads => "k8s.cni.cncf.io",
            Resource::ResourceSlices => "resource.k8s.io",
            Resource::Roles
            | Resource::RoleBindings
            | Resource::ClusterRoles
            | Resource::ClusterRoleBindings => "rbac.authorization.k8s.io",
            Resource::SubjectAccessReviews => "authorization.k8s.io",
            _ => "",
        }
    }

    /// Objects live in a namespace (all but ResourceSlices and Namespaces).
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Resource::ResourceSlices
                | Resource::Namespaces
                | Resource::ClusterRoles
                | Resource::ClusterRoleBindings
                | Resource::SubjectAccessReviews
        )
    }

    /// The resource as kube-apiserver names it in messages (`pods`, `network-attachment-definitions.k8s.cni.cncf.io`).
    pub fn qualified(self) -> String {
        if self.group().is_empty() {
            self.plural().to_string()
        } else {
            format!("{}.{}", self.plural(), self.group())
        }
    }
}

/// An error as kube-apiserver reports it.
#[derive(Debug, Clone)]
pub struct ApiErr {
    /// HTTP status.
    pub code: u16,
    /// `reason`.
    pub reason: &'static str,
    /// `message`.
    pub message: String,
    /// `details.name`.
    pub name: Option<String>,
    /// The resource, for `details.kind`/`details.group`.
    pub resource: Option<Resource>,
}

impl ApiErr {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiErr {
        ApiErr {
            code,
            reason,
            message: message.into(),
            name: None,
            resource: None,
        }
    }

    fn about(mut self, r: Resource, name: &str) -> ApiErr {
        self.resource = Some(r);
        self.name = Some(name.to_string());
        self
    }

    /// The `metav1.Status` body.
    pub fn status(&self) -> Value {
        let mut details = Map::new();
        if let Some(n) = &self.name {
            details.insert("name".into(), json!(n));
        }
        if let Some(r) = self.resource {
            if !r.group().is_empty() {
                details.insert("group".into(), json!(r.group()));
            }
            details.insert("kind".into(), json!(r.plural()));
        }
        let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": self.message, "reason": self.reason, "code": self.code});
        if !details.is_empty() {
            s["details"] = Value::Object(details);
        }
        s
    }
}

fn not_found(r: Resource, name: &str) -> ApiErr {
    ApiErr::new(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", r.qualified()),
    )
    .about(r, name)
}

/// One watch event.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// The resource.
    pub resource: Resource,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object after the change.
    pub object: Value,
    /// The resourceVersion of the change.
    pub rv: u64,
}

type Key = (Resource, String, String);

/// A request that is answered with an error on purpose.
#[derive(Debug, Clone)]
struct FailRule {
    method: Option<String>,
    needle: Option<String>,
    code: u16,
}

struct Inner {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    log: Vec<(String, String)>,
    fails: VecDeque<FailRule>,
    history: VecDeque<WatchEvent>,
}

/// The store.
pub struct Store {
    inner: Mutex<Inner>,
    pub(crate) events: broadcast::Sender<WatchEvent>,
}

const HISTORY: usize = 20_000;

impl Default for Store {
    fn default() -> Self {
        let (events, _) = broadcast::channel(4096);
        Store {
            inner: Mutex::new(Inner {
                objects: BTreeMap::new(),
                rv: 1,
                log: vec![],
                fails: VecDeque::new(),
                history: VecDeque::new(),
            }),
            events,
        }
    }
}

/// A `fieldSelector` term.
#[derive(Debug, Clone)]
pub struct FieldSel {
    /// Field path.
    pub field: String,
    /// `=`/`==` (true) or `!=` (false).
    pub equal: bool,
    /// Value.
    pub value: String,
}

fn field<'a>(obj: &'a Value, path: &str) -> &'a str {
    let mut v = obj;
    for p in path.split('.') {
        v = &v[p];
    }
    v.as_str().unwrap_or_default()
}

/// Parses a `fieldSelector`; unsupported fields are 400 BadRequest, as kube-apiserver answers.
pub fn parse_field_selector(r: Resource, s: &str) -> Result<Vec<FieldSel>, ApiErr> {
    let mut out = Vec::new();
    for term in s.split(',').filter(|t| !t.is_empty()) {
        let (f, equal, v) = if let Some((f, v)) = term.split_once("!=") {
            (f, false, v)
        } else if let Some((f, v)) = term.split_once("==") {
            (f, true, v)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, true, v)
        } else {
            return Err(ApiErr::new(
                400,
                "BadRequest",
                format!("invalid selector: '{s}'; can't understand '{term}'"),
            ));
        };
        let supported = matches!(f, "metadata.name" | "metadata.namespace")
            || (r == Resource::Pods && f == "spec.nodeName")
            || (r == Resource::ResourceSlices && matches!(f, "spec.nodeName" | "spec.driver"));
        if !supported {
            return Err(ApiErr::new(400, "BadRequest", format!("\"{f}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"")));
        }
        out.push(FieldSel {
            field: f.to_string(),
            equal,
            value: v.to_string(),
        });
    }
    Ok(out)
}

/// True when `obj` matches every term.
pub fn matches(obj: &Value, sel: &[FieldSel]) -> bool {
    sel.iter()
        .all(|t| (field(obj, &t.field) == t.value) == t.equal)
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Some(t) = target.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn now() -> String {
    // RFC 3339 in UTC without a date crate: seconds since the epoch rendered by hand.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

impl Inner {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, ev: WatchEvent, tx: &broadcast::Sender<WatchEvent>) {
        self.history.push_back(ev.clone());
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
        let _ = tx.send(ev);
    }
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn log_request(&self, method: &str, path: &str) -> Option<u16> {
        let mut g = self.lock();
        g.log.push((method.to_string(), path.to_string()));
        let hit = g.fails.iter().position(|r| {
            r.method.as_deref().is_none_or(|m| m == method)
                && r.needle.as_deref().is_none_or(|n| path.contains(n))
        })?;
        g.fails.remove(hit).map(|r| r.code)
    }

    pub(crate) fn log(&self) -> Vec<(String, String)> {
        self.lock().log.clone()
    }

    pub(crate) fn clear_log(&self) {
        self.lock().log.clear();
    }

    pub(crate) fn fail_next(
        &self,
        n: usize,
        code: u16,
        method: Option<&str>,
        needle: Option<&str>,
    ) {
        let rule = FailRule {
            method: method.map(str::to_string),
            needle: needle.map(str::to_string),
            code,
        };
        self.lock().fails.extend(std::iter::repeat_n(rule, n));
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    fn stamp(
        g: &mut Inner,
        r: Resource,
        ns: &str,
        obj: &mut Value,
        existing: Option<&Value>,
    ) -> u64 {
        let rv = g.bump();
        obj["apiVersion"] = json!(r.api_version());
        obj["kind"] = json!(r.kind());
        let meta = &mut obj["metadata"];
        if r.namespaced() {
            meta["namespace"] = json!(ns);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        meta["resourceVersion"] = json!(rv.to_string());
        match existing {
            Some(e) => {
                meta["uid"] = e["metadata"]["uid"].clone();
                meta["creationTimestamp"] = e["metadata"]["creationTimestamp"].clone();
            }
            None => {
                if meta["uid"].as_str().is_none_or(str::is_empty) {
                    meta["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012x}"));
                }
                meta["creationTimestamp"] = json!(now());
            }
        }
        rv
    }

    pub(crate) fn upsert(&self, r: Resource, mut obj: Value) -> Value {
        let ns = if r.namespaced() {
            obj["metadata"]["namespace"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut g = self.lock();
        let key = (r, ns.clone(), name);
        let existing = g.objects.get(&key).cloned();
        let rv = Self::stamp(&mut g, r, &ns, &mut obj, existing.as_ref());
        g.objects.insert(key, obj.clone());
        let kind = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        g.record(
            WatchEvent {
                resource: r,
                kind,
                object: obj.clone(),
                rv,
            },
            &self.events,
        );
        obj
    }

    pub(crate) fn get(&self, r: Resource, ns: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(r, ns.to_string(), name.to_string()))
            .cloned()
    }

    pub(crate) fn get_or_404(&self, r: Resource, ns: &str, name: &str) -> Result<Value, ApiErr> {
        self.get(r, ns, name).ok_or_else(|| not_found(r, name))
    }

    pub(crate) fn list(&self, r: Resource, ns: Option<&str>, sel: &[FieldSel]) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|((res, n, _), o)| *res == r && ns.is_none_or(|x| x == n) && matches(o, sel))
            .map(|(_, o)| o.clone())
            .collect()
    }

    pub(crate) fn create(&self, r: Resource, ns: &str, mut obj: Value) -> Result<Value, ApiErr> {
        well_formed(&obj)?;
        if let Some(k) = obj["kind"].as_str() {
            if k != r.kind() {
                return Err(ApiErr::new(
                    400,
                    "BadRequest",
                    format!(
                        "the kind {k:?} of the object does not match the resource {}",
                        r.qualified()
                    ),
                ));
            }
        }
        if let Some(bns) = obj["metadata"]["namespace"].as_str() {
            if r.namespaced() && !bns.is_empty() && bns != ns {
                return Err(ApiErr::new(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request"));
            }
        }
        let mut g = self.lock();
        let mut name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            let prefix = obj["metadata"]["generateName"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if prefix.is_empty() {
                return Err(ApiErr::new(422, "Invalid", format!("{} \"\" is invalid: metadata.name: Required value: name or generateName is required", r.kind())));
            }
            name = format!("{prefix}{:05x}", g.rv + 1);
            obj["metadata"]["name"] = json!(name);
        }
        let key = (r, ns.to_string(), name.clone());
        if g.objects.contains_key(&key) {
            return Err(ApiErr::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", r.qualified()),
            )
            .about(r, &name));
        }
        let rv = Self::stamp(&mut g, r, ns, &mut obj, None);
        g.objects.insert(key, obj.clone());
        g.record(
            WatchEvent {
                resource: r,
                kind: "ADDED",
                object: obj.clone(),
                rv,
            },
            &self.events,
        );
        Ok(obj)
    }

    fn conflict(r: Resource, name: &str) -> ApiErr {
        ApiErr::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", r.qualified()),
        )
        .about(r, name)
    }

    /// PUT (whole object or a subresource) and PATCH share this: `change` computes the
    /// new object from the current one; a `resourceVersion` in the request that is not
    /// the current one is a conflict.
    pub(crate) fn update(
        &self,
        r: Resource,
        ns: &str,
        name: &str,
        subresource: Option<&str>,
        change: impl FnOnce(&Value) -> Result<Value, ApiErr>,
    ) -> Result<Value, ApiErr> {
        let mut g = self.lock();
        let key = (r, ns.to_string(), name.to_string());
        let current = g
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(r, name))?;
        let mut next = change(&current)?;
        well_formed(&next)?;
        let asked = next["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !asked.is_empty()
            && asked
                != current["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
        {
            return Err(Self::conflict(r, name));
        }
        if next["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiErr::new(
                400,
                "BadRequest",
                "the name of the object does not match the name on the URL",
            ));
        }
        match subresource {
            // The status subresource changes status and metadata only.
            Some("status") => next["spec"] = current["spec"].clone(),
            // The main resource of a pod does not change its status.
            None if r == Resource::Pods => next["status"] = current["status"].clone(),
            _ => {}
        }
        if next.get("spec").is_some_and(Value::is_null) {
            next.as_object_mut().map(|m| m.remove("spec"));
        }
        let rv = Self::stamp(&mut g, r, ns, &mut next, Some(&current));
        g.objects.insert(key, next.clone());
        g.record(
            WatchEvent {
                resource: r,
                kind: "MODIFIED",
                object: next.clone(),
                rv,
            },
            &self.events,
        );
        Ok(next)
    }

    pub(crate) fn delete(&self, r: Resource, ns: &str, name: &str) -> Option<Value> {
        let mut g = self.lock();
        let mut obj = g.objects.remove(&(r, ns.to_string(), name.to_string()))?;
        let rv = g.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        g.record(
            WatchEvent {
                resource: r,
                kind: "DELETED",
                object: obj.clone(),
                rv,
            },
            &self.events,
        );
        Some(obj)
    }

    pub(crate) fn delete_or_404(&self, r: Resource, ns: &str, name: &str) -> Result<Value, ApiErr> {
        self.delete(r, ns, name).ok_or_else(|| not_found(r, name))
    }

    /// Events after `rv` still in history, or 410 Gone when `rv` is older than it.
    pub(crate) fn since(&self, rv: u64) -> Result<Vec<WatchEvent>, ApiErr> {
        let g = self.lock();
        if let Some(first) = g.history.front() {
            if rv + 1 < first.rv && rv != 0 {
                return Err(ApiErr::new(
                    410,
                    "Expired",
                    format!("too old resource version: {rv} ({})", first.rv - 1),
                ));
            }
        }
        Ok(g.history.iter().filter(|e| e.rv > rv).cloned().collect())
    }
}

/// An object the store can stamp: a JSON object whose `metadata`, if any, is an object
/// (kube-apiserver refuses anything else with 400 before it looks further).
fn well_formed(obj: &Value) -> Result<(), ApiErr> {
    if !obj.is_object() {
        return Err(ApiErr::new(
            400,
            "BadRequest",
            "the body of the request was not a JSON object",
        ));
    }
    match obj.get("metadata") {
        None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(ApiErr::new(
            400,
            "BadRequest",
            "metadata: Invalid value: must be an object",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_with_a_metadata_that_is_not_an_object_are_refused() {
        assert!(well_formed(&serde_json::json!({"metadata": "x"})).is_err());
        assert!(well_formed(&serde_json::json!([1])).is_err());
        assert!(well_formed(&serde_json::json!({"metadata": {"name": "a"}})).is_ok());
    }

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn timestamps_look_like_rfc3339() {
        let t = now();
        assert_eq!(t.len(), 20);
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}
