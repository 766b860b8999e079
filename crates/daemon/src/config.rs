//! The daemon configuration, compatible with Multus's daemon-config.json (reference
//! §3.3): the daemon's own keys, the config-generation keys, and any plugin key, which
//! is overlaid onto every request's configuration.

use anyhow::{bail, Context, Result};
use plexus_engine::config::{PlexusConf, DEFAULT_BIN_DIR, DEFAULT_CNI_DIR};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Keys that never overlay a request: they belong to the request itself.
const NOT_OVERLAID: &[&str] = &["cniVersion", "name", "type", "hotplug"];

/// The daemon configuration.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Every key as written (overlaid onto requests, except [`NOT_OVERLAID`]).
    pub raw: Map<String, Value>,
    /// Directory of the socket (`<socketDir>/plexus.sock`).
    pub socket_dir: PathBuf,
    /// Prometheus metrics port; none disables metrics.
    pub metrics_port: Option<u16>,
    /// Address the metrics listen on.
    pub metrics_bind: String,
    /// Connections served at once (`connectionLimit`).
    pub connection_limit: usize,
    /// CNI requests executed at once.
    pub max_concurrent_requests: usize,
    /// Execute delegates chrooted here (`chrootDir`).
    pub chroot_dir: Option<PathBuf>,
    /// `auto` (generate) or a file to install as the node's CNI config.
    pub config_file: String,
    /// Where the primary network's config is searched.
    pub autoconfig_dir: PathBuf,
    /// Explicit primary config file name.
    pub master_cni: Option<String>,
    /// Where the generated config is written.
    pub cni_config_dir: PathBuf,
    /// Spec version of the generated config.
    pub cni_version: String,
    /// This node (`spec.nodeName` of the pods watched).
    pub node_name: Option<String>,
    /// Kubeconfig of the daemon; in-cluster config when absent.
    pub kubeconfig: Option<PathBuf>,
    /// How long a new connection may take to send its request.
    pub request_read_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Users besides root who may use the socket (`plexus.socketAllowedUids`).
    pub socket_uids: Vec<u32>,
    /// Whether `AddedInterface` events are recorded (one API write each).
    pub added_interface_events: bool,
    /// Log level (`debug`, `verbose`, `error`).
    pub log_level: String,
    /// The engine's `plexus` keys, parsed as every request's (API limits, delegate
    /// timeout...): the daemon's own API requests and `/delegate` follow them too.
    pub engine: PlexusConf,
    /// `binDir`, searched first for delegates (`/delegate` too).
    pub bin_dir: PathBuf,
    /// `cniDir`: state and libcni's result cache.
    pub cni_dir: PathBuf,
    /// Hot-plug: follow running pods' selection annotations (`hotplug`, default true).
    pub hotplug: bool,
}

fn s(raw: &Map<String, Value>, k: &str) -> Option<String> {
    raw.get(k)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn n(raw: &Map<String, Value>, k: &str) -> Result<Option<u64>> {
    match raw.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).with_context(|| {
            format!("daemon config: {k:?} must be a non-negative integer, got {v}")
        }),
    }
}

impl DaemonConfig {
    /// Reads the file.
    pub fn load(path: &Path) -> Result<DaemonConfig> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading daemon config {}", path.display()))?;
        Self::parse(&bytes).with_context(|| format!("daemon config {}", path.display()))
    }

    /// Parses the JSON document.
    // Long on purpose: one key after another, each with its default and check.
    pub fn parse(bytes: &[u8]) -> Result<DaemonConfig> {
        let v: Value = serde_json::from_slice(bytes).context("not valid JSON")?;
        let Value::Object(raw) = v else {
            bail!("not a JSON object")
        };
        let plexus = raw
            .get("plexus")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let engine: PlexusConf =
            serde_json::from_value(Value::Object(plexus.clone())).context("\"plexus\"")?;
        let connection_limit = n(&raw, "connectionLimit")?.unwrap_or(64) as usize;
        if connection_limit == 0 {
            bail!("\"connectionLimit\" must be greater than 0");
        }
        let config_file = s(&raw, "multusConfigFile").unwrap_or_else(|| "auto".into());
        let cni_version = s(&raw, "cniVersion").unwrap_or_default();
        if config_file == "auto" && cni_version.is_empty() {
            bail!("\"cniVersion\" is required when \"multusConfigFile\" is \"auto\"");
        }
        let metrics_port = match n(&raw, "metricsPort")? {
            Some(p) if p > 0 && p <= u64::from(u16::MAX) => Some(p as u16),
            Some(p) => bail!("\"metricsPort\" {p} is not a port"),
            None => None,
        };
        Ok(DaemonConfig {
            socket_dir: s(&raw, "socketDir")
                .map(PathBuf::from)
                .unwrap_or_else(|| plexus_proto::DEFAULT_SOCKET_DIR.into()),
            metrics_port,
            // The node's loopback only: the DaemonSet runs in the host's network, where
            // any other address is reachable from the whole network.
            metrics_bind: s(&plexus, "metricsBindAddress").unwrap_or_else(|| "127.0.0.1".into()),
            connection_limit,
            max_concurrent_requests: n(&plexus, "maxConcurrentRequests")?.unwrap_or(32).max(1)
                as usize,
            chroot_dir: s(&raw, "chrootDir").map(PathBuf::from),
            config_file,
            autoconfig_dir: s(&raw, "multusAutoconfigDir")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/etc/cni/net.d".into()),
            master_cni: s(&raw, "multusMasterCNI"),
            cni_config_dir: s(&raw, "cniConfigDir")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/etc/cni/net.d".into()),
            cni_version,
            node_name: s(&raw, "nodeName")
                .or_else(|| std::env::var("PLEXUS_NODE_NAME").ok())
                .or_else(|| std::env::var("MULTUS_NODE_NAME").ok()),
            kubeconfig: s(&raw, "kubeconfig").map(PathBuf::from),
            request_read_timeout: Duration::from_millis(
                n(&plexus, "requestReadTimeoutMs")?.unwrap_or(5_000),
            ),
            shutdown_grace: Duration::from_secs(n(&plexus, "shutdownGraceSeconds")?.unwrap_or(30)),
            max_body_bytes: n(&plexus, "maxRequestBytes")?.unwrap_or(1 << 20) as usize,
            socket_uids: match plexus.get("socketAllowedUids") {
                None | Some(Value::Null) => Vec::new(),
                Some(v) => serde_json::from_value(v.clone()).with_context(|| {
                    format!("\"plexus.socketAllowedUids\" must be a list of uids, got {v}")
                })?,
            },
            added_interface_events: plexus
                .get("addedInterfaceEvents")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            log_level: s(&raw, "logLevel").unwrap_or_else(|| "verbose".into()),
            engine,
            bin_dir: s(&raw, "binDir")
                .unwrap_or_else(|| DEFAULT_BIN_DIR.into())
                .into(),
            cni_dir: s(&raw, "cniDir")
                .unwrap_or_else(|| DEFAULT_CNI_DIR.into())
                .into(),
            hotplug: match raw.get("hotplug") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(v) => bail!("\"hotplug\" must be true or false, got {v}"),
            },
            raw,
        })
    }

    /// The socket path.
    pub fn socket_path(&self) -> PathBuf {
        plexus_proto::socket_path(&self.socket_dir)
    }

    /// Overlays the daemon's keys onto a request's configuration (Multus's
    /// `overrideCNIConfigWithServerConfig`): the node's operator has the last word.
    pub fn overlay(&self, request: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let mut v: Value = serde_json::from_slice(request)
            .map_err(|e| format!("request configuration is not valid JSON: {e}"))?;
        let obj = v
            .as_object_mut()
            .ok_or("request configuration is not a JSON object")?;
        for (k, val) in &self.raw {
            if !NOT_OVERLAID.contains(&k.as_str()) {
                if k == "plexus" {
                    let mine = obj
                        .entry("plexus")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let (Some(m), Some(d)) = (mine.as_object_mut(), val.as_object()) {
                        for (pk, pv) in d {
                            m.insert(pk.clone(), pv.clone());
                        }
                    }
                } else {
                    obj.insert(k.clone(), val.clone());
                }
            }
        }
        Ok(v.to_string().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multus_daemon_config() {
        let c = DaemonConfig::parse(br#"{"chrootDir":"/hostroot","cniVersion":"0.3.1","logLevel":"verbose","cniConfigDir":"/host/etc/cni/net.d",
            "multusAutoconfigDir":"/host/etc/cni/net.d","multusConfigFile":"auto","socketDir":"/host/run/plexus/","metricsPort":9091,"connectionLimit":10,
            "namespaceIsolation":true}"#).unwrap();
        assert_eq!(
            c.socket_path(),
            PathBuf::from("/host/run/plexus/plexus.sock")
        );
        assert_eq!((c.metrics_port, c.connection_limit), (Some(9091), 10));
        let o: Value = serde_json::from_slice(&c.overlay(br#"{"cniVersion":"1.0.0","name":"n","type":"plexus-shim","namespaceIsolation":false}"#).unwrap()).unwrap();
        assert_eq!(o["namespaceIsolation"], true);
        assert_eq!(o["cniVersion"], "1.0.0");
        assert!(c.overlay(b"[1]").is_err());
    }

    #[test]
    fn bad_configs() {
        assert!(DaemonConfig::parse(br#"{"multusConfigFile":"auto"}"#)
            .unwrap_err()
            .to_string()
            .contains("cniVersion"));
        assert!(DaemonConfig::parse(br#"{"cniVersion":"1.0.0","connectionLimit":0}"#).is_err());
        assert!(DaemonConfig::parse(br#"{"cniVersion":"1.0.0","metricsPort":"x"}"#).is_err());
        assert!(
            DaemonConfig::parse(br#"{"cniVersion":"1.0.0","hotplug":"no"}"#)
                .unwrap_err()
                .to_string()
                .contains("\"hotplug\"")
        );
        let e = DaemonConfig::parse(br#"{"cniVersion":"1.0.0","plexus":{"apiRetries":"x"}}"#)
            .unwrap_err();
        assert!(format!("{e:#}").contains("\"plexus\""), "{e:#}");
    }

    #[test]
    fn engine_keys_parsed_as_requests_parse_them() {
        let c = DaemonConfig::parse(
            br#"{"cniVersion":"1.0.0","binDir":"/b","plexus":{"apiRetries":2,"apiTimeoutMs":250,"metricsBindAddress":"127.0.0.1"}}"#,
        )
        .unwrap();
        assert_eq!((c.engine.api_retries, c.engine.api_timeout_ms), (2, 250));
        assert_eq!(c.bin_dir, PathBuf::from("/b"));
        assert_eq!(c.cni_dir, PathBuf::from(DEFAULT_CNI_DIR));
        let d = DaemonConfig::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap();
        assert_eq!(d.engine, PlexusConf::default());
        assert!(d.hotplug, "hot-plug is on by default");
        let off = DaemonConfig::parse(br#"{"cniVersion":"1.0.0","hotplug":false}"#).unwrap();
        assert!(!off.hotplug);
        let o: Value = serde_json::from_slice(&off.overlay(b"{}").unwrap()).unwrap();
        assert!(o.get("hotplug").is_none(), "a daemon key, not a request's");
        assert_eq!(
            d.metrics_bind, "127.0.0.1",
            "metrics on the node's loopback by default"
        );
    }
}
