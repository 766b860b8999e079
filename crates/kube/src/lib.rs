//! The Kubernetes side of Plexus, with kube-rs, for both modes: the pod, its NADs, the
//! network-status annotation (written to `pods/status` with conflict retry) and pod
//! events. Thin mode reads straight from the API server ([`KubeCluster`], made on first
//! use by [`LazyKubeCluster`]); the daemon reads from node-scoped watch caches
//! ([`watch`], feature `watch`). Both make their requests through [`Requests`].
//!
//! Every request has a time limit and transient failures (connection errors, 429,
//! 5xx) are retried with back-off, both configurable (`plexus.apiTimeoutMs`,
//! `plexus.apiRetries`): Multus's hard-coded 250 ms per try fails on slow clusters.

mod api;
mod dra;
mod lazy;
mod thin;
#[cfg(feature = "watch")]
pub mod watch;

pub use api::{event_object, nad_resource, Requests};
pub use dra::resource_slices;
pub use lazy::LazyKubeCluster;
pub use thin::KubeCluster;

use kube::{Client, Config};
use plexus_engine::config::PlexusConf;
use plexus_engine::NetConf;
use std::time::Duration;

/// How the plugin configuration reaches the API: its `kubeconfig`, else the in-cluster
/// configuration; the time limit and the tries per request.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    kubeconfig: Option<String>,
    timeout: Duration,
    retries: u32,
}

impl ApiSettings {
    /// `None` when the configuration reaches no Kubernetes API: no `kubeconfig` and no
    /// `KUBERNETES_SERVICE_HOST`.
    pub fn of(conf: &NetConf) -> Option<ApiSettings> {
        let kubeconfig = conf.kubeconfig.clone().filter(|k| !k.is_empty());
        (kubeconfig.is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some())
            .then(|| ApiSettings::limits(kubeconfig, &conf.plexus))
    }

    /// The limits of `plexus` (`apiTimeoutMs`, `apiRetries`) for the API `kubeconfig`
    /// names (in-cluster configuration when `None`).
    pub fn limits(kubeconfig: Option<String>, plexus: &PlexusConf) -> ApiSettings {
        ApiSettings {
            kubeconfig,
            timeout: Duration::from_millis(plexus.api_timeout_ms.max(1)),
            retries: plexus.api_retries,
        }
    }

    /// The client's own time limits: connecting, reading and writing.
    pub fn limit(&self, config: &mut Config) {
        config.connect_timeout = Some(self.timeout);
        config.read_timeout = Some(self.timeout);
        config.write_timeout = Some(self.timeout);
    }

    /// `client` with these limits on every request.
    pub fn requests(&self, client: Client) -> Requests {
        Requests {
            client,
            timeout: self.timeout,
            retries: self.retries,
        }
    }
}
