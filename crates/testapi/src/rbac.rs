//! SubjectAccessReview answered by RBAC, as kube-apiserver's RBAC authorizer answers it:
//! the ClusterRoleBindings of the subject grant their ClusterRole's rules everywhere,
//! the RoleBindings of the request's namespace grant their Role's (or ClusterRole's)
//! rules there. A rule matches when its apiGroups, resources (with `/subresource`),
//! verbs and resourceNames (empty: any) contain the request's, `*` matching all.
//! A ServiceAccount subject is the user `system:serviceaccount:<ns>:<name>`. As
//! kube-apiserver, the review authorizes exactly the user and groups it names (a
//! service account's groups must be given).

use crate::store::{ApiErr, Resource, Store};
use serde_json::{json, Value};

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn has(list: &Value, want: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|s| s == "*" || s == want)
}

/// Who is asking: a user and its groups.
struct Subject {
    user: String,
    groups: Vec<String>,
}

impl Subject {
    /// True when a binding's subject is this one.
    fn bound_by(&self, s: &Value, binding_ns: &str) -> bool {
        let name = s["name"].as_str().unwrap_or_default();
        match s["kind"].as_str().unwrap_or_default() {
            "User" => name == self.user,
            "Group" => self.groups.iter().any(|g| g == name),
            "ServiceAccount" => {
                let ns = s["namespace"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .unwrap_or(binding_ns);
                self.user == format!("system:serviceaccount:{ns}:{name}")
            }
            _ => false,
        }
    }
}

/// What is asked: `spec.resourceAttributes`.
struct Attributes {
    namespace: String,
    verb: String,
    group: String,
    resource: String,
    subresource: String,
    name: String,
}

impl Attributes {
    fn allowed_by(&self, rule: &Value) -> bool {
        let resource = if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        has(&rule["verbs"], &self.verb)
            && has(&rule["apiGroups"], &self.group)
            && has(&rule["resources"], &resource)
            && (strings(&rule["resourceNames"]).is_empty()
                || has(&rule["resourceNames"], &self.name))
    }
}

fn role_rules(store: &Store, ns: &str, role_ref: &Value) -> Vec<Value> {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let role = match role_ref["kind"].as_str() {
        Some("ClusterRole") => store.get(Resource::ClusterRoles, "", name),
        Some("Role") => store.get(Resource::Roles, ns, name),
        _ => None,
    };
    role.map(|r| r["rules"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
}

/// The review with its `status`.
pub(crate) fn review(store: &Store, mut sar: Value) -> Result<Value, ApiErr> {
    let spec = &sar["spec"];
    let user = spec["user"].as_str().unwrap_or_default().to_string();
    let groups = strings(&spec["groups"]);
    if user.is_empty() && groups.is_empty() {
        return Err(ApiErr::new(
            422,
            "Invalid",
            "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.user: Invalid value: \"\": at least one of user or group must be specified",
        ));
    }
    let Some(ra) = spec.get("resourceAttributes").filter(|r| r.is_object()) else {
        return Err(ApiErr::new(
            422,
            "Invalid",
            "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes: Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    };
    let who = Subject { user, groups };
    let s = |k: &str| ra[k].as_str().unwrap_or_default().to_string();
    let want = Attributes {
        namespace: s("namespace"),
        verb: s("verb"),
        group: s("group"),
        resource: s("resource"),
        subresource: s("subresource"),
        name: s("name"),
    };
    let mut reason = None;
    for b in store.list(Resource::ClusterRoleBindings, None, &[]) {
        if b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| who.bound_by(x, ""))
            && role_rules(store, "", &b["roleRef"])
                .iter()
                .any(|r| want.allowed_by(r))
        {
            reason = Some(format!(
                "RBAC: allowed by ClusterRoleBinding \"{}\" of ClusterRole \"{}\" to {}",
                b["metadata"]["name"].as_str().unwrap_or_default(),
                b["roleRef"]["name"].as_str().unwrap_or_default(),
                who.user
            ));
            break;
        }
    }
    if reason.is_none() && !want.namespace.is_empty() {
        for b in store.list(Resource::RoleBindings, Some(&want.namespace), &[]) {
            if b["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| who.bound_by(x, &want.namespace))
                && role_rules(store, &want.namespace, &b["roleRef"])
                    .iter()
                    .any(|r| want.allowed_by(r))
            {
                reason = Some(format!(
                    "RBAC: allowed by RoleBinding \"{}/{}\" of {} \"{}\" to {}",
                    b["metadata"]["name"].as_str().unwrap_or_default(),
                    want.namespace,
                    b["roleRef"]["kind"].as_str().unwrap_or_default(),
                    b["roleRef"]["name"].as_str().unwrap_or_default(),
                    who.user
                ));
                break;
            }
        }
    }
    sar["apiVersion"] = json!("authorization.k8s.io/v1");
    sar["kind"] = json!("SubjectAccessReview");
    sar["status"] = match reason {
        Some(r) => json!({"allowed": true, "reason": r}),
        None => json!({"allowed": false}),
    };
    Ok(sar)
}
