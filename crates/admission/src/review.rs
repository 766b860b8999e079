//! `admission.k8s.io/v1` AdmissionReview: the request as the API server sends it, the
//! answer it expects (allowed or a Status, warnings, a JSONPatch).

use crate::rules::{self, AccessSource, NadSource, Policy, Subject, Verdict};
use base64::Engine as _;
use serde_json::{json, Value};

/// Which webhook is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// The validating webhook (NADs and pods).
    Validate,
    /// The mutating webhook (pods' device resources).
    Mutate,
}

/// A request that is no AdmissionReview: the HTTP status and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReview(pub u16, pub String);

/// The parts of a review the rules read.
#[derive(Debug, Clone)]
pub struct Request {
    /// `request.uid`.
    pub uid: String,
    /// `request.kind.kind`.
    pub kind: String,
    /// `request.operation`.
    pub operation: String,
    /// `request.subResource`.
    pub sub_resource: String,
    /// `request.object`.
    pub object: Value,
    /// `request.oldObject`.
    pub old_object: Option<Value>,
    /// `request.namespace` (filled into the object when it has none: a create).
    pub namespace: String,
    /// `request.userInfo`: who asks.
    pub user: Subject,
}

/// Parses an AdmissionReview body.
pub fn parse(body: &[u8]) -> Result<Request, BadReview> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| BadReview(400, format!("the body is not JSON: {e}")))?;
    let (api, kind) = (
        v["apiVersion"].as_str().unwrap_or_default(),
        v["kind"].as_str().unwrap_or_default(),
    );
    if (api, kind) != ("admission.k8s.io/v1", "AdmissionReview") {
        return Err(BadReview(
            400,
            format!("expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got apiVersion {api:?} kind {kind:?} (set admissionReviewVersions: [v1])"),
        ));
    }
    let r = &v["request"];
    let uid = r["uid"].as_str().unwrap_or_default().to_string();
    if uid.is_empty() {
        return Err(BadReview(400, "request.uid is missing".into()));
    }
    let s = |x: &Value| x.as_str().unwrap_or_default().to_string();
    let namespace = s(&r["namespace"]);
    let mut object = r["object"].clone();
    if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if m.get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            && !namespace.is_empty()
        {
            m.insert("namespace".into(), json!(namespace));
        }
    }
    Ok(Request {
        uid,
        kind: s(&r["kind"]["kind"]),
        operation: s(&r["operation"]),
        sub_resource: s(&r["subResource"]),
        object,
        old_object: r.get("oldObject").filter(|o| o.is_object()).cloned(),
        namespace,
        user: Subject {
            user: s(&r["userInfo"]["username"]),
            groups: r["userInfo"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect(),
        },
    })
}

/// True when the request is an update that leaves the pod's network annotations as
/// they were.
pub fn networks_unchanged(req: &Request) -> bool {
    rules::networks_unchanged(&req.object, req.old_object.as_ref())
}

/// The verdict of `hook` on `req`; an error when access could not be checked (the
/// webhook then fails, and the API server applies the configuration's failurePolicy).
pub fn decide(
    hook: Hook,
    req: &Request,
    policy: &Policy,
    nads: &dyn NadSource,
    access: &dyn AccessSource,
) -> Result<Verdict, String> {
    let skip = Verdict {
        allowed: true,
        ..Default::default()
    };
    if !req.sub_resource.is_empty() || !matches!(req.operation.as_str(), "CREATE" | "UPDATE") {
        return Ok(skip);
    }
    Ok(match (hook, req.kind.as_str()) {
        (Hook::Validate, "NetworkAttachmentDefinition") => rules::review_nad(&req.object),
        (Hook::Validate, "Pod") => {
            let v = rules::review_pod(&req.object, req.old_object.as_ref(), policy, nads);
            if v.allowed && policy.access_control && !networks_unchanged(req) {
                let a = rules::review_access(&req.object, policy, &req.user, access)?;
                if !a.allowed {
                    return Ok(Verdict {
                        warnings: v.warnings,
                        ..a
                    });
                }
            }
            v
        }
        (Hook::Mutate, "Pod") if req.operation == "CREATE" => Verdict {
            allowed: true,
            patch: rules::inject_resources(&req.object, policy, nads),
            ..Default::default()
        },
        _ => skip,
    })
}

/// The AdmissionReview answering `uid` with `v`.
pub fn response(uid: &str, v: &Verdict) -> Value {
    let mut r = json!({"uid": uid, "allowed": v.allowed});
    if !v.allowed {
        r["status"] = json!({"code": 403, "reason": "Forbidden", "message": v.message});
    }
    if !v.warnings.is_empty() {
        r["warnings"] = json!(v.warnings);
    }
    if !v.patch.is_empty() {
        r["patchType"] = json!("JSONPatch");
        r["patch"] = json!(base64::engine::general_purpose::STANDARD
            .encode(Value::Array(v.patch.clone()).to_string()));
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": r})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::NoNads;

    #[test]
    fn bad_reviews_are_400_with_a_reason() {
        for (body, needle) in [
            (&b"nope"[..], "not JSON"),
            (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#, "admission.k8s.io/v1beta1"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#, "request.uid"),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.0, 400);
            assert!(e.1.contains(needle), "{}", e.1);
        }
    }

    #[test]
    fn denial_and_status() {
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u1", "kind": {"group": "k8s.cni.cncf.io", "version": "v1", "kind": "NetworkAttachmentDefinition"},
                        "operation": "CREATE", "namespace": "ns",
                        "object": {"metadata": {"name": "mv"}, "spec": {"config": "{bad"}}}});
        let req = parse(body.to_string().as_bytes()).unwrap();
        let v = decide(Hook::Validate, &req, &Policy::default(), &NoNads, &NoNads).unwrap();
        let r = response(&req.uid, &v);
        assert_eq!(r["response"]["allowed"], false);
        assert_eq!(r["response"]["status"]["code"], 403);
        assert!(
            r["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("\"ns/mv\": spec.config"),
            "{r}"
        );
        // DELETE and subresources are not reviewed.
        let mut d = req.clone();
        d.operation = "DELETE".into();
        assert!(
            decide(Hook::Validate, &d, &Policy::default(), &NoNads, &NoNads)
                .unwrap()
                .allowed
        );
    }
}
