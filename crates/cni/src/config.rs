//! Plugin configurations and network configuration lists (spec §1).
//!
//! Every key is kept, in order: the runtime reads only what it needs and passes the rest
//! through unchanged (CNI-1-3).

use crate::error::{CniError, Result};
use crate::{validate, version};
use serde_json::{Map, Value};

/// One plugin object of a list (or a whole single `.conf`).
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    raw: Map<String, Value>,
}

impl PluginConf {
    /// Takes a JSON object that has a string `type`.
    pub fn from_value(value: Value) -> Result<PluginConf> {
        let Value::Object(raw) = value else {
            return Err(CniError::invalid_config(
                "plugin configuration is not a JSON object",
            ));
        };
        match raw.get("type") {
            Some(Value::String(t)) => validate::plugin_type(t)?,
            Some(other) => {
                return Err(CniError::invalid_config(format!(
                    "plugin \"type\" must be a string, got {other}"
                )))
            }
            None => {
                return Err(CniError::invalid_config(
                    "plugin configuration has no \"type\"",
                ))
            }
        }
        Ok(PluginConf { raw })
    }

    /// Parses bytes as one plugin object.
    pub fn from_bytes(bytes: &[u8]) -> Result<PluginConf> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::decode(format!("plugin configuration is not valid JSON: {e}"))
        })?;
        Self::from_value(v)
    }

    /// The plugin binary name.
    pub fn plugin_type(&self) -> &str {
        self.raw
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The capabilities the plugin declares with `true`.
    pub fn capabilities(&self) -> impl Iterator<Item = &str> {
        self.raw
            .get("capabilities")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| {
                m.iter()
                    .filter(|(_, v)| v.as_bool() == Some(true))
                    .map(|(k, _)| k.as_str())
            })
    }

    /// True when the plugin declares `cap`.
    pub fn has_capability(&self, cap: &str) -> bool {
        self.capabilities().any(|c| c == cap)
    }

    /// Every key of the object.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    /// Mutable access to the object (the meta-plugin injects `args`, `deviceID`, ...).
    pub fn raw_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.raw
    }

    /// The object as a JSON value.
    pub fn to_value(&self) -> Value {
        Value::Object(self.raw.clone())
    }

    /// Merges `extra` into `args.cni` (the keys of `extra` win), as Multus passes a
    /// selection element's `cni-args`. An `args` or `args.cni` that is not an object is
    /// replaced by one: a plugin could not have read it as CNI args anyway.
    pub fn merge_cni_args(&mut self, extra: &Map<String, Value>) {
        if extra.is_empty() {
            return;
        }
        let args = self
            .raw
            .entry("args")
            .or_insert_with(|| Value::Object(Map::new()));
        if !args.is_object() {
            *args = Value::Object(Map::new());
        }
        let Some(args) = args.as_object_mut() else {
            return;
        };
        let cni = args
            .entry("cni")
            .or_insert_with(|| Value::Object(Map::new()));
        if !cni.is_object() {
            *cni = Value::Object(Map::new());
        }
        if let Some(m) = cni.as_object_mut() {
            for (k, v) in extra {
                m.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A network configuration list, with its negotiated version.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// Network name, validated for use in paths.
    pub name: String,
    /// The version negotiated from `cniVersion` and `cniVersions`.
    pub cni_version: String,
    /// Runtimes must not call CHECK.
    pub disable_check: bool,
    /// Runtimes must not call GC.
    pub disable_gc: bool,
    /// Do not load sibling-directory plugins.
    pub load_only_inlined_plugins: bool,
    /// The plugins, in order.
    pub plugins: Vec<PluginConf>,
    /// Top-level keys other than `plugins`, as written.
    pub top: Map<String, Value>,
}

fn read_bool(top: &Map<String, Value>, key: &str) -> Result<bool> {
    match top.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        // libcni also accepts the strings "true"/"false".
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(CniError::invalid_config(format!(
            "{key:?} must be a boolean, got {other}"
        ))),
    }
}

fn read_string(top: &Map<String, Value>, key: &str) -> Result<String> {
    match top.get(key) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(CniError::invalid_config(format!(
            "{key:?} must be a string, got {other}"
        ))),
    }
}

fn read_versions(top: &Map<String, Value>) -> Result<Option<Vec<String>>> {
    match top.get("cniVersions") {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    CniError::invalid_config(format!(
                        "\"cniVersions\"[{i}] must be a string, got {v}"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(other) => Err(CniError::invalid_config(format!(
            "\"cniVersions\" must be a list, got {other}"
        ))),
    }
}

impl NetworkConfigList {
    /// Parses a `.conflist` document. `plugins` may be absent only when plugins will be
    /// loaded from the sibling directory ([`crate::loader`] checks that some exist).
    pub fn from_bytes(bytes: &[u8]) -> Result<NetworkConfigList> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode(format!("configuration list is not valid JSON: {e}")))?;
        Self::from_value(v)
    }

    /// Parses a configuration list given as a JSON value.
    pub fn from_value(v: Value) -> Result<NetworkConfigList> {
        let Value::Object(mut top) = v else {
            return Err(CniError::invalid_config(
                "configuration list is not a JSON object",
            ));
        };
        let name = read_string(&top, "name")?;
        validate::network_name(&name)?;
        let declared = read_string(&top, "cniVersion")?;
        let versions = read_versions(&top)?;
        let cni_version = version::negotiate(&declared, versions.as_deref())?;
        check_version(&name, &cni_version)?;
        let load_only_inlined_plugins = read_bool(&top, "loadOnlyInlinedPlugins")?;
        let plugins = match top.remove("plugins") {
            None if load_only_inlined_plugins => {
                return Err(CniError::invalid_config(format!(
                    "network {name:?}: \"loadOnlyInlinedPlugins\" is true and there is no \"plugins\" key"
                )))
            }
            None => Vec::new(),
            Some(Value::Array(items)) if items.is_empty() => {
                return Err(CniError::invalid_config(format!("network {name:?}: \"plugins\" is empty")))
            }
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, p)| PluginConf::from_value(p).map_err(|e| e.context(format!("network {name:?}: plugins[{i}]"))))
                .collect::<Result<Vec<_>>>()?,
            Some(other) => {
                return Err(CniError::invalid_config(format!("network {name:?}: \"plugins\" must be a list, got {other}")))
            }
        };
        Ok(NetworkConfigList {
            disable_check: read_bool(&top, "disableCheck")?,
            disable_gc: read_bool(&top, "disableGC")?,
            load_only_inlined_plugins,
            name,
            cni_version,
            plugins,
            top,
        })
    }

    /// Wraps a single plugin configuration (a `.conf` file) as a list of one, as
    /// libcni's `ConfListFromConf` does: the list takes the conf's `name` and `cniVersion`.
    pub fn from_single(conf: PluginConf) -> Result<NetworkConfigList> {
        let mut top = Map::new();
        for key in ["cniVersion", "name"] {
            if let Some(v) = conf.raw().get(key) {
                top.insert(key.to_string(), v.clone());
            }
        }
        top.insert("plugins".into(), Value::Array(vec![conf.to_value()]));
        Self::from_value(Value::Object(top))
    }

    /// Parses a document that is either a list (has `plugins`) or a single plugin
    /// configuration (has a top-level `type`), the rule NAD configs follow.
    pub fn from_bytes_any(bytes: &[u8]) -> Result<NetworkConfigList> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode(format!("configuration is not valid JSON: {e}")))?;
        if v.get("type").is_some() && v.get("plugins").is_none() {
            Self::from_single(PluginConf::from_value(v)?)
        } else {
            Self::from_value(v)
        }
    }

    /// The list as a JSON document (top-level keys, then `plugins`).
    pub fn to_value(&self) -> Value {
        let mut m = self.top.clone();
        m.insert(
            "plugins".into(),
            Value::Array(self.plugins.iter().map(PluginConf::to_value).collect()),
        );
        Value::Object(m)
    }
}

fn check_version(name: &str, v: &str) -> Result<()> {
    if v.is_empty() {
        return Err(CniError::invalid_config(format!(
            "network {name:?} has no \"cniVersion\""
        )));
    }
    if !version::is_supported(v) {
        return Err(CniError::incompatible_version(format!(
            "network {name:?}: cniVersion {v:?} is not supported (supported: {})",
            version::SUPPORTED.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cni_args_merge_into_whatever_args_holds() {
        let extra: Map<String, Value> = serde_json::from_value(json!({"a": 1})).unwrap();
        for args in [
            json!(null),
            json!("x"),
            json!({"cni": 7}),
            json!({"cni": {"b": 2}}),
        ] {
            let mut p = PluginConf::from_value(json!({"type": "t", "args": args})).unwrap();
            p.merge_cni_args(&extra);
            assert_eq!(p.to_value()["args"]["cni"]["a"], 1, "{args}");
        }
        let mut p =
            PluginConf::from_value(json!({"type": "t", "args": {"cni": {"b": 2}}})).unwrap();
        p.merge_cni_args(&extra);
        assert_eq!(p.to_value()["args"]["cni"], json!({"b": 2, "a": 1}));
    }

    #[test]
    fn list_keeps_unknown_keys_in_order() {
        let doc = br#"{"cniVersion":"1.0.0","name":"n","zeta":1,"plugins":[{"type":"bridge","zz":true,"aa":{"x":1},"capabilities":{"mac":true,"ips":false}}],"alpha":2}"#;
        let l = NetworkConfigList::from_bytes(doc).unwrap();
        assert_eq!(l.plugins[0].plugin_type(), "bridge");
        let keys: Vec<_> = l.plugins[0].raw().keys().cloned().collect();
        assert_eq!(keys, ["type", "zz", "aa", "capabilities"]);
        assert_eq!(l.plugins[0].capabilities().collect::<Vec<_>>(), ["mac"]);
        assert_eq!(l.top["zeta"], json!(1));
        assert_eq!(l.top["alpha"], json!(2));
    }

    #[test]
    fn flags_accept_bool_and_string() {
        let l = NetworkConfigList::from_value(json!({"cniVersion":"1.1.0","name":"n","disableCheck":"True","disableGC":true,"plugins":[{"type":"x"}]})).unwrap();
        assert!(l.disable_check && l.disable_gc && !l.load_only_inlined_plugins);
        let e = NetworkConfigList::from_value(
            json!({"cniVersion":"1.1.0","name":"n","disableCheck":"yes","plugins":[{"type":"x"}]}),
        )
        .unwrap_err();
        assert_eq!(e.code, 7);
    }

    #[test]
    fn versions_negotiated() {
        let l = NetworkConfigList::from_value(json!({"cniVersion":"0.4.0","cniVersions":["1.0.0","1.1.0","3.0.0"],"name":"n","plugins":[{"type":"x"}]})).unwrap();
        assert_eq!(l.cni_version, "1.1.0");
        let e = NetworkConfigList::from_value(
            json!({"cniVersion":"9.9.9","name":"n","plugins":[{"type":"x"}]}),
        )
        .unwrap_err();
        assert_eq!(e.code, 1);
    }

    #[test]
    fn bad_lists() {
        let cases = [
            (
                json!({"cniVersion":"1.0.0","name":"n","plugins":[]}),
                7,
                "empty",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","plugins":[{"ipam":{}}]}),
                7,
                "no \"type\"",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"../x","plugins":[{"type":"x"}]}),
                7,
                "invalid",
            ),
            (
                json!({"cniVersion":"1.0.0","plugins":[{"type":"x"}]}),
                7,
                "no \"name\"",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../sh"}]}),
                7,
                "without '/'",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","loadOnlyInlinedPlugins":true}),
                7,
                "no \"plugins\"",
            ),
            (
                json!({"name":"n","plugins":[{"type":"x"}]}),
                7,
                "cniVersion",
            ),
        ];
        for (doc, code, needle) in cases {
            let e = NetworkConfigList::from_value(doc.clone()).unwrap_err();
            assert_eq!(e.code, code, "{doc}");
            assert!(e.msg.contains(needle), "{doc}: {}", e.msg);
        }
        assert_eq!(NetworkConfigList::from_bytes(b"{").unwrap_err().code, 6);
    }

    #[test]
    fn single_conf_becomes_list() {
        let l = NetworkConfigList::from_bytes_any(
            br#"{"cniVersion":"0.3.1","name":"m","type":"macvlan","master":"eth0"}"#,
        )
        .unwrap();
        assert_eq!(l.name, "m");
        assert_eq!(l.cni_version, "0.3.1");
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0].raw()["master"], json!("eth0"));
    }
}
