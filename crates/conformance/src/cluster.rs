//! The suite's own access to the Kubernetes API (the repo's test API server, or any
//! cluster given by `--kubeconfig`): its namespaces, NADs and pods, made and removed
//! by the suite, and the network-status the candidate writes.

use anyhow::{Context, Result};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::{json, Value};
use std::path::Path;

/// The network-status annotation.
pub const STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
/// The selection annotation.
pub const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// A client with a runtime of its own, its connections made from the suite's host
/// namespace (where the test API server listens).
pub struct Cluster {
    rt: tokio::runtime::Runtime,
    client: Client,
    node: String,
    within: Option<plexus_netns::NetNs>,
}

impl Cluster {
    fn block<F>(&self, f: F) -> Result<F::Output>
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        match &self.within {
            Some(ns) => ns
                .run(|| self.rt.block_on(f))
                .context("entering the host namespace"),
            None => Ok(self.rt.block_on(f)),
        }
    }

    /// A client for `kubeconfig`, connecting from `within` (the current namespace when
    /// `None`); pods are placed on `node`.
    pub fn connect(
        kubeconfig: &Path,
        node: &str,
        within: Option<plexus_netns::NetNs>,
    ) -> Result<Cluster> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let kc = Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("kubeconfig {}", kubeconfig.display()))?;
        let config = rt
            .block_on(Config::from_custom_kubeconfig(
                kc,
                &KubeConfigOptions::default(),
            ))
            .with_context(|| format!("kubeconfig {}", kubeconfig.display()))?;
        let client = {
            let _g = rt.enter();
            Client::try_from(config).context("Kubernetes client")?
        };
        Ok(Cluster {
            rt,
            client,
            node: node.to_string(),
            within,
        })
    }

    fn api(&self, ns: Option<&str>, r: &ApiResource) -> Api<DynamicObject> {
        match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, r),
            None => Api::all_with(self.client.clone(), r),
        }
    }

    fn create(&self, ns: Option<&str>, r: &ApiResource, obj: Value) -> Result<Value> {
        let o: DynamicObject = serde_json::from_value(obj)?;
        let api = self.api(ns, r);
        let made = self
            .block(api.create(&PostParams::default(), &o))?
            .with_context(|| format!("creating {} {:?}", r.kind, o.metadata.name))?;
        Ok(serde_json::to_value(made)?)
    }

    fn delete(&self, ns: Option<&str>, r: &ApiResource, name: &str) {
        let api = self.api(ns, r);
        let _ = self.block(api.delete(name, &DeleteParams::default()));
    }

    /// Creates namespace `name` (an API server that does not serve namespaces, as the
    /// test API server, needs none).
    pub fn create_namespace(&self, name: &str) -> Result<()> {
        let r = resource("", "v1", "Namespace", "namespaces");
        match self.create(
            None,
            &r,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        ) {
            Ok(_) => Ok(()),
            Err(e) if format!("{e:#}").contains("404") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes namespace `name` (best effort).
    pub fn delete_namespace(&self, name: &str) {
        self.delete(None, &resource("", "v1", "Namespace", "namespaces"), name);
    }

    /// Creates a NAD whose `spec.config` is `config` (none when `None`).
    pub fn create_nad(
        &self,
        ns: &str,
        name: &str,
        config: Option<&Value>,
        annotations: Value,
    ) -> Result<()> {
        let mut obj = json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                             "metadata": {"name": name, "namespace": ns, "annotations": annotations}});
        if let Some(c) = config {
            obj["spec"] = json!({"config": c.to_string()});
        }
        self.create(Some(ns), &nad(), obj).map(|_| ())
    }

    /// Deletes a NAD (best effort).
    pub fn delete_nad(&self, ns: &str, name: &str) {
        self.delete(Some(ns), &nad(), name);
    }

    /// Creates a pod on the node with `annotations`; its UID.
    pub fn create_pod(&self, ns: &str, name: &str, annotations: Value) -> Result<String> {
        let obj = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations},
            "spec": {"nodeName": self.node,
                     "containers": [{"name": "app", "image": "registry.invalid/conformance:never-pulled"}]}});
        let made = self.create(Some(ns), &pod(), obj)?;
        Ok(made["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Deletes a pod (best effort).
    pub fn delete_pod(&self, ns: &str, name: &str) {
        self.delete(Some(ns), &pod(), name);
    }

    /// The pod's network-status, parsed; `None` when it has none.
    pub fn network_status(&self, ns: &str, name: &str) -> Result<Option<Value>> {
        let api = self.api(Some(ns), &pod());
        let p = self
            .block(api.get(name))?
            .with_context(|| format!("reading pod {ns}/{name}"))?;
        match p.metadata.annotations.as_ref().and_then(|a| a.get(STATUS)) {
            None => Ok(None),
            Some(s) => Ok(Some(serde_json::from_str(s).with_context(|| {
                format!("pod {ns}/{name}: {STATUS} is not JSON: {s}")
            })?)),
        }
    }
}

fn nad() -> ApiResource {
    resource(
        "k8s.cni.cncf.io",
        "v1",
        "NetworkAttachmentDefinition",
        "network-attachment-definitions",
    )
}

fn pod() -> ApiResource {
    resource("", "v1", "Pod", "pods")
}
