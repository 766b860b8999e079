//! NetworkAttachmentDefinition (`k8s.cni.cncf.io/v1`, NPWG §3) and the CNI
//! configuration it names.

use crate::names::ObjectRef;
use plexus_cni::config::NetworkConfigList;
use plexus_cni::CniError;
use serde_json::Value;

/// What Plexus reads of a NAD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nad {
    /// `namespace/name`.
    pub id: ObjectRef,
    /// `spec.config`, when set and non-empty.
    pub config: Option<String>,
    /// The `k8s.v1.cni.cncf.io/resourceName` annotation.
    pub resource_name: Option<String>,
}

impl Nad {
    /// Reads the parts Plexus uses from a NAD object as the API serves it (JSON).
    pub fn from_object(obj: &Value) -> Result<Nad, CniError> {
        let meta = &obj["metadata"];
        let name = meta["name"].as_str().unwrap_or_default();
        let namespace = meta["namespace"].as_str().unwrap_or_default();
        if name.is_empty() || namespace.is_empty() {
            return Err(CniError::decode(
                "NetworkAttachmentDefinition without metadata.name or metadata.namespace",
            ));
        }
        let config = match obj.get("spec").and_then(|s| s.get("config")) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(CniError::invalid_config(format!(
                    "NetworkAttachmentDefinition \"{namespace}/{name}\": spec.config must be a string, got {other}"
                )))
            }
        };
        let resource_name = meta["annotations"][crate::RESOURCE_NAME_ANNOTATION]
            .as_str()
            .map(str::to_string);
        Ok(Nad {
            id: ObjectRef::new(namespace, name),
            config,
            resource_name,
        })
    }

    /// The CNI configuration list of `spec.config` (a single config or a list), with
    /// `name` set to the NAD's name when it has none (NPWG §3.4.2). `None` when the NAD
    /// has no config: the network is then looked up on disk by the NAD's name (§3.4.1).
    pub fn network_config(&self) -> Result<Option<NetworkConfigList>, CniError> {
        let Some(cfg) = &self.config else {
            return Ok(None);
        };
        let ctx = || format!("NetworkAttachmentDefinition \"{}\": spec.config", self.id);
        let mut v: Value = serde_json::from_str(cfg)
            .map_err(|e| CniError::invalid_config(format!("{}: is not valid JSON: {e}", ctx())))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| CniError::invalid_config(format!("{}: is not a JSON object", ctx())))?;
        if obj
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            obj.insert("name".into(), Value::String(self.id.name.clone()));
        }
        let bytes = v.to_string();
        NetworkConfigList::from_bytes_any(bytes.as_bytes())
            .map(Some)
            .map_err(|e| e.context(ctx()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nad(config: Value) -> Nad {
        Nad::from_object(
            &json!({"metadata": {"name": "mv", "namespace": "ns"}, "spec": {"config": config}}),
        )
        .unwrap()
    }

    #[test]
    fn single_and_list_with_name_injection() {
        let l = nad(json!(
            r#"{"cniVersion":"1.0.0","type":"macvlan","master":"eth0"}"#
        ))
        .network_config()
        .unwrap()
        .unwrap();
        assert_eq!(l.name, "mv");
        assert_eq!(l.plugins[0].raw()["master"], "eth0");
        let l = nad(json!(
            r#"{"cniVersion":"1.0.0","name":"own","plugins":[{"type":"bridge"},{"type":"tuning"}]}"#
        ))
        .network_config()
        .unwrap()
        .unwrap();
        assert_eq!((l.name.as_str(), l.plugins.len()), ("own", 2));
        let l = nad(json!(
            r#"{"cniVersion":"1.0.0","name":"","plugins":[{"type":"bridge"}]}"#
        ))
        .network_config()
        .unwrap()
        .unwrap();
        assert_eq!(l.name, "mv");
    }

    #[test]
    fn no_config_means_disk_lookup() {
        let n = Nad::from_object(&json!({"metadata": {"name": "mv", "namespace": "ns"}})).unwrap();
        assert!(n.network_config().unwrap().is_none());
        assert!(nad(json!("  ")).network_config().unwrap().is_none());
    }

    #[test]
    fn bad_configs_name_the_nad() {
        for (cfg, needle) in [
            (json!("{not json"), "is not valid JSON"),
            (json!("[1]"), "is not a JSON object"),
            (
                json!(r#"{"cniVersion":"1.0.0","plugins":[{"ipam":{}}]}"#),
                "no \"type\"",
            ),
        ] {
            let e = nad(cfg).network_config().unwrap_err();
            assert_eq!(e.code, 7);
            assert!(
                e.msg
                    .contains("NetworkAttachmentDefinition \"ns/mv\": spec.config")
                    && e.msg.contains(needle),
                "{}",
                e.msg
            );
        }
        let e = Nad::from_object(
            &json!({"metadata": {"name": "mv", "namespace": "ns"}, "spec": {"config": 5}}),
        )
        .unwrap_err();
        assert!(e.msg.contains("must be a string"));
    }
}
