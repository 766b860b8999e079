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
    /// Says which NADs (namespace, name) are about to be asked for, so an implementation
    /// may fetch them together; what it could not fetch `get_nad` fetches as usual.
    fn prefetch_nads(&self, _nads: &[(String, String)]) {}
    /// Writes the network-status annotation; a pod that is gone is not an error.
    fn set_network_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()>;
    /// Records an event on the pod (best effort, never fails the operation).
    fn event(&self, pod: &PodInfo, kind: EventType, reason: &str, message: &str);
    /// True when [`Cluster::event`] returns at once and the post is made in the
    /// background (the daemon holds a request's events until its answer is on its
    /// way): the engine then records each `AddedInterface` as soon as its delegate has
    /// succeeded, as Multus does, so an ADD that fails later has reported the interfaces
    /// it added. False: the events go with the status write ([`Cluster::report_add`]).
    fn posts_events_in_background(&self) -> bool {
        false
    }
    /// Records several events on the pod (implementations may send them together).
    fn events(&self, pod: &PodInfo, events: &[(EventType, String, String)]) {
        for (k, r, m) in events {
            self.event(pod, *k, r, m);
        }
    }
    /// What a successful ADD reports: the network-status (its failure fails the ADD),
    /// then the events. Implementations may overlap the two.
    fn report_add(
        &self,
        pod: &PodInfo,
        status: &[NetworkStatus],
        events: &[(EventType, String, String)],
    ) -> Result<()> {
        self.set_network_status(pod, status)?;
        self.events(pod, events);
        Ok(())
    }
    /// Called after a successful DEL.
    fn pod_torn_down(&self, _namespace: &str, _name: &str) {}
}
