//! Where pods and NADs come from and where status goes: the Kubernetes API
//! (plexus-kube) or local files ([`crate::local`]). The engine sees only this trait.

use plexus_cni::Result;
use plexus_npwg::nad::Nad;
use plexus_npwg::status::NetworkStatus;
use std::collections::BTreeMap;

/// What the engine reads of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (empty when unknown).
    pub uid: String,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Where its annotations came from, for the messages that name them.
    pub origin: PodOrigin,
    /// `spec.nodeName` (empty when unknown): where its DRA devices' ResourceSlices are.
    pub node_name: String,
}

/// Where a pod's selection comes from: what an error names so the user finds what they set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PodOrigin {
    /// A Kubernetes pod: its annotations.
    #[default]
    Api,
    /// Local mode: the runtime's `CNI_ARGS` (`PLEXUS_NETWORKS`, `PLEXUS_DEFAULT_NETWORK`).
    CniArgs,
}

impl PodInfo {
    /// A static pod: its API object is a mirror whose UID differs from the runtime's.
    pub fn is_static(&self) -> bool {
        self.annotations.contains_key("kubernetes.io/config.mirror")
            || self
                .annotations
                .get("kubernetes.io/config.source")
                .is_some_and(|s| s != "api")
    }

    /// What the user set to give the pod `annotation`: the annotation itself, or in
    /// local mode the `CNI_ARGS` key that stands for it.
    pub fn source_of(&self, annotation: &str) -> String {
        match (self.origin, annotation) {
            (PodOrigin::CniArgs, plexus_npwg::NETWORKS_ANNOTATION) => {
                format!("CNI_ARGS {}", crate::local::NETWORKS_ARG)
            }
            (PodOrigin::CniArgs, plexus_npwg::DEFAULT_NETWORK_ANNOTATION) => {
                format!("CNI_ARGS {}", crate::local::DEFAULT_NETWORK_ARG)
            }
            _ => format!("annotation {annotation:?}"),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Kinds of pod events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Normal.
    Normal,
    /// Warning.
    Warning,
}

impl EventType {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The cluster as the engine needs it. Errors are CNI errors: transient API failures
/// carry code 11 (try again later).
pub trait Cluster: Send + Sync {
    /// The pod, `None` when it does not exist.
    fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>>;
    /// The NAD, `None` when it does not exist.
    fn get_nad(&self, namespace: &str, name: &str) -> Result<Option<Nad>>;
    /// The NADs `get_nad` is about to be asked for, `(namespace, name)` in the
    /// selection's order: an implementation may read them together ahead (its outcome,
    /// errors included, is then what `get_nad` answers). By default nothing is done.
    fn prefetch_nads(&self, _refs: &[(String, String)]) {}
    /// Writes the network-status annotation; a pod that is gone is not an error.
    fn set_network_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()>;
    /// Records an event on the pod (best effort, never fails the operation).
    fn event(&self, pod: &PodInfo, kind: EventType, reason: &str, message: &str);
    /// An attachment's delegate has succeeded during an ADD: its `AddedInterface`
    /// event, "Add <ifname> [<ips>] from <network>". When it is posted is the
    /// implementation's choice (at once, with the status write, after the CNI answer);
    /// by default it is recorded at once.
    fn interface_added(&self, pod: &PodInfo, message: &str) {
        self.event(pod, EventType::Normal, "AddedInterface", message);
    }
    /// What a successful ADD reports: the network-status (its failure fails the ADD).
    /// Implementations may send the events they hold with it.
    fn report_add(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        self.set_network_status(pod, status)
    }
    /// Called after a successful DEL.
    fn pod_torn_down(&self, _namespace: &str, _name: &str) {}
}
