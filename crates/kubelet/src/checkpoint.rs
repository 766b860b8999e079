//! The kubelet device manager's checkpoint
//! (`/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint`), read when the
//! PodResources socket is not there, as Multus does: the devices of each pod by UID.
//!
//! ```json
//! {"Data": {"PodDeviceEntries": [{"PodUID": "…", "ContainerName": "c",
//!   "ResourceName": "intel.com/sriov", "DeviceIDs": {"0": ["0000:03:02.3"]},
//!   "AllocResp": "…"}], "RegisteredDevices": {"intel.com/sriov": ["…"]}},
//!  "Checksum": 1234}
//! ```
//!
//! `DeviceIDs` maps NUMA nodes to device IDs since Kubernetes 1.20; before, it was a
//! plain list. Both are read. The checksum is the kubelet's own and is not checked
//! (Multus does not either): a torn file fails to parse instead.

use plexus_cni::{CniError, Result};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct File {
    data: Data,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Data {
    #[serde(default)]
    pod_device_entries: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    #[serde(rename = "PodUID")]
    pod_uid: String,
    resource_name: String,
    #[serde(rename = "DeviceIDs", default)]
    device_ids: Value,
}

/// The devices of the pod with `uid`, by resource (unsorted, as recorded).
pub fn read(path: &Path, uid: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let bytes = std::fs::read(path)
        .map_err(|e| CniError::io(format!("kubelet device checkpoint {}: {e}", path.display())))?;
    parse(&bytes, uid)
        .map_err(|e| CniError::decode(format!("kubelet device checkpoint {}: {e}", path.display())))
}

/// [`read`] of the file's bytes.
pub fn parse(
    bytes: &[u8],
    uid: &str,
) -> std::result::Result<BTreeMap<String, Vec<String>>, String> {
    let f: File = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in f
        .data
        .pod_device_entries
        .into_iter()
        .filter(|e| e.pod_uid == uid)
    {
        let ids = out.entry(e.resource_name.clone()).or_default();
        match e.device_ids {
            // Since 1.20: NUMA node → IDs.
            Value::Object(by_numa) => {
                for (numa, v) in by_numa {
                    ids.extend(strings(v).ok_or_else(|| {
                        format!(
                            "DeviceIDs[{numa:?}] of {:?} is not a list of strings",
                            e.resource_name
                        )
                    })?);
                }
            }
            Value::Null => {}
            v => ids.extend(strings(v).ok_or_else(|| {
                format!(
                    "DeviceIDs of {:?} is neither a map nor a list of strings",
                    e.resource_name
                )
            })?),
        }
    }
    Ok(out)
}

fn strings(v: Value) -> Option<Vec<String>> {
    match v {
        Value::Array(a) => a
            .into_iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect(),
        Value::Null => Some(vec![]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_and_only_the_pod() {
        let f = br#"{"Data":{"PodDeviceEntries":[
            {"PodUID":"u1","ContainerName":"a","ResourceName":"r/vf","DeviceIDs":{"0":["b"],"1":["a"]},"AllocResp":"eA=="},
            {"PodUID":"u1","ContainerName":"b","ResourceName":"r/vf","DeviceIDs":["c"]},
            {"PodUID":"u2","ContainerName":"a","ResourceName":"r/vf","DeviceIDs":{"0":["z"]}}],
            "RegisteredDevices":{"r/vf":["a","b","c","z"]}},"Checksum":1}"#;
        let m = parse(f, "u1").unwrap();
        let mut ids = m["r/vf"].clone();
        ids.sort();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(parse(f, "u3").unwrap().is_empty());
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        for f in [&b""[..], b"{}", b"{\"Data\":1}", b"{\"Data\":{\"PodDeviceEntries\":[{\"PodUID\":\"u\",\"ResourceName\":\"r\",\"DeviceIDs\":{\"0\":[1]}}]}}"] {
            assert!(parse(f, "u").is_err(), "{}", String::from_utf8_lossy(f));
        }
        let e = read(Path::new("/nonexistent/checkpoint"), "u").unwrap_err();
        assert!(e.msg.contains("/nonexistent/checkpoint"), "{}", e.msg);
    }
}
