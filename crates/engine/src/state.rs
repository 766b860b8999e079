//! The local state file: everything DEL and CHECK need, written atomically before the
//! first delegate ADD, so they work with the API server down, the NAD deleted or
//! changed, the pod deleted, or after a switch between thin and thick mode.

use plexus_cni::{fsutil, validate, CniError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Format version of the file.
pub const STATE_VERSION: u32 = 1;

/// One attachment as it was (or is being) added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentState {
    /// Status name (`ns/nad` or the CNI name of a file-based network).
    pub name: String,
    /// Interface in the pod.
    pub ifname: String,
    /// The exact configuration list given to the delegates.
    pub config: Value,
    /// Capability arguments given (`runtimeConfig` source).
    #[serde(default)]
    pub capability_args: Map<String, Value>,
    /// `CNI_ARGS` given.
    #[serde(default)]
    pub cni_args: Vec<(String, String)>,
    /// The cluster default network.
    #[serde(default)]
    pub is_default: bool,
    /// ADD was attempted (it may have failed part-way: DEL must run).
    #[serde(default)]
    pub attempted: bool,
    /// Its ADD was killed before it finished (at the delegate's time limit), so it did
    /// not undo what it had done: its DEL must succeed, as for an attachment that was
    /// added, and a failed one is kept for the runtime's retry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// The final ADD result (1.1.0 shape), once ADD succeeded: set in memory during the
    /// ADD; the file is written once, before the delegates, and DEL and CHECK read the
    /// results from libcni's result cache.
    #[serde(default)]
    pub result: Option<Value>,
    /// The CNI device-info file, removed on DEL.
    #[serde(default)]
    pub device_info_file: Option<PathBuf>,
    /// The auxiliary chain (continues from an empty result).
    #[serde(default)]
    pub auxiliary: bool,
    /// The device the kubelet allocated for it (a NAD with `resourceName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::devices::Device>,
    /// The selection element it was made from, in the annotation's JSON form
    /// (`NetworkSelection::to_element`); none for the node's own networks. Hot-plug
    /// tells the pod's edits apart by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Value>,
    /// A hot-plug step under way: its delegate may have run in part. Found at
    /// start-up (the daemon was killed), it is undone (attach) or finished (detach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// A hot-plug step not finished yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pending {
    /// Being attached.
    Attach,
    /// Being detached.
    Detach,
}

/// The state of one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` at ADD.
    pub netns: String,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod UID.
    pub pod_uid: String,
    /// Attachments in ADD order, then those hot-plugged since.
    pub attachments: Vec<AttachmentState>,
    /// The meta-plugin's configuration the ADD ran with (without its per-request keys),
    /// kept by the daemon for hot-plug; none in thin mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<Value>,
    /// `CNI_PATH` of the ADD (for hot-plug's delegates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_path: Vec<PathBuf>,
    /// A DEL has begun: nothing may be attached any more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
}

/// A state write on its way to the disk.
#[must_use = "wait() tells whether the state reached the disk"]
pub struct StateSync {
    path: PathBuf,
    syncing: fsutil::Syncing,
}

impl StateSync {
    /// Waits until the state is durable.
    pub fn wait(self) -> Result<()> {
        self.syncing
            .wait()
            .map_err(|e| StateStore::write_error(&self.path, e))
    }
}

/// The directory of state files (`<cniDir>/plexus`).
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// A store in `cni_dir/plexus`.
    pub fn new(cni_dir: &Path) -> StateStore {
        StateStore {
            dir: cni_dir.join("plexus"),
        }
    }

    /// The file of a container (the ID is validated first: nothing escapes the directory).
    pub fn path(&self, container_id: &str) -> Result<PathBuf> {
        validate::container_id(container_id)?;
        Ok(self.dir.join(format!("{container_id}.json")))
    }

    fn bytes(&self, s: &PodState) -> Result<(PathBuf, Vec<u8>)> {
        let path = self.path(&s.container_id)?;
        let bytes = serde_json::to_vec(s).map_err(|e| CniError::internal(e.to_string()))?;
        Ok((path, bytes))
    }

    fn write_error(path: &Path, e: std::io::Error) -> CniError {
        CniError::io(format!("cannot write state {}: {e}", path.display()))
    }

    /// Writes atomically and durably (0600, directory 0700).
    pub fn save(&self, s: &PodState) -> Result<()> {
        let (path, bytes) = self.bytes(s)?;
        fsutil::write_atomic(&path, &bytes, 0o600, 0o700).map_err(|e| Self::write_error(&path, e))
    }

    /// Writes atomically; a DEL after a crash of the process sees it at once. It becomes
    /// durable on another thread: [`StateSync::wait`] before depending on that.
    pub fn save_then_sync(&self, s: &PodState) -> Result<StateSync> {
        let (path, bytes) = self.bytes(s)?;
        let syncing = fsutil::write_then_sync(&path, &bytes, 0o600, 0o700)
            .map_err(|e| Self::write_error(&path, e))?;
        Ok(StateSync { path, syncing })
    }

    /// Reads a container's state; `None` when there is none. A corrupt file is an error (code 6).
    pub fn load(&self, container_id: &str) -> Result<Option<PodState>> {
        let path = self.path(container_id)?;
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                CniError::decode(format!("corrupt state file {}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CniError::io(format!(
                "cannot read state {}: {e}",
                path.display()
            ))),
        }
    }

    /// Removes a container's state.
    pub fn remove(&self, container_id: &str) -> Result<()> {
        let path = self.path(container_id)?;
        fsutil::remove_with_orphans(&path)
            .map_err(|e| CniError::io(format!("cannot remove state {}: {e}", path.display())))
    }

    /// Every state file's container ID.
    pub fn containers(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => {
                return Err(CniError::io(format!(
                    "cannot read {}: {e}",
                    self.dir.display()
                )))
            }
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_string)
            })
            .filter(|id| validate::container_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hostile_ids() {
        let d = tempfile::tempdir().unwrap();
        let st = StateStore::new(d.path());
        let s = PodState {
            version: 1,
            container_id: "c1".into(),
            netns: "/n".into(),
            pod_namespace: "a".into(),
            pod_name: "b".into(),
            pod_uid: "u".into(),
            attachments: vec![],
            conf: None,
            cni_path: vec![],
            deleting: false,
        };
        st.save(&s).unwrap();
        assert_eq!(st.load("c1").unwrap().unwrap(), s);
        assert_eq!(st.containers().unwrap(), ["c1"]);
        st.remove("c1").unwrap();
        assert!(st.load("c1").unwrap().is_none());
        assert_eq!(st.path("../x").unwrap_err().code, 4);
    }
}
