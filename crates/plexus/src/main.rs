//! `plexus`, the CNI plugin the container runtime executes for every pod (thin mode:
//! everything happens in this process). Reads `CNI_*` and the configuration on stdin,
//! prints exactly one JSON document on stdout.

mod logging;

use plexus_cni::plugin::{self, Plugin, Request};
use plexus_cni::{CniResult, Result};
use plexus_engine::local::LocalCluster;
use plexus_engine::{Cluster, Engine, NetConf};
use std::sync::Arc;

struct Plexus;

fn engine(req: &Request) -> Result<Engine> {
    let conf = NetConf::parse(&req.stdin)?;
    logging::init(&conf);
    // Made on first use too: only a NAD with a resourceName asks the kubelet.
    let mut kubelet =
        plexus_kubelet::KubeletDevices::new(plexus_kubelet::Settings::from_conf(&conf.plexus));
    let cluster: Option<Arc<dyn Cluster>> = match &conf.plexus.local {
        Some(local) => Some(Arc::new(LocalCluster::new(local.clone(), &req.args))),
        // Made on first use: DEL and CHECK, served from local state, never need it.
        None => match plexus_kube::LazyKubeCluster::from_conf(&conf) {
            Some(k) => {
                let k = Arc::new(k);
                // DRA devices are mapped to NADs through the API's ResourceSlices.
                kubelet = kubelet.with_attributes(k.clone());
                Some(k)
            }
            None => None,
        },
    };
    Ok(Engine::new(conf, cluster).with_devices(Arc::new(kubelet)))
}

/// Runs `op` on the request's engine. The process ends right after the answer is
/// printed, so the engine (its Kubernetes client and runtime) is not torn down.
fn with_engine<T>(req: &Request, op: impl FnOnce(&Engine) -> Result<T>) -> Result<T> {
    let e = engine(req)?;
    let r = op(&e);
    std::mem::forget(e);
    r
}

fn logged<T>(op: &str, req: &Request, r: Result<T>) -> Result<T> {
    match &r {
        Ok(_) => tracing::info!(container = %req.container_id, ifname = %req.ifname, "{op} done"),
        Err(e) => {
            tracing::error!(container = %req.container_id, ifname = %req.ifname, error = %e, "{op} failed")
        }
    }
    r
}

impl Plugin for Plexus {
    fn add(&self, req: &Request) -> Result<CniResult> {
        logged(
            "ADD",
            req,
            with_engine(req, |e| e.add(&plexus_engine::Request::from_cni(req))),
        )
    }

    fn del(&self, req: &Request) -> Result<()> {
        logged(
            "DEL",
            req,
            with_engine(req, |e| e.del(&plexus_engine::Request::from_cni(req))),
        )
    }

    fn check(&self, req: &Request) -> Result<()> {
        logged(
            "CHECK",
            req,
            with_engine(req, |e| e.check(&plexus_engine::Request::from_cni(req))),
        )
    }

    fn status(&self, req: &Request) -> Result<()> {
        logged("STATUS", req, engine(req)?.status(&req.path))
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let valid = plexus_engine::valid_attachments(req)?;
        logged("GC", req, engine(req)?.gc(&valid, &req.path))
    }
}

fn main() {
    plugin::run_main(&Plexus)
}
