//! Kubernetes protobuf (`application/vnd.kubernetes.protobuf`) for the built-in types, as
//! kube-apiserver speaks it to Go clients: the 4-byte magic `k8s\0`, then a
//! `runtime.Unknown` whose `raw` is the object's message and whose `typeMeta` names it.
//! Objects are kept as JSON; they are converted through the descriptors of the vendored
//! upstream .proto files (prost-reflect), with the Kubernetes JSON forms of the types
//! whose protobuf shape differs (Time, MicroTime, Quantity, IntOrString, RawExtension,
//! FieldsV1, Duration). Custom resources (NADs) have no protobuf form: JSON only.

use crate::store::{ApiErr, Resource};
use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, ReflectMessage,
    Value as PValue,
};
use serde_json::{Map, Number, Value};
use std::sync::OnceLock;

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8; 4] = b"k8s\0";

fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/k8s.fds"))[..]).ok()
    })
    .as_ref()
}

fn bad(msg: impl Into<String>) -> ApiErr {
    ApiErr::new(400, "BadRequest", msg)
}

/// The message of `r`'s objects (or lists); `None` for resources with no protobuf form.
fn message(r: Resource, list: bool) -> Option<MessageDescriptor> {
    let base = match r {
        Resource::Pods => "k8s.io.api.core.v1.Pod",
        Resource::Events => "k8s.io.api.core.v1.Event",
        Resource::Namespaces => "k8s.io.api.core.v1.Namespace",
        Resource::ResourceSlices => "k8s.io.api.resource.v1.ResourceSlice",
        Resource::Roles => "k8s.io.api.rbac.v1.Role",
        Resource::RoleBindings => "k8s.io.api.rbac.v1.RoleBinding",
        Resource::ClusterRoles => "k8s.io.api.rbac.v1.ClusterRole",
        Resource::ClusterRoleBindings => "k8s.io.api.rbac.v1.ClusterRoleBinding",
        Resource::SubjectAccessReviews => "k8s.io.api.authorization.v1.SubjectAccessReview",
        Resource::Nads => return None,
    };
    let name = if list {
        format!("{base}List")
    } else {
        base.to_string()
    };
    pool()?.get_message_by_name(&name)
}

/// True when `r` has a protobuf form.
pub fn supported(r: Resource) -> bool {
    message(r, false).is_some()
}

/// A request body in protobuf, as the object's JSON.
pub fn decode(r: Resource, body: &[u8]) -> Result<Value, ApiErr> {
    let Some(desc) = message(r, false) else {
        return Err(ApiErr::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/apply-patch+yaml, application/merge-patch+json (got {MEDIA_TYPE})"),
        ));
    };
    let rest = body.strip_prefix(&MAGIC[..]).ok_or_else(|| {
        bad("the body of the request could not be decoded: protobuf without the k8s magic prefix")
    })?;
    let unknown_desc = pool()
        .and_then(|p| p.get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown"))
        .ok_or_else(|| ApiErr::new(500, "InternalError", "no descriptor of runtime.Unknown"))?;
    let unknown = DynamicMessage::decode(unknown_desc, rest)
        .map_err(|e| bad(format!("the body of the request could not be decoded: {e}")))?;
    let raw = match unknown.get_field_by_name("raw").as_deref() {
        Some(PValue::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    let obj = DynamicMessage::decode(desc, raw.as_ref())
        .map_err(|e| bad(format!("the body of the request could not be decoded: {e}")))?;
    let mut v = to_json(&obj);
    if let (Some(m), Some(PValue::Message(tm))) = (
        v.as_object_mut(),
        unknown.get_field_by_name("typeMeta").as_deref(),
    ) {
        for k in ["apiVersion", "kind"] {
            if let Some(PValue::String(s)) = tm.get_field_by_name(k).as_deref() {
                if !s.is_empty() {
                    m.insert(k.into(), Value::String(s.clone()));
                }
            }
        }
    }
    Ok(v)
}

/// An object (or, with `list`, a list) of `r` in protobuf; `None` when `r` has no
/// protobuf form.
pub fn encode(r: Resource, obj: &Value, list: bool) -> Option<Result<Vec<u8>, ApiErr>> {
    let desc = message(r, list)?;
    let unknown_desc = pool()?.get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown")?;
    Some((|| {
        let msg = from_json(&desc, obj)
            .map_err(|e| ApiErr::new(500, "InternalError", format!("encoding protobuf: {e}")))?;
        let mut unknown = DynamicMessage::new(unknown_desc.clone());
        let tm_desc = match unknown_desc.get_field_by_name("typeMeta").map(|f| f.kind()) {
            Some(Kind::Message(d)) => d,
            _ => {
                return Err(ApiErr::new(
                    500,
                    "InternalError",
                    "runtime.Unknown without typeMeta",
                ))
            }
        };
        let mut tm = DynamicMessage::new(tm_desc);
        tm.set_field_by_name("apiVersion", PValue::String(r.api_version().into()));
        let kind = if list {
            format!("{}List", r.kind())
        } else {
            r.kind().to_string()
        };
        tm.set_field_by_name("kind", PValue::String(kind));
        unknown.set_field_by_name("typeMeta", PValue::Message(tm));
        unknown.set_field_by_name("raw", PValue::Bytes(msg.encode_to_vec().into()));
        unknown.set_field_by_name("contentEncoding", PValue::String(String::new()));
        unknown.set_field_by_name("contentType", PValue::String(String::new()));
        let mut out = MAGIC.to_vec();
        out.extend(unknown.encode_to_vec());
        Ok(out)
    })())
}

/// Go structs embedded with `json:",inline"`: one field in protobuf, their fields at the
/// parent's level in JSON. (field name, its message), from the upstream types.go files
/// of the vendored versions.
const INLINE: &[(&str, &str)] = &[
    ("handler", "k8s.io.api.core.v1.ProbeHandler"),
    ("volumeSource", "k8s.io.api.core.v1.VolumeSource"),
    (
        "persistentVolumeSource",
        "k8s.io.api.core.v1.PersistentVolumeSource",
    ),
    (
        "localObjectReference",
        "k8s.io.api.core.v1.LocalObjectReference",
    ),
    (
        "ephemeralContainerCommon",
        "k8s.io.api.core.v1.EphemeralContainerCommon",
    ),
    (
        "deviceConfiguration",
        "k8s.io.api.resource.v1.DeviceConfiguration",
    ),
];

fn is_inline(f: &prost_reflect::FieldDescriptor) -> bool {
    match f.kind() {
        Kind::Message(d) => INLINE
            .iter()
            .any(|(name, msg)| *name == f.name() && *msg == d.full_name()),
        _ => false,
    }
}

// ---- protobuf → JSON --------------------------------------------------------------

fn time_string(seconds: i64, nanos: i32, micros: bool) -> String {
    let Ok(t) = jiff::Timestamp::new(seconds, if micros { nanos / 1000 * 1000 } else { 0 }) else {
        return String::new();
    };
    if micros {
        format!("{}", t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
    } else {
        format!("{}", t.strftime("%Y-%m-%dT%H:%M:%SZ"))
    }
}

fn int_field(m: &DynamicMessage, name: &str) -> i64 {
    match m.get_field_by_name(name).as_deref() {
        Some(PValue::I64(v)) => *v,
        Some(PValue::I32(v)) => i64::from(*v),
        _ => 0,
    }
}

fn bytes_json(m: &DynamicMessage, name: &str) -> Value {
    match m.get_field_by_name(name).as_deref() {
        Some(PValue::Bytes(b)) if !b.is_empty() => serde_json::from_slice(b).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn go_duration(ns: i64) -> String {
    let secs = ns as f64 / 1e9;
    let (h, rem) = ((secs / 3600.0).floor(), secs % 3600.0);
    let (m, s) = ((rem / 60.0).floor(), rem % 60.0);
    match (h as i64, m as i64) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

/// The Kubernetes JSON form of a message.
pub fn to_json(m: &DynamicMessage) -> Value {
    let d = m.descriptor();
    match d.full_name() {
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time" => {
            return Value::String(time_string(
                int_field(m, "seconds"),
                int_field(m, "nanos") as i32,
                false,
            ))
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            return Value::String(time_string(
                int_field(m, "seconds"),
                int_field(m, "nanos") as i32,
                true,
            ))
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => {
            return Value::String(go_duration(int_field(m, "duration")))
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            return match m.get_field_by_name("string").as_deref() {
                Some(PValue::String(s)) => Value::String(s.clone()),
                _ => Value::String(String::new()),
            }
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            return if int_field(m, "type") == 1 {
                match m.get_field_by_name("strVal").as_deref() {
                    Some(PValue::String(s)) => Value::String(s.clone()),
                    _ => Value::String(String::new()),
                }
            } else {
                Value::Number(int_field(m, "intVal").into())
            }
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => return bytes_json(m, "raw"),
        "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => return bytes_json(m, "Raw"),
        _ => {}
    }
    let mut o = Map::new();
    for (f, v) in m.fields() {
        match (is_inline(&f), value_to_json(v)) {
            (true, Value::Object(inner)) => o.extend(inner),
            (_, j) => {
                o.insert(f.json_name().to_string(), j);
            }
        }
    }
    Value::Object(o)
}

fn value_to_json(v: &PValue) -> Value {
    match v {
        PValue::Bool(b) => Value::Bool(*b),
        PValue::I32(i) => Value::Number((*i).into()),
        PValue::I64(i) => Value::Number((*i).into()),
        PValue::U32(i) => Value::Number((*i).into()),
        PValue::U64(i) => Value::Number((*i).into()),
        PValue::F32(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        PValue::F64(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        PValue::String(s) => Value::String(s.clone()),
        PValue::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        PValue::EnumNumber(n) => Value::Number((*n).into()),
        PValue::Message(m) => to_json(m),
        PValue::List(l) => Value::Array(l.iter().map(value_to_json).collect()),
        PValue::Map(m) => {
            let mut o = Map::new();
            for (k, v) in m {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(i) => i.to_string(),
                    MapKey::I64(i) => i.to_string(),
                    MapKey::U32(i) => i.to_string(),
                    MapKey::U64(i) => i.to_string(),
                };
                o.insert(key, value_to_json(v));
            }
            Value::Object(o)
        }
    }
}

// ---- JSON → protobuf --------------------------------------------------------------

fn parse_time(s: &str) -> Result<(i64, i32), String> {
    let t: jiff::Timestamp = s.parse().map_err(|e| format!("time {s:?}: {e}"))?;
    Ok((t.as_second(), t.subsec_nanosecond()))
}

fn set(m: &mut DynamicMessage, name: &str, v: PValue) {
    if m.descriptor().get_field_by_name(name).is_some() {
        m.set_field_by_name(name, v);
    }
}

/// The message `desc` from its Kubernetes JSON form; keys the type does not have are
/// dropped (as the API server drops unknown fields of typed objects).
pub fn from_json(desc: &MessageDescriptor, v: &Value) -> Result<DynamicMessage, String> {
    let mut m = DynamicMessage::new(desc.clone());
    match desc.full_name() {
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time"
        | "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
                let (secs, nanos) = parse_time(s)?;
                set(&mut m, "seconds", PValue::I64(secs));
                set(&mut m, "nanos", PValue::I32(nanos));
            }
            return Ok(m);
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            set(&mut m, "string", PValue::String(s));
            return Ok(m);
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            match v {
                Value::String(s) => {
                    set(&mut m, "type", PValue::I64(1));
                    set(&mut m, "strVal", PValue::String(s.clone()));
                }
                other => {
                    set(&mut m, "type", PValue::I64(0));
                    set(
                        &mut m,
                        "intVal",
                        PValue::I32(other.as_i64().unwrap_or(0) as i32),
                    );
                }
            }
            return Ok(m);
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => {
            set(
                &mut m,
                "raw",
                PValue::Bytes(v.to_string().into_bytes().into()),
            );
            return Ok(m);
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            set(
                &mut m,
                "Raw",
                PValue::Bytes(v.to_string().into_bytes().into()),
            );
            return Ok(m);
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => {
            // Go duration strings are not needed by the types served; kept empty.
            return Ok(m);
        }
        _ => {}
    }
    let Some(obj) = v.as_object() else {
        return Err(format!("{}: expected an object, got {v}", desc.full_name()));
    };
    for f in desc.fields().filter(is_inline) {
        if let Kind::Message(d) = f.kind() {
            let inner = from_json(&d, v)?;
            if inner.fields().next().is_some() {
                m.set_field(&f, PValue::Message(inner));
            }
        }
    }
    for (k, val) in obj {
        if val.is_null() {
            continue;
        }
        let Some(f) = desc
            .get_field_by_json_name(k)
            .or_else(|| desc.get_field_by_name(k))
        else {
            continue;
        };
        let pv = if f.is_map() {
            let Kind::Message(entry) = f.kind() else {
                continue;
            };
            let value_kind = entry.map_entry_value_field().kind();
            let mut map = std::collections::HashMap::new();
            for (mk, mv) in val.as_object().into_iter().flatten() {
                map.insert(MapKey::String(mk.clone()), scalar(&value_kind, mv)?);
            }
            PValue::Map(map)
        } else if f.is_list() {
            let items = val
                .as_array()
                .ok_or_else(|| format!("{k}: expected a list"))?
                .iter()
                .map(|x| scalar(&f.kind(), x))
                .collect::<Result<Vec<_>, _>>()?;
            PValue::List(items)
        } else {
            scalar(&f.kind(), val)?
        };
        m.set_field(&f, pv);
    }
    Ok(m)
}

fn scalar(kind: &Kind, v: &Value) -> Result<PValue, String> {
    Ok(match kind {
        Kind::Bool => PValue::Bool(v.as_bool().unwrap_or(false)),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => PValue::I32(v.as_i64().unwrap_or(0) as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => PValue::I64(v.as_i64().unwrap_or(0)),
        Kind::Uint32 | Kind::Fixed32 => PValue::U32(v.as_u64().unwrap_or(0) as u32),
        Kind::Uint64 | Kind::Fixed64 => PValue::U64(v.as_u64().unwrap_or(0)),
        Kind::Float => PValue::F32(v.as_f64().unwrap_or(0.0) as f32),
        Kind::Double => PValue::F64(v.as_f64().unwrap_or(0.0)),
        Kind::String => PValue::String(match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
        Kind::Bytes => PValue::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .map_err(|e| format!("bytes: {e}"))?
                .into(),
        ),
        Kind::Enum(_) => PValue::EnumNumber(v.as_i64().unwrap_or(0) as i32),
        Kind::Message(d) => PValue::Message(from_json(d, v)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_round_trips_with_the_kubernetes_json_forms() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "resourceVersion": "42",
                         "creationTimestamp": "2026-12-06T10:11:12Z",
                         "annotations": {"k8s.v1.cni.cncf.io/networks": "a,b"}, "generation": 3},
            "spec": {"nodeName": "node-a", "hostNetwork": true,
                     "containers": [{"name": "app", "image": "x",
                                     "ports": [{"containerPort": 80, "protocol": "TCP"}],
                                     "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
                                     "livenessProbe": {"httpGet": {"port": "http", "path": "/"}}}]},
            "status": {"phase": "Pending"}});
        let bytes = encode(Resource::Pods, &pod, false)
            .expect("pods have protobuf")
            .expect("encodes");
        assert!(bytes.starts_with(b"k8s\0"));
        let back = decode(Resource::Pods, &bytes).expect("decodes");
        assert_eq!(back, pod);
    }

    #[test]
    fn bad_bodies_are_400_and_nads_415() {
        assert_eq!(decode(Resource::Pods, b"{}").unwrap_err().code, 400);
        assert_eq!(
            decode(Resource::Pods, b"k8s\0\xff\xff").unwrap_err().code,
            400
        );
        assert_eq!(decode(Resource::Nads, b"k8s\0").unwrap_err().code, 415);
        assert!(encode(Resource::Nads, &json!({}), false).is_none());
    }

    #[test]
    fn micro_time_and_int_or_string() {
        let ev = json!({"metadata": {"name": "e"}, "eventTime": "2026-12-06T10:11:12.123456Z",
                        "count": 2, "involvedObject": {"kind": "Pod", "name": "p"}});
        let back = decode(
            Resource::Events,
            &encode(Resource::Events, &ev, false)
                .expect("events")
                .expect("ok"),
        )
        .expect("ok");
        assert_eq!(back["eventTime"], "2026-12-06T10:11:12.123456Z");
        assert_eq!(back["count"], 2);
    }
}
