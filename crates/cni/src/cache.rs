//! The result cache in libcni's format, so tools that read libcni's cache read ours:
//! `<dir>/results/<networkName>-<containerID>-<ifName>`, kind `cniCacheV1`.

use crate::error::{CniError, Result};
use crate::fsutil;
use crate::validate;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

const KIND: &str = "cniCacheV1";

/// One cached attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    /// Always `cniCacheV1`.
    pub kind: String,
    /// `CNI_CONTAINERID`.
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The network configuration bytes used for ADD (base64 in the file, as Go's `[]byte`).
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    /// `CNI_IFNAME`.
    pub if_name: String,
    /// The network name.
    pub network_name: String,
    /// `CNI_NETNS`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    /// `CNI_ARGS` pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<(String, String)>,
    /// Capability arguments given to the runtime.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub capability_args: Map<String, Value>,
    /// The final ADD result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl CacheEntry {
    /// A new entry for one attachment.
    pub fn new(
        network_name: &str,
        container_id: &str,
        if_name: &str,
        config: Vec<u8>,
    ) -> CacheEntry {
        CacheEntry {
            kind: KIND.into(),
            container_id: container_id.into(),
            config,
            if_name: if_name.into(),
            network_name: network_name.into(),
            netns: String::new(),
            cni_args: Vec::new(),
            capability_args: Map::new(),
            result: None,
        }
    }
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// The cache directory (`cacheDir`; libcni's default is `/var/lib/cni`).
#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    /// A cache rooted at `dir`; files live in `dir/results`.
    pub fn new(dir: impl Into<PathBuf>) -> ResultCache {
        ResultCache { dir: dir.into() }
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of one attachment; every component is validated so no name escapes the directory.
    pub fn path(&self, network: &str, container_id: &str, ifname: &str) -> Result<PathBuf> {
        validate::network_name(network)?;
        validate::container_id(container_id)?;
        validate::env_ifname(ifname)?;
        Ok(self
            .dir
            .join("results")
            .join(format!("{network}-{container_id}-{ifname}")))
    }

    /// Writes an entry atomically (file 0600, directories 0700).
    pub fn save(&self, entry: &CacheEntry) -> Result<()> {
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name)?;
        let bytes = serde_json::to_vec(entry).map_err(|e| CniError::internal(e.to_string()))?;
        // As libcni: replaced atomically, not fsynced (Plexus's state file is durable).
        fsutil::write_replace(&path, &bytes, 0o600, 0o700, false)
            .map_err(|e| CniError::io(format!("cannot write result cache {}: {e}", path.display())))
    }

    /// Reads an entry; `None` when there is none. A file in the legacy format (a bare
    /// result) yields an entry holding only the result.
    pub fn load(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CacheEntry>> {
        let path = self.path(network, container_id, ifname)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CniError::io(format!("cannot read {}: {e}", path.display()))),
        };
        parse_entry(&bytes, network, container_id, ifname)
            .map(Some)
            .map_err(|e| e.context(path.display()))
    }

    /// Removes an entry; a missing one is success.
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.path(network, container_id, ifname)?;
        fsutil::remove_with_orphans(&path)
            .map_err(|e| CniError::io(format!("cannot remove {}: {e}", path.display())))
    }

    /// Every cached attachment of `network` (libcni `GetCachedAttachments`). Files that
    /// cannot be parsed are skipped: a name with dashes is ambiguous, the content is not.
    pub fn attachments(&self, network: &str) -> Result<Vec<CacheEntry>> {
        validate::network_name(network)?;
        let dir = self.dir.join("results");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CniError::io(format!("cannot read {}: {e}", dir.display()))),
        };
        let prefix = format!("{network}-");
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&prefix) {
                continue;
            }
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            if let Ok(e) = serde_json::from_slice::<CacheEntry>(&bytes) {
                if e.kind == KIND && e.network_name == network {
                    out.push(e);
                }
            }
        }
        out.sort_by(|a, b| (&a.container_id, &a.if_name).cmp(&(&b.container_id, &b.if_name)));
        Ok(out)
    }
}

fn parse_entry(
    bytes: &[u8],
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<CacheEntry> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| CniError::decode(format!("corrupt cache file: {e}")))?;
    if v.get("kind").is_some() {
        let e: CacheEntry = serde_json::from_value(v)
            .map_err(|e| CniError::decode(format!("corrupt cache file: {e}")))?;
        if e.kind != KIND {
            return Err(CniError::decode(format!("unknown cache kind {:?}", e.kind)));
        }
        return Ok(e);
    }
    let mut e = CacheEntry::new(network, container_id, ifname, Vec::new());
    e.result = Some(v);
    Ok(e)
}

/// Decodes the base64 `config` of a cache file written by libcni or by us.
pub fn decode_config(s: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| CniError::decode(format!("cache config is not base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn libcni_file_shape_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        let mut e = CacheEntry::new("net-a", "ctr1", "eth0", br#"{"name":"net-a"}"#.to_vec());
        e.netns = "/run/netns/x".into();
        e.cni_args = vec![("K8S_POD_NAME".into(), "p".into())];
        e.result = Some(json!({"cniVersion":"1.0.0"}));
        c.save(&e).unwrap();
        let raw: Value = serde_json::from_slice(
            &std::fs::read(d.path().join("results/net-a-ctr1-eth0")).unwrap(),
        )
        .unwrap();
        assert_eq!(raw["kind"], "cniCacheV1");
        assert_eq!(raw["containerId"], "ctr1");
        assert_eq!(raw["ifName"], "eth0");
        assert_eq!(raw["networkName"], "net-a");
        assert_eq!(raw["cniArgs"], json!([["K8S_POD_NAME", "p"]]));
        assert_eq!(
            decode_config(raw["config"].as_str().unwrap()).unwrap(),
            br#"{"name":"net-a"}"#
        );
        assert_eq!(c.load("net-a", "ctr1", "eth0").unwrap().unwrap(), e);
        // "net" is a prefix of "net-a": attachments() must not mix them up.
        assert!(c.attachments("net").unwrap().is_empty());
        assert_eq!(c.attachments("net-a").unwrap().len(), 1);
        c.remove("net-a", "ctr1", "eth0").unwrap();
        assert!(c.load("net-a", "ctr1", "eth0").unwrap().is_none());
    }

    #[test]
    fn reads_a_file_written_by_libcni() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("results")).unwrap();
        let go = r#"{"kind":"cniCacheV1","containerId":"abc","config":"eyJuYW1lIjoibiJ9","ifName":"eth0","networkName":"n","netns":"/var/run/netns/t","cniArgs":[["IgnoreUnknown","1"]],"capabilityArgs":{"portMappings":[]},"result":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"192.0.2.2/24"}],"dns":{}}}"#;
        std::fs::write(d.path().join("results/n-abc-eth0"), go).unwrap();
        let e = ResultCache::new(d.path())
            .load("n", "abc", "eth0")
            .unwrap()
            .unwrap();
        assert_eq!(e.config, br#"{"name":"n"}"#);
        assert_eq!(e.cni_args[0].0, "IgnoreUnknown");
        std::fs::write(
            d.path().join("results/n-legacy-eth0"),
            r#"{"cniVersion":"0.3.1"}"#,
        )
        .unwrap();
        let e = ResultCache::new(d.path())
            .load("n", "legacy", "eth0")
            .unwrap()
            .unwrap();
        assert_eq!(e.result.unwrap()["cniVersion"], "0.3.1");
        std::fs::write(d.path().join("results/n-bad-eth0"), "{").unwrap();
        assert_eq!(
            ResultCache::new(d.path())
                .load("n", "bad", "eth0")
                .unwrap_err()
                .code,
            6
        );
    }

    #[test]
    fn hostile_names_never_reach_a_path() {
        let c = ResultCache::new("/tmp/never");
        assert!(c.path("../x", "c", "eth0").is_err());
        assert!(c.path("n", "../../etc/passwd", "eth0").is_err());
        assert!(c.path("n", "c", "../eth0").is_err());
    }
}
