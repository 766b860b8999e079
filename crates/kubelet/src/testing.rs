//! A test kubelet: the real PodResources v1 gRPC service (the stubs generated from the
//! vendored .proto) on a unix socket, serving the allocations a test gives it, and able
//! to behave as kubelets do that tests must survive: `Get` turned off
//! (`KubeletPodResourcesGet`), or no answer at all. Also the device manager's checkpoint
//! file, written in the kubelet's format.

use crate::pb::pod_resources_lister_server::{PodResourcesLister, PodResourcesListerServer};
use crate::pb::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ClaimResource, ContainerDevices,
    ContainerResources, DynamicResource, GetPodResourcesRequest, GetPodResourcesResponse,
    ListPodResourcesRequest, ListPodResourcesResponse, PodResources,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    pods: Vec<PodResources>,
    hang: bool,
    get_disabled: bool,
    calls: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone)]
struct Service(Arc<Mutex<State>>);

impl Service {
    /// Records the call; waits forever when told to hang.
    async fn enter(&self, call: &str) {
        let hang = {
            let mut s = lock(&self.0);
            s.calls.push(call.to_string());
            s.hang
        };
        if hang {
            std::future::pending::<()>().await;
        }
    }
}

#[tonic::async_trait]
impl PodResourcesLister for Service {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        self.enter("List").await;
        Ok(Response::new(ListPodResourcesResponse {
            pod_resources: lock(&self.0).pods.clone(),
        }))
    }

    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        self.enter("GetAllocatableResources").await;
        Ok(Response::new(AllocatableResourcesResponse::default()))
    }

    async fn get(
        &self,
        req: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        self.enter("Get").await;
        let r = req.into_inner();
        let s = lock(&self.0);
        // The kubelet's own answers (pkg/kubelet/apis/podresources/server_v1.go).
        if s.get_disabled {
            return Err(Status::unknown("PodResources API Get method disabled"));
        }
        match s
            .pods
            .iter()
            .find(|p| p.name == r.pod_name && p.namespace == r.pod_namespace)
        {
            Some(p) => Ok(Response::new(GetPodResourcesResponse {
                pod_resources: Some(p.clone()),
            })),
            None => Err(Status::unknown(format!(
                "pod {} in namespace {} not found",
                r.pod_name, r.pod_namespace
            ))),
        }
    }
}

/// A PodResources server on a unix socket, on a thread of its own; stopped, and its
/// socket removed, when dropped.
pub struct TestKubelet {
    socket: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestKubelet {
    /// Serves on `socket` (its directory must exist); ready when this returns.
    pub fn start(socket: impl Into<PathBuf>) -> std::io::Result<TestKubelet> {
        let socket = socket.into();
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket)?;
        listener.set_nonblocking(true)?;
        let state: Arc<Mutex<State>> = Default::default();
        let svc = Service(state.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test-kubelet".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(l) = tokio::net::UnixListener::from_std(listener) else {
                        return;
                    };
                    let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
                    let _ = tonic::transport::Server::builder()
                        .add_service(PodResourcesListerServer::new(svc))
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })?;
        Ok(TestKubelet {
            socket,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn container<'a>(
        pods: &'a mut Vec<PodResources>,
        ns: &str,
        pod: &str,
        container: &str,
    ) -> &'a mut ContainerResources {
        let pi = match pods.iter().position(|p| p.namespace == ns && p.name == pod) {
            Some(i) => i,
            None => {
                pods.push(PodResources {
                    name: pod.into(),
                    namespace: ns.into(),
                    ..Default::default()
                });
                pods.len() - 1
            }
        };
        let cs = &mut pods[pi].containers;
        let ci = match cs.iter().position(|c| c.name == container) {
            Some(i) => i,
            None => {
                cs.push(ContainerResources {
                    name: container.into(),
                    ..Default::default()
                });
                cs.len() - 1
            }
        };
        &mut cs[ci]
    }

    /// Gives `container` of pod `ns/pod` the devices `ids` of `resource` (device plugins).
    pub fn allocate(&self, ns: &str, pod: &str, container: &str, resource: &str, ids: &[&str]) {
        let mut s = lock(&self.state);
        Self::container(&mut s.pods, ns, pod, container)
            .devices
            .push(ContainerDevices {
                resource_name: resource.into(),
                device_ids: ids.iter().map(|s| s.to_string()).collect(),
                topology: None,
            });
    }

    /// Gives `container` of pod `ns/pod` the DRA device `[driver, pool, device]` of
    /// claim `claim` (in the pod's namespace).
    pub fn claim(&self, ns: &str, pod: &str, container: &str, claim: &str, device: [&str; 3]) {
        let [driver, pool, device] = device;
        let mut s = lock(&self.state);
        let c = Self::container(&mut s.pods, ns, pod, container);
        let res = ClaimResource {
            cdi_devices: vec![],
            driver_name: driver.into(),
            pool_name: pool.into(),
            device_name: device.into(),
            share_id: None,
        };
        match c
            .dynamic_resources
            .iter_mut()
            .find(|d| d.claim_name == claim)
        {
            Some(d) => d.claim_resources.push(res),
            None => c.dynamic_resources.push(DynamicResource {
                claim_name: claim.into(),
                claim_namespace: ns.into(),
                claim_resources: vec![res],
            }),
        }
    }

    /// Forgets pod `ns/pod` (it was deleted).
    pub fn forget(&self, ns: &str, pod: &str) {
        lock(&self.state)
            .pods
            .retain(|p| !(p.namespace == ns && p.name == pod));
    }

    /// Answers nothing from now on (`true`), or again (`false`).
    pub fn hang(&self, on: bool) {
        lock(&self.state).hang = on;
    }

    /// Answers `Get` as a kubelet with `KubeletPodResourcesGet` off.
    pub fn disable_get(&self) {
        lock(&self.state).get_disabled = true;
    }

    /// The calls so far (`Get`, `List`, …).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }
}

impl Drop for TestKubelet {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // A hanging call keeps the server from stopping gracefully: do not wait for it.
        if !lock(&self.state).hang {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Writes the device manager's checkpoint as the kubelet does (1.20+ format: device IDs
/// by NUMA node), one entry per `(pod UID, container, resource, device IDs)`.
pub fn write_checkpoint(
    path: &Path,
    entries: &[(&str, &str, &str, &[&str])],
) -> std::io::Result<()> {
    let mut registered: serde_json::Map<String, serde_json::Value> = Default::default();
    let list: Vec<_> = entries
        .iter()
        .map(|(uid, container, resource, ids)| {
            let r = registered
                .entry(resource.to_string())
                .or_insert_with(|| json!([]));
            if let Some(a) = r.as_array_mut() {
                a.extend(ids.iter().map(|i| json!(i)));
            }
            json!({"PodUID": uid, "ContainerName": container, "ResourceName": resource,
                   "DeviceIDs": {"0": ids}, "AllocResp": "CgA="})
        })
        .collect();
    let body = json!({"Data": {"PodDeviceEntries": list, "RegisteredDevices": registered},
                      "Checksum": 2_212_221_234u64});
    std::fs::write(path, serde_json::to_vec(&body)?)
}
