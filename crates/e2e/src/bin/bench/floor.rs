//! Thick mode's floor: what no daemon-based meta-plugin can do without, measured in the
//! same rounds as the modes themselves. The runtime executes the real `plexus-shim`,
//! which sends its request over the unix socket to this server; the server makes the
//! one request an ADD must make, the network-status write to `pods/status` (with
//! plexus-kube's `write_status`, on a connection it keeps, as plexusd does), and
//! answers. No plan, no state, no delegate: thick mode's overhead over the delegates
//! alone, against this, is what Plexus's own work costs (docs/benchmarks.md).

use plexus_cni::args::CniArgs;
use plexus_kube::Requests;
use plexus_npwg::status::NetworkStatus;
use plexus_proto::{AddReply, CniRequest};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The configuration key naming the pod's secondary networks: the floor writes one
/// network-status entry for each, besides the cluster network's, as plexusd does.
pub const NETWORKS_KEY: &str = "floorNetworks";

/// The running floor server; stopped when dropped.
pub struct Floor {
    dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<plexus_netns::Ahead<anyhow::Result<()>>>,
}

impl Floor {
    /// Serves `dir`'s socket from a runtime whose threads are in `host`'s network
    /// namespace (where the API server is reached), with a client of `kubeconfig`.
    pub fn start(
        host: &plexus_netns::NetNs,
        dir: &Path,
        kubeconfig: &Path,
    ) -> anyhow::Result<Floor> {
        let socket = plexus_proto::socket_path(dir);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, is_ready) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let kubeconfig = kubeconfig.to_path_buf();
        let thread = host.run_ahead(move || -> anyhow::Result<()> {
            // The daemon's runtime: two workers.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let started = async {
                    let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
                    let config = kube::Config::from_custom_kubeconfig(
                        kc,
                        &kube::config::KubeConfigOptions::default(),
                    )
                    .await?;
                    let requests = Requests {
                        client: kube::Client::try_from(config)?,
                        timeout: Duration::from_secs(10),
                        retries: 1,
                    };
                    let listener = tokio::net::UnixListener::bind(&socket)?;
                    anyhow::Ok((requests, listener))
                };
                let (requests, listener) = match started.await {
                    Ok(s) => s,
                    Err(e) => {
                        let msg = format!("{e:#}");
                        let _ = ready.send(Err(e));
                        anyhow::bail!("{msg}");
                    }
                };
                let _ = ready.send(Ok(()));
                let app = axum::Router::new()
                    .route(plexus_proto::CNI_PATH, axum::routing::post(cni))
                    .with_state(Arc::new(requests));
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await?;
                Ok(())
            })
        })?;
        match is_ready.recv() {
            Ok(Ok(())) => Ok(Floor {
                dir: dir.to_path_buf(),
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e.context("the floor server")),
            Err(_) => match thread.wait() {
                Ok(Err(e)) => Err(e.context("the floor server")),
                _ => Err(anyhow::anyhow!(
                    "the floor server ended before it was ready"
                )),
            },
        }
    }

    /// The shim's configuration for this server, writing status entries for `networks`.
    pub fn shim_conf(&self, networks: &[String]) -> Value {
        json!({"type": "plexus-shim", "daemonSocketDir": self.dir,
               "plexus": {"shimWaitSeconds": 1}, NETWORKS_KEY: networks})
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            if let Ok(Err(e)) = t.wait() {
                eprintln!("plexus-bench: the floor server: {e:#}");
            }
        }
        let _ = std::fs::remove_file(plexus_proto::socket_path(&self.dir));
    }
}

type Answer = (axum::http::StatusCode, Vec<u8>);

fn refuse(what: impl std::fmt::Display) -> Answer {
    let e = plexus_cni::CniError::internal(format!("floor: {what}"));
    let body = serde_json::to_vec(&e).unwrap_or_default();
    (axum::http::StatusCode::BAD_REQUEST, body)
}

/// `POST /cni`: ADD writes the status and answers the cluster network's result; every
/// other command is answered at once.
async fn cni(
    axum::extract::State(requests): axum::extract::State<Arc<Requests>>,
    body: axum::body::Bytes,
) -> Answer {
    let req: CniRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return refuse(format!("request: {e}")),
    };
    if req.var("CNI_COMMAND") != "ADD" {
        return (axum::http::StatusCode::OK, Vec::new());
    }
    let conf: Value = match req
        .config_bytes()
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => return refuse(format!("configuration: {e}")),
    };
    let args = match CniArgs::parse(req.var("CNI_ARGS")) {
        Ok(a) => a,
        Err(e) => return refuse(e),
    };
    let pod = plexus_engine::PodInfo {
        namespace: args.get("K8S_POD_NAMESPACE").unwrap_or_default().into(),
        name: args.get("K8S_POD_NAME").unwrap_or_default().into(),
        ..Default::default()
    };
    let networks: Vec<String> = conf[NETWORKS_KEY]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    match requests
        .write_status(&pod, &statuses(&pod, &networks), None)
        .await
    {
        Ok(()) => {
            let result = json!({"cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": req.var("CNI_NETNS")}],
                "ips": [{"address": "192.0.2.10/24", "interface": 0}]});
            let reply = AddReply { result };
            (
                axum::http::StatusCode::OK,
                serde_json::to_vec(&reply).unwrap_or_default(),
            )
        }
        Err(e) => refuse(e),
    }
}

/// The network-status plexusd writes for a pod with `networks`: the cluster network on
/// eth0, then one entry per network on net1..netN.
fn statuses(pod: &plexus_engine::PodInfo, networks: &[String]) -> Vec<NetworkStatus> {
    let entry = |name: String, ifname: String, i: usize| -> Option<NetworkStatus> {
        serde_json::from_value(json!({
            "name": name, "interface": ifname, "ips": [format!("198.51.100.{}", 10 + i)],
            "mac": format!("02:00:00:00:00:{i:02x}"), "default": i == 0, "dns": {}
        }))
        .ok()
    };
    std::iter::once(entry("cluster-noop".into(), "eth0".into(), 0))
        .chain(networks.iter().enumerate().map(|(i, n)| {
            entry(
                format!("{}/{n}", pod.namespace),
                format!("net{}", i + 1),
                i + 1,
            )
        }))
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_writes_an_entry_per_network_and_the_cluster_network_first() {
        let pod = plexus_engine::PodInfo {
            namespace: "bench".into(),
            name: "p".into(),
            ..Default::default()
        };
        let s = statuses(&pod, &["n1".into(), "n2".into()]);
        let names: Vec<(&str, &str, bool)> = s
            .iter()
            .map(|e| (e.name.as_str(), e.interface.as_str(), e.default))
            .collect();
        assert_eq!(
            names,
            [
                ("cluster-noop", "eth0", true),
                ("bench/n1", "net1", false),
                ("bench/n2", "net2", false)
            ]
        );
    }
}
