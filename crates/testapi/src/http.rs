//! The HTTP side: URL parsing, verbs, Status responses and watch streams.

use crate::store::{self, ApiErr, FieldSel, Resource, Store, WatchEvent};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::stream;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

pub(crate) fn router(store: Arc<Store>) -> Router {
    Router::new().fallback(handle).with_state(store)
}

struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// kube-apiserver's answer to a request without valid credentials.
pub(crate) fn unauthorized() -> Response {
    error(ApiErr::new(401, "Unauthorized", "Unauthorized"))
}

fn error(e: ApiErr) -> Response {
    json_response(e.code, &e.status())
}

fn not_found_path() -> Response {
    error(ApiErr::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    ))
}

fn parse_target(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] => {
            (Some(ns.to_string()), *plural, tail.first(), tail.get(1))
        }
        [plural] => (None, *plural, None, None),
        [plural, name, tail @ ..] => (None, *plural, Some(name), tail.first()),
        _ => return None,
    };
    if rest.len() > 5 {
        return None;
    }
    let resource = Resource::from_path(group, version, plural)?;
    // A cluster-scoped resource has no namespaced URL; a namespaced one's objects are
    // reached through their namespace (lists may span all of them).
    if resource.namespaced() == namespace.is_none() && (name.is_some() || !resource.namespaced()) {
        return None;
    }
    Some(Target {
        resource,
        namespace,
        name: name.map(|s| s.to_string()),
        sub: sub.map(|s| s.to_string()),
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

async fn handle(
    State(store): State<Arc<Store>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = uri.query().unwrap_or_default().to_string();
    let shown = if query.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{query}", uri.path())
    };
    if let Some(code) = store.log_request(method.as_str(), &shown) {
        return error(ApiErr::new(
            code,
            reason_for(code),
            format!("injected failure {code}"),
        ));
    }
    let Some(t) = parse_target(uri.path()) else {
        return not_found_path();
    };
    match dispatch(&store, &method, &t, &query, &headers, &body) {
        Ok(Reply::Json(code, v)) if code < 300 && wants_protobuf(&headers) => {
            let list = v["kind"].as_str().is_some_and(|k| k.ends_with("List"));
            match crate::protobuf::encode(t.resource, &v, list) {
                Some(Ok(bytes)) => {
                    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
                    (
                        status,
                        [(header::CONTENT_TYPE, crate::protobuf::MEDIA_TYPE)],
                        bytes,
                    )
                        .into_response()
                }
                Some(Err(e)) => error(e),
                // Custom resources: JSON, as kube-apiserver answers.
                None => json_response(code, &v),
            }
        }
        Ok(Reply::Json(code, v)) => json_response(code, &v),
        Ok(Reply::Watch(events, rx, filter, timeout)) => {
            watch_response(events, rx, filter, timeout)
        }
        Err(e) => error(e),
    }
}

enum Reply {
    Json(u16, Value),
    Watch(
        Vec<WatchEvent>,
        broadcast::Receiver<WatchEvent>,
        Filter,
        Duration,
    ),
}

#[derive(Clone)]
struct Filter {
    resource: Resource,
    namespace: Option<String>,
    sel: Vec<FieldSel>,
    after: u64,
}

impl Filter {
    fn accepts(&self, e: &WatchEvent) -> bool {
        e.resource == self.resource
            && e.rv > self.after
            && self
                .namespace
                .as_deref()
                .is_none_or(|n| e.object["metadata"]["namespace"] == n)
            && store::matches(&e.object, &self.sel)
    }
}

/// True when the request's Content-Type is Kubernetes protobuf.
fn is_protobuf(value: Option<&axum::http::HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(crate::protobuf::MEDIA_TYPE))
}

/// A create or update body: Kubernetes protobuf for the built-in types (what Go
/// clients send), JSON otherwise.
fn request_body(r: Resource, headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiErr> {
    if is_protobuf(headers.get(header::CONTENT_TYPE)) {
        return crate::protobuf::decode(r, body);
    }
    body_json(body)
}

/// True when the client prefers Kubernetes protobuf (its Accept lists it before JSON).
fn wants_protobuf(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    accept
        .split(',')
        .map(|m| m.trim())
        .find(|m| {
            m.starts_with("application/json")
                || m.starts_with(crate::protobuf::MEDIA_TYPE)
                || m.starts_with("*/*")
        })
        .is_some_and(|m| m.starts_with(crate::protobuf::MEDIA_TYPE))
}

fn body_json(body: &Bytes) -> Result<Value, ApiErr> {
    serde_json::from_slice(body).map_err(|e| {
        ApiErr::new(
            400,
            "BadRequest",
            format!("the body of the request could not be decoded: {e}"),
        )
    })
}

// Long on purpose: the route table, one arm per endpoint, read as kube-apiserver's.
fn dispatch(
    store: &Store,
    method: &Method,
    t: &Target,
    query: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Reply, ApiErr> {
    let r = t.resource;
    let ns = t.namespace.as_deref();
    if r == Resource::SubjectAccessReviews {
        return match (method.as_str(), &t.name) {
            ("POST", None) => Ok(Reply::Json(
                201,
                crate::rbac::review(store, request_body(r, headers, body)?)?,
            )),
            (m, _) => Err(ApiErr::new(
                405,
                "MethodNotAllowed",
                format!("the server does not allow this method on the requested resource ({m})"),
            )),
        };
    }
    if let Some(sub) = &t.sub {
        if sub != "status" || r != Resource::Pods {
            return Err(ApiErr::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    }
    match (method.as_str(), &t.name) {
        ("GET", Some(name)) => Ok(Reply::Json(
            200,
            store.get_or_404(r, ns.unwrap_or_default(), name)?,
        )),
        ("GET", None) => {
            let sel = store::parse_field_selector(
                r,
                &query_param(query, "fieldSelector").unwrap_or_default(),
            )?;
            if matches!(query_param(query, "watch").as_deref(), Some("true" | "1")) {
                let rv: u64 = query_param(query, "resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let timeout = Duration::from_secs(
                    query_param(query, "timeoutSeconds")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1800),
                );
                let rx = store.events.subscribe();
                let filter = Filter {
                    resource: r,
                    namespace: t.namespace.clone(),
                    sel: sel.clone(),
                    after: rv,
                };
                let backlog = if rv == 0 {
                    // No resourceVersion: the current state as ADDED events, then changes.
                    let now = store.resource_version();
                    let items = store.list(r, ns, &sel);
                    let f = Filter {
                        after: now,
                        ..filter.clone()
                    };
                    return Ok(Reply::Watch(
                        items
                            .into_iter()
                            .map(|o| WatchEvent {
                                resource: r,
                                kind: "ADDED",
                                object: o,
                                rv: now,
                            })
                            .collect(),
                        rx,
                        f,
                        timeout,
                    ));
                } else {
                    store
                        .since(rv)?
                        .into_iter()
                        .filter(|e| filter.accepts(e))
                        .collect()
                };
                return Ok(Reply::Watch(backlog, rx, filter, timeout));
            }
            let rv = store.resource_version();
            let items = store.list(r, ns, &sel);
            Ok(Reply::Json(
                200,
                json!({"apiVersion": r.api_version(), "kind": format!("{}List", r.kind()),
                                        "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
            ))
        }
        ("POST", None) => {
            let ns = match ns {
                Some(ns) => ns,
                None if !r.namespaced() => "",
                None => {
                    return Err(ApiErr::new(
                        405,
                        "MethodNotAllowed",
                        "create needs a namespace",
                    ))
                }
            };
            Ok(Reply::Json(
                201,
                store.create(r, ns, request_body(r, headers, body)?)?,
            ))
        }
        ("PUT", Some(name)) if r != Resource::Events => {
            let obj = request_body(r, headers, body)?;
            if !obj.is_object() {
                return Err(ApiErr::new(
                    400,
                    "BadRequest",
                    "the body of the request was not a JSON object",
                ));
            }
            Ok(Reply::Json(
                200,
                store.update(r, ns.unwrap_or_default(), name, t.sub.as_deref(), |_| {
                    Ok(obj)
                })?,
            ))
        }
        ("PATCH", Some(name)) if r != Resource::Events => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !ct.starts_with("application/merge-patch+json")
                && !ct.starts_with("application/strategic-merge-patch+json")
            {
                return Err(ApiErr::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})")));
            }
            let patch = body_json(body)?;
            let updated =
                store.update(r, ns.unwrap_or_default(), name, t.sub.as_deref(), |cur| {
                    let mut next = cur.clone();
                    store::merge_patch(&mut next, &patch);
                    Ok(next)
                })?;
            Ok(Reply::Json(200, updated))
        }
        ("DELETE", Some(name)) => Ok(Reply::Json(
            200,
            store.delete_or_404(r, ns.unwrap_or_default(), name)?,
        )),
        (m, _) => Err(ApiErr::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({m})"),
        )),
    }
}

fn line(e: &WatchEvent) -> Bytes {
    let mut s = json!({"type": e.kind, "object": e.object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn watch_response(
    backlog: Vec<WatchEvent>,
    rx: broadcast::Receiver<WatchEvent>,
    filter: Filter,
    timeout: Duration,
) -> Response {
    let deadline = tokio::time::Instant::now() + timeout;
    let state = (backlog.into_iter(), rx, filter, deadline);
    let s = stream::unfold(
        state,
        |(mut backlog, mut rx, mut filter, deadline)| async move {
            if let Some(e) = backlog.next() {
                filter.after = filter.after.max(e.rv);
                return Some((
                    Ok::<Bytes, std::convert::Infallible>(line(&e)),
                    (backlog, rx, filter, deadline),
                ));
            }
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Ok(e)) if filter.accepts(&e) => {
                        filter.after = e.rv;
                        return Some((Ok(line(&e)), (backlog, rx, filter, deadline)));
                    }
                    Ok(Ok(_)) => continue,
                    // Lagging, closed or timed out: the stream ends and the client re-lists or re-watches.
                    _ => return None,
                }
            }
        },
    );
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(s))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
