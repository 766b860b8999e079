//! The plugin configuration: every key of Multus's thin-plugin NetConf with the same
//! meanings and defaults (a Multus config with `"type": "plexus"` works unchanged), plus
//! Plexus's own keys under `plexus`. Unknown keys are ignored, as Multus ignores them;
//! a known key of the wrong type is an error naming the key.

use plexus_cni::{CniError, Result};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Log rotation options (`logOptions`), accepted for compatibility.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LogOptions {
    /// Days to keep.
    pub max_age: Option<u32>,
    /// Megabytes per file.
    pub max_size: Option<u32>,
    /// Files to keep.
    pub max_backups: Option<u32>,
    /// Compress rotated files.
    pub compress: Option<bool>,
}

/// Local mode: NADs from files and status to files, for hosts without Kubernetes.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LocalConf {
    /// Directory of NAD manifests (YAML or JSON, one or several documents per file).
    pub nad_dir: PathBuf,
    /// Directory where `<namespace>_<pod>.json` network-status files are written.
    pub status_dir: PathBuf,
    /// Refuse an ADD whose `CNI_ARGS` name a pod but carry neither `PLEXUS_NETWORKS`
    /// nor `PLEXUS_DEFAULT_NETWORK`, instead of attaching the default network alone: a
    /// container restarted by a runtime that did not keep its `CNI_ARGS` fails with a
    /// message instead of silently losing its other networks (`PLEXUS_NETWORKS=` selects
    /// none on purpose).
    #[serde(default)]
    pub require_selection: bool,
}

/// Plexus's own keys (`"plexus": {...}`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PlexusConf {
    /// Local mode; when set, no Kubernetes API is used.
    pub local: Option<LocalConf>,
    /// Time limit of one API request, in milliseconds.
    pub api_timeout_ms: u64,
    /// Attempts of a read that fails transiently.
    pub api_retries: u32,
    /// How long ADD, STATUS and GC wait for `readinessindicatorfile`, in seconds.
    pub readiness_timeout_seconds: u64,
    /// Time limit of one delegate plugin execution, in seconds.
    pub delegate_timeout_seconds: u64,
    /// Directory of CNI device-info files (device-info-spec §4.2).
    pub device_info_dir: PathBuf,
    /// Start each delegate's process ahead of its turn (it gets its configuration, and
    /// acts, only in its turn).
    pub prestart_delegates: bool,
    /// Directory of the device plugins' device-info files (device-info-spec §4.1).
    pub device_plugin_info_dir: PathBuf,
    /// The kubelet's PodResources socket, asked for the devices of NADs with a
    /// `k8s.v1.cni.cncf.io/resourceName`.
    pub pod_resources_socket: PathBuf,
    /// The kubelet's device-manager checkpoint, read when the socket is absent.
    pub device_checkpoint_file: PathBuf,
    /// Time limit of the kubelet's answer (connection and call), in milliseconds.
    pub kubelet_timeout_ms: u64,
}

impl Default for PlexusConf {
    fn default() -> Self {
        PlexusConf {
            local: None,
            api_timeout_ms: 10_000,
            api_retries: 5,
            readiness_timeout_seconds: 45,
            delegate_timeout_seconds: 120,
            device_info_dir: PathBuf::from("/var/run/k8s.cni.cncf.io/devinfo/cni"),
            prestart_delegates: true,
            device_plugin_info_dir: PathBuf::from("/var/run/k8s.cni.cncf.io/devinfo/dp"),
            pod_resources_socket: PathBuf::from("/var/lib/kubelet/pod-resources/kubelet.sock"),
            device_checkpoint_file: PathBuf::from(
                "/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint",
            ),
            kubelet_timeout_ms: 10_000,
        }
    }
}

fn d_conf_dir() -> PathBuf {
    "/etc/cni/multus/net.d".into()
}
/// Multus's default `cniDir`.
pub const DEFAULT_CNI_DIR: &str = "/var/lib/cni/multus";
/// Multus's default `binDir`.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";

fn d_cni_dir() -> PathBuf {
    DEFAULT_CNI_DIR.into()
}
fn d_bin_dir() -> PathBuf {
    DEFAULT_BIN_DIR.into()
}
fn d_multus_ns() -> String {
    "kube-system".into()
}
fn d_system_ns() -> Vec<String> {
    vec!["kube-system".into()]
}

/// The plugin configuration (stdin of `plexus`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Plexus's own spec version; the returned result is converted to it.
    pub cni_version: String,
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// `plexus` (or `multus` in a Multus config kept as it is).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// Declared capabilities (so the runtime fills `runtimeConfig`).
    #[serde(default)]
    pub capabilities: Map<String, Value>,
    /// What the runtime passed; all of it goes to the default network only (D3).
    #[serde(default)]
    pub runtime_config: Map<String, Value>,
    /// When Plexus itself is chained.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// On-disk lookup directory for NADs without `spec.config` and named networks.
    #[serde(default = "d_conf_dir")]
    pub conf_dir: PathBuf,
    /// State and libcni result cache directory.
    #[serde(default = "d_cni_dir")]
    pub cni_dir: PathBuf,
    /// Searched for delegate binaries before `CNI_PATH`.
    #[serde(default = "d_bin_dir")]
    pub bin_dir: PathBuf,
    /// Kubeconfig path; without it the in-cluster config is used when available.
    #[serde(default)]
    pub kubeconfig: Option<String>,
    /// Inline delegate configurations; the first is the cluster default network.
    #[serde(default)]
    pub delegates: Vec<Value>,
    /// The default network: NAD name, CNI network name, directory or file path.
    #[serde(default)]
    pub cluster_network: Option<String>,
    /// Networks attached to every pod (except in `systemNamespaces`).
    #[serde(default)]
    pub default_networks: Vec<String>,
    /// Namespace of `clusterNetwork`/`defaultNetworks` NADs.
    #[serde(default = "d_multus_ns")]
    pub multus_namespace: String,
    /// Namespaces whose pods do not get `defaultNetworks`.
    #[serde(default = "d_system_ns")]
    pub system_namespaces: Vec<String>,
    /// Pods may only select NADs of their own namespace (and the global ones).
    #[serde(default)]
    pub namespace_isolation: bool,
    /// Comma-separated namespaces selectable from anywhere under isolation (default `default`).
    #[serde(default)]
    pub global_namespaces: String,
    /// ADD waits for this file to exist.
    #[serde(rename = "readinessindicatorfile", default)]
    pub readiness_indicator_file: String,
    /// Log file.
    #[serde(default)]
    pub log_file: String,
    /// `debug`, `verbose`, `error` or `panic`.
    #[serde(default)]
    pub log_level: String,
    /// Also log to stderr (default true).
    #[serde(default)]
    pub log_to_stderr: Option<bool>,
    /// Rotation options.
    #[serde(default)]
    pub log_options: Option<LogOptions>,
    /// Keep the state of a failed DEL so a retried DEL still has it.
    #[serde(default)]
    pub retry_delete_on_error: bool,
    /// An extra chain run after every network.
    #[serde(rename = "auxiliaryCNIChainName", default)]
    pub auxiliary_cni_chain_name: String,
    /// Daemon socket directory (thick mode).
    #[serde(default)]
    pub daemon_socket_dir: Option<String>,
    /// Plexus keys.
    #[serde(default)]
    pub plexus: PlexusConf,
}

impl NetConf {
    /// Parses and checks the configuration.
    pub fn parse(bytes: &[u8]) -> Result<NetConf> {
        let conf: NetConf =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes))
                .map_err(|e| {
                    // The key at fault is named: "delegates": invalid type ...
                    let at = e.path().to_string();
                    let why = e.into_inner();
                    match at.as_str() {
                        "" | "." => {
                            CniError::invalid_config(format!("plexus configuration: {why}"))
                        }
                        _ => {
                            CniError::invalid_config(format!("plexus configuration: {at:?}: {why}"))
                        }
                    }
                })?;
        if conf.delegates.is_empty()
            && conf
                .cluster_network
                .as_deref()
                .unwrap_or_default()
                .is_empty()
        {
            return Err(CniError::invalid_config(
                "plexus configuration: either \"delegates\" or \"clusterNetwork\" must be set",
            ));
        }
        if !conf.auxiliary_cni_chain_name.is_empty() {
            plexus_cni::validate::network_name(&conf.auxiliary_cni_chain_name)
                .map_err(|e| e.context("plexus configuration: \"auxiliaryCNIChainName\""))?;
        }
        Ok(conf)
    }

    /// The namespaces selectable from anywhere under isolation.
    pub fn global_namespaces(&self) -> Vec<String> {
        plexus_npwg::names::global_namespaces(&self.global_namespaces)
    }

    /// Time limit of one delegate execution.
    pub fn delegate_timeout(&self) -> Duration {
        Duration::from_secs(self.plexus.delegate_timeout_seconds.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multus_config_with_defaults() {
        let c = NetConf::parse(br#"{"cniVersion":"0.3.1","name":"multus-cni-network","type":"multus","kubeconfig":"/etc/cni/net.d/multus.d/multus.kubeconfig",
            "delegates":[{"cniVersion":"0.3.1","name":"default-cni-network","plugins":[{"type":"flannel"}]}],"unknownKey":1}"#).unwrap();
        assert_eq!(c.conf_dir, PathBuf::from("/etc/cni/multus/net.d"));
        assert_eq!(c.cni_dir, PathBuf::from("/var/lib/cni/multus"));
        assert_eq!(c.bin_dir, PathBuf::from("/opt/cni/bin"));
        assert_eq!(c.multus_namespace, "kube-system");
        assert_eq!(c.system_namespaces, ["kube-system"]);
        assert_eq!(c.global_namespaces(), ["default"]);
        assert_eq!(c.plexus.readiness_timeout_seconds, 45);
        assert!(c.plexus.prestart_delegates);
    }

    #[test]
    fn errors_name_the_key() {
        let e = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","clusterNetwork":"x","namespaceIsolation":"yes"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, 7);
        assert!(
            e.msg.contains("invalid type") && e.msg.contains("bool"),
            "{}",
            e.msg
        );
        for (conf, key) in [
            (
                r#"{"cniVersion":"1.0.0","clusterNetwork":"x","delegates":"x"}"#,
                "\"delegates\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","clusterNetwork":"x","plexus":{"apiRetries":"3"}}"#,
                "\"plexus.apiRetries\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","clusterNetwork":"x","plexus":{"local":{"nadDir":1}}}"#,
                "\"plexus.local.nadDir\"",
            ),
        ] {
            let e = NetConf::parse(conf.as_bytes()).unwrap_err();
            assert_eq!(e.code, 7);
            assert!(e.msg.contains(key), "{key}: {}", e.msg);
        }
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n"}"#).unwrap_err();
        assert!(e.msg.contains("\"delegates\" or \"clusterNetwork\""));
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","clusterNetwork":"x","globalNamespaces":"a, b,"}"#,
        )
        .unwrap();
        assert_eq!(c.global_namespaces(), ["a", "b"]);
    }
}
