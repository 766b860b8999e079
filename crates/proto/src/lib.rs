//! The shim↔daemon protocol, with Multus's endpoints and bodies (reference §3.13), in
//! one place both binaries use:
//!
//! - `POST /cni`: [`CniRequest`] (the `CNI_*`/`K8S_*` environment and the configuration
//!   from stdin, base64) → 200 with [`AddReply`] for ADD, 200 and an empty body for the
//!   other commands, 400 with the CNI error object, 503 while the daemon is not ready
//!   (nothing was handled: the shim may send it again);
//! - `POST /delegate`: the same body with `interfaceAttributes`, one network for one
//!   interface (what multus-dynamic-networks-controller sends);
//! - `GET /healthz`, `GET /readyz`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The socket's file name in the daemon's socket directory.
pub const SOCKET_NAME: &str = "plexus.sock";
/// The socket directory when the configuration names none.
pub const DEFAULT_SOCKET_DIR: &str = "/run/plexus";
/// The endpoint of CNI requests.
pub const CNI_PATH: &str = "/cni";
/// The endpoint of single-network requests (hot-plug controllers).
pub const DELEGATE_PATH: &str = "/delegate";

/// The socket of the daemon whose socket directory is `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_NAME)
}

/// The body of `POST /cni` and `POST /delegate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniRequest {
    /// The plugin's environment: `CNI_*` and `K8S_*` variables only.
    pub env: BTreeMap<String, String>,
    /// The configuration from stdin, base64 (standard alphabet, padded).
    pub config: String,
    /// `/delegate` only: `ips`, `mac` and `cni-args` of the interface.
    #[serde(
        rename = "interfaceAttributes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub interface_attributes: Option<Map<String, Value>>,
}

impl CniRequest {
    /// The request of a plugin run with `env` and `stdin`: only the `CNI_*` and `K8S_*`
    /// variables are forwarded.
    pub fn new<'a>(env: impl IntoIterator<Item = (&'a String, &'a String)>, stdin: &[u8]) -> Self {
        CniRequest {
            env: env
                .into_iter()
                .filter(|(k, _)| k.starts_with("CNI_") || k.starts_with("K8S_"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            config: base64::engine::general_purpose::STANDARD.encode(stdin),
            interface_attributes: None,
        }
    }

    /// The configuration's bytes; an error naming the field when it is not base64.
    pub fn config_bytes(&self) -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.config)
            .map_err(|e| format!("\"config\" is not base64: {e}"))
    }

    /// The environment variable `k`, empty when absent.
    pub fn var(&self, k: &str) -> &str {
        self.env.get(k).map(String::as_str).unwrap_or_default()
    }
}

/// The body of a successful ADD: the default network's result, as Multus's daemon
/// answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddReply {
    /// The CNI result.
    #[serde(rename = "Result")]
    pub result: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multus_shaped_bodies_round_trip() {
        let env: BTreeMap<String, String> = [
            ("CNI_COMMAND", "ADD"),
            ("K8S_POD_NAME", "p"),
            ("HOME", "/root"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let r = CniRequest::new(&env, b"{\"cniVersion\":\"1.0.0\"}");
        assert_eq!(r.env.len(), 2, "only CNI_ and K8S_ variables travel");
        let wire = serde_json::to_value(&r).unwrap();
        assert_eq!(wire["config"], "eyJjbmlWZXJzaW9uIjoiMS4wLjAifQ==");
        assert!(wire.get("interfaceAttributes").is_none());
        let back: CniRequest = serde_json::from_value(wire).unwrap();
        assert_eq!(back.config_bytes().unwrap(), b"{\"cniVersion\":\"1.0.0\"}");
        assert_eq!(back.var("CNI_COMMAND"), "ADD");
        assert_eq!(back.var("CNI_NETNS"), "");
        let bad = CniRequest {
            config: "%%".into(),
            ..Default::default()
        };
        assert!(bad.config_bytes().unwrap_err().contains("\"config\""));
        // What multus-dynamic-networks-controller sends to /delegate.
        let d: CniRequest = serde_json::from_str(r#"{"env":{"CNI_COMMAND":"ADD"},"config":"e30=","interfaceAttributes":{"ips":["192.0.2.5/24"],"cni-args":{"a":"b"}}}"#).unwrap();
        assert_eq!(d.interface_attributes.unwrap()["ips"][0], "192.0.2.5/24");
        let a: AddReply = serde_json::from_str(r#"{"Result":{"cniVersion":"1.0.0"}}"#).unwrap();
        assert_eq!(a.result["cniVersion"], "1.0.0");
    }
}
