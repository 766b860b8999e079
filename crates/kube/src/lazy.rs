//! A [`KubeCluster`] made on first use.
//!
//! Thin mode starts a process per CNI call. DEL and CHECK work from the local state and
//! the cached results and touch the API only when the state is missing, so the client
//! (its runtime, the kubeconfig read and parsed, the TLS set-up) is made only when a
//! call needs it: DEL and CHECK do not pay for it, and do not fail on a kubeconfig
//! they do not need.

use crate::{ApiSettings, KubeCluster};
use plexus_cni::{CniError, Result};
use plexus_engine::{Cluster, EventType, NetConf, PodInfo};
use plexus_npwg::nad::Nad;
use plexus_npwg::status::NetworkStatus;
use std::sync::OnceLock;

/// See the module documentation.
pub struct LazyKubeCluster {
    settings: ApiSettings,
    made: OnceLock<std::result::Result<KubeCluster, CniError>>,
}

impl LazyKubeCluster {
    /// `None` when the configuration reaches no Kubernetes API ([`ApiSettings::of`]).
    pub fn from_conf(conf: &NetConf) -> Option<LazyKubeCluster> {
        ApiSettings::of(conf).map(|settings| LazyKubeCluster {
            settings,
            made: OnceLock::new(),
        })
    }

    fn get(&self) -> Result<&KubeCluster> {
        self.made
            .get_or_init(|| KubeCluster::connect(&self.settings))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl plexus_engine::DeviceAttributes for LazyKubeCluster {
    fn cni_attributes(
        &self,
        node: &str,
        devices: &[plexus_engine::DraDevice],
    ) -> Result<Vec<Option<(String, String)>>> {
        self.get()?.cni_attributes(node, devices)
    }
}

impl Cluster for LazyKubeCluster {
    fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>> {
        self.get()?.get_pod(namespace, name)
    }

    fn get_nad(&self, namespace: &str, name: &str) -> Result<Option<Nad>> {
        self.get()?.get_nad(namespace, name)
    }

    fn set_network_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        self.get()?.set_network_status(pod, status)
    }

    fn event(&self, pod: &PodInfo, kind: EventType, reason: &str, message: &str) {
        match self.get() {
            Ok(k) => k.event(pod, kind, reason, message),
            Err(e) => tracing::warn!(error = %e, pod = %pod.key(), reason, "cannot record event"),
        }
    }

    fn interface_added(&self, pod: &PodInfo, message: &str) {
        // Held until the status write, which reports a client that cannot be made.
        if let Ok(k) = self.get() {
            k.interface_added(pod, message)
        }
    }

    fn report_add(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        self.get()?.report_add(pod, status)
    }

    fn pod_torn_down(&self, namespace: &str, name: &str) {
        // Nothing to tell a client that was never made.
        if let Some(Ok(k)) = self.made.get() {
            k.pod_torn_down(namespace, name)
        }
    }
}
