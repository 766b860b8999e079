//! The node's CNI configuration: with `multusConfigFile: auto`, find the primary
//! network's configuration in `multusAutoconfigDir` and write `00-plexus.conflist`
//! (atomically, mode 0600) into `cniConfigDir`, pointing at it; rewrite it when the
//! primary changes. The file is never removed, not even at shutdown: the runtime must
//! never fall back to the primary network alone (pods would start without their
//! networks). While the daemon is away the shim waits, then asks to try again later.

use crate::config::DaemonConfig;
use anyhow::{Context, Result};
use plexus_cni::{fsutil, loader};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// Name of the generated file; sorts before any primary config.
pub const FILE_NAME: &str = "00-plexus.conflist";

/// The primary network's configuration file.
pub fn primary(cfg: &DaemonConfig) -> Result<Option<PathBuf>> {
    if let Some(m) = &cfg.master_cni {
        let p = cfg.autoconfig_dir.join(m);
        return Ok(p.is_file().then_some(p));
    }
    let files = loader::conf_files(&cfg.autoconfig_dir, &["conf", "conflist", "json"])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(files.into_iter().find(|f| {
        !f.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("00-plexus"))
    }))
}

/// The generated configuration for `primary`.
pub fn render(cfg: &DaemonConfig, primary: &Path) -> Result<Vec<u8>> {
    let list = loader::from_file(primary)
        .map_err(|e| anyhow::anyhow!("primary network {}: {e}", primary.display()))?;
    let mut caps = Map::new();
    for p in &list.plugins {
        for c in p.capabilities() {
            caps.insert(c.to_string(), Value::Bool(true));
        }
    }
    let mut plugin = json!({"type": "plexus-shim", "clusterNetwork": primary, "daemonSocketDir": cfg.socket_dir});
    if !caps.is_empty() {
        plugin["capabilities"] = Value::Object(caps);
    }
    let doc =
        json!({"cniVersion": cfg.cni_version, "name": "plexus-cni-network", "plugins": [plugin]});
    Ok(serde_json::to_vec_pretty(&doc)?)
}

/// Writes `bytes` to `path` unless it already holds them; true when written.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    fsutil::write_atomic(path, bytes, 0o600, 0o755)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// One pass: generate (or copy) the node's configuration. Returns the path written, if any.
pub fn sync(cfg: &DaemonConfig) -> Result<Option<PathBuf>> {
    if cfg.config_file != "auto" {
        let src = PathBuf::from(&cfg.config_file);
        let name = src
            .file_name()
            .context("multusConfigFile has no file name")?;
        let dst = cfg.cni_config_dir.join(name);
        let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        return Ok(write_if_changed(&dst, &bytes)?.then_some(dst));
    }
    let Some(primary) = primary(cfg)? else {
        tracing::warn!(dir = %cfg.autoconfig_dir.display(), "no primary network configuration yet; keeping the current one");
        return Ok(None);
    };
    let dst = cfg.cni_config_dir.join(FILE_NAME);
    let bytes = render(cfg, &primary)?;
    Ok(write_if_changed(&dst, &bytes)?.then_some(dst))
}

/// Keeps the configuration in step with the primary network, every `period`.
pub async fn run(cfg: std::sync::Arc<DaemonConfig>, period: std::time::Duration) {
    loop {
        match sync(&cfg) {
            Ok(Some(p)) => tracing::info!(file = %p.display(), "node CNI configuration written"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "node CNI configuration"),
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_regenerates_and_skips_its_own_file() {
        let d = tempfile::tempdir().unwrap();
        let raw = json!({"cniVersion": "1.0.0", "multusAutoconfigDir": d.path(), "cniConfigDir": d.path(), "socketDir": "/run/x"});
        let cfg = DaemonConfig::parse(raw.to_string().as_bytes()).unwrap();
        assert!(sync(&cfg).unwrap().is_none(), "nothing to point at yet");
        std::fs::write(d.path().join("10-flannel.conflist"), r#"{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"flannel"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#).unwrap();
        let out = sync(&cfg).unwrap().unwrap();
        assert_eq!(out, d.path().join(FILE_NAME));
        let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(
            v["plugins"][0]["clusterNetwork"],
            json!(d.path().join("10-flannel.conflist"))
        );
        assert_eq!(
            v["plugins"][0]["capabilities"],
            json!({"portMappings": true})
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o600);
        assert!(sync(&cfg).unwrap().is_none(), "unchanged: not rewritten");
        std::fs::write(
            d.path().join("05-calico.conflist"),
            r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"calico"}]}"#,
        )
        .unwrap();
        sync(&cfg).unwrap().unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(
            v["plugins"][0]["clusterNetwork"],
            json!(d.path().join("05-calico.conflist"))
        );
    }
}
