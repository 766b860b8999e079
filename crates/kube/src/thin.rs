//! Thin mode's cluster: one process per CNI call, a current-thread runtime of its own,
//! reads straight from the API server, every request of a call one after the other on
//! one kept-alive connection (one TCP and TLS handshake per call).

use crate::api::{pod_info, Requests};
use crate::ApiSettings;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use plexus_cni::{CniError, Result};
use plexus_engine::{Cluster, EventType, PodInfo};
use plexus_npwg::nad::Nad;
use plexus_npwg::status::NetworkStatus;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// NADs read, by namespace and name.
type NadReads = HashMap<(String, String), Result<Option<Nad>>>;

/// A cluster reached through the API server.
pub struct KubeCluster {
    rt: tokio::runtime::Runtime,
    api: Requests,
    /// resourceVersions of the pods read, so the status write needs no second read.
    seen: Mutex<HashMap<(String, String), String>>,
    /// `AddedInterface` messages, posted with the status write.
    added: Mutex<Vec<(PodInfo, String)>>,
    /// Set once the API server answered over HTTP/2: requests may then run together.
    multiplexed: Arc<AtomicBool>,
    /// NADs read ahead (`prefetch_nads`): what `get_nad` answers for them.
    nads: Mutex<NadReads>,
}

impl KubeCluster {
    /// A client for `settings`: its runtime, the kubeconfig read and parsed (or the
    /// in-cluster configuration), the HTTP and TLS stack.
    pub fn connect(settings: &ApiSettings) -> Result<KubeCluster> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::internal(format!("tokio runtime: {e}")))?;
        let mut config = match &settings.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    CniError::invalid_config(format!("\"kubeconfig\" {path:?}: {e}"))
                })?;
                rt.block_on(Config::from_custom_kubeconfig(
                    kc,
                    &KubeConfigOptions::default(),
                ))
                .map_err(|e| CniError::invalid_config(format!("\"kubeconfig\" {path:?}: {e}")))?
            }
            None => Config::incluster().map_err(|e| {
                CniError::invalid_config(format!("in-cluster Kubernetes config: {e}"))
            })?,
        };
        settings.limit(&mut config);
        let multiplexed = Arc::new(AtomicBool::new(false));
        let client = {
            let _guard = rt.enter();
            multiplexing_client(&config, multiplexed.clone())
                .map_err(|e| CniError::invalid_config(format!("Kubernetes client: {e}")))?
        };
        Ok(KubeCluster {
            rt,
            api: settings.requests(client),
            seen: Default::default(),
            added: Default::default(),
            multiplexed,
            nads: Default::default(),
        })
    }
}

/// A client of `config` that speaks HTTP/2 when the API server offers it in the TLS
/// handshake (kube-apiserver does), HTTP/1.1 otherwise: kube's own client offers only
/// HTTP/1.1, which runs one request at a time on a connection. On HTTP/2 the requests
/// of an ADD that do not depend on each other (the status write and the events) share
/// the one connection at the same time. The rest is kube's stack: its TLS configuration
/// (CA, client certificate, `tls-server-name`, `insecure-skip-tls-verify`), base URI,
/// authentication and extra headers; time limits are `Requests`' and the connect
/// timeout's.
/// `multiplexed` is set once an answer came over HTTP/2.
fn multiplexing_client(config: &Config, multiplexed: Arc<AtomicBool>) -> kube::Result<Client> {
    use kube::client::ConfigExt;
    if config.proxy_url.is_some() {
        // kube's own client decides what a `proxy-url` gets (it refuses the protocols
        // this build does not carry, naming them), over HTTP/1.1.
        return Client::try_from(config.clone());
    }
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http();
    let builder = match &config.tls_server_name {
        Some(name) => {
            let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
                kube::Error::Service(format!("tls-server-name {name:?}: {e}").into())
            })?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let https = builder.enable_all_versions().wrap_connector(http);
    let http_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_response(move |r: http::Response<_>| {
            if r.version() == http::Version::HTTP_2 {
                multiplexed.store(true, Ordering::Relaxed);
            }
            r
        })
        .map_err(tower::BoxError::from)
        .service(http_client);
    Ok(Client::new(service, config.default_namespace.clone()))
}

impl KubeCluster {
    /// The pod's resourceVersion as read when planning: it makes the first status write
    /// conditional without a second read.
    fn seen_version(&self, pod: &PodInfo) -> Option<String> {
        lock(&self.seen)
            .get(&(pod.namespace.clone(), pod.name.clone()))
            .cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl plexus_engine::DeviceAttributes for KubeCluster {
    fn cni_attributes(
        &self,
        node: &str,
        devices: &[plexus_engine::DraDevice],
    ) -> Result<Vec<Option<(String, String)>>> {
        self.rt.block_on(self.api.cni_attributes(node, devices))
    }
}

impl Cluster for KubeCluster {
    fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>> {
        let pod = self.rt.block_on(self.api.get_pod_cached(namespace, name))?;
        if let Some(rv) = pod
            .as_ref()
            .and_then(|p| p.metadata.resource_version.clone())
        {
            lock(&self.seen).insert((namespace.to_string(), name.to_string()), rv);
        }
        Ok(pod.map(|p| pod_info(&p, namespace, name)))
    }

    fn get_nad(&self, namespace: &str, name: &str) -> Result<Option<Nad>> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(read) = lock(&self.nads).get(&key) {
            return read.clone();
        }
        self.rt.block_on(self.api.get_nad_cached(namespace, name))
    }

    fn prefetch_nads(&self, refs: &[(String, String)]) {
        // Together only over HTTP/2 (see `report_add`); over HTTP/1.1 one at a time
        // as the engine asks.
        if !self.multiplexed.load(Ordering::Relaxed) {
            return;
        }
        let mut unique: Vec<&(String, String)> = Vec::new();
        for r in refs {
            if !unique.contains(&r) {
                unique.push(r);
            }
        }
        let reads = self.rt.block_on(futures_util::future::join_all(
            unique
                .iter()
                .map(|(ns, name)| self.api.get_nad_cached(ns, name)),
        ));
        let mut nads = lock(&self.nads);
        for (r, read) in unique.into_iter().zip(reads) {
            nads.insert(r.clone(), read);
        }
    }

    fn set_network_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        self.rt
            .block_on(self.api.write_status(pod, status, self.seen_version(pod)))
    }

    fn interface_added(&self, pod: &PodInfo, message: &str) {
        lock(&self.added).push((pod.clone(), message.to_string()));
    }

    fn report_add(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        // The status and the events together on the connection the ADD's reads used:
        // over HTTP/2 they run at the same time; over HTTP/1.1 the client's pool would
        // open a connection for each request in flight (a TCP and TLS handshake each,
        // more than a request on a kept connection), so there they go one after the
        // other, the status first.
        let added = std::mem::take(&mut *lock(&self.added));
        let status = self.api.write_status(pod, status, self.seen_version(pod));
        let events = added.iter().map(|(p, msg)| {
            self.api
                .post_event(p, EventType::Normal, "AddedInterface", msg)
        });
        self.rt.block_on(async {
            if self.multiplexed.load(Ordering::Relaxed) {
                futures_util::future::join(status, futures_util::future::join_all(events))
                    .await
                    .0
            } else {
                let written = status.await;
                for event in events {
                    event.await;
                }
                written
            }
        })
    }

    fn event(&self, pod: &PodInfo, kind: EventType, reason: &str, message: &str) {
        self.rt
            .block_on(self.api.post_event(pod, kind, reason, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_engine::config::PlexusConf;

    fn kubeconfig(extra_cluster_keys: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "plexus-kube-thin-{}-{}.yaml",
            std::process::id(),
            extra_cluster_keys.len()
        ));
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
                 contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n\
                 clusters: [{{name: k, cluster: {{server: 'https://127.0.0.1:6443'{extra_cluster_keys}}}}}]\n\
                 users: [{{name: u, user: {{token: t}}}}]\n"
            ),
        )
        .unwrap();
        p
    }

    fn connect(path: &std::path::Path) -> Result<KubeCluster> {
        let settings =
            ApiSettings::limits(Some(path.display().to_string()), &PlexusConf::default());
        KubeCluster::connect(&settings)
    }

    #[test]
    fn the_client_is_made_without_reaching_the_server() {
        let p = kubeconfig("");
        let made = connect(&p);
        let _ = std::fs::remove_file(&p);
        assert!(made.is_ok(), "{:?}", made.err());
    }

    #[test]
    fn a_proxy_url_this_build_cannot_use_is_refused_by_name() {
        // Not silently bypassed: kube's own client decides, and this build carries no
        // proxy support.
        let p = kubeconfig(", proxy-url: 'socks5://127.0.0.1:1080'");
        let made = connect(&p);
        let _ = std::fs::remove_file(&p);
        let e = made.err().expect("refused");
        assert!(e.msg.contains("Kubernetes client"), "{}", e.msg);
        assert!(e.msg.contains("socks5"), "{}", e.msg);
    }
}
