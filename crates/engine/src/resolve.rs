//! Finding the CNI configuration of a network: NADs (NPWG §3.4, D4), and the names,
//! directories and paths `clusterNetwork`/`defaultNetworks` may hold.

use crate::cluster::{Cluster, EventType, PodInfo};
use crate::config::NetConf;
use plexus_cni::config::NetworkConfigList;
use plexus_cni::{loader, CniError, Result};
use plexus_npwg::names::{is_dns1123_subdomain, ObjectRef};
use std::path::Path;

/// A network with its configuration.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Name in network-status: `ns/name` for a NAD, the CNI name for a file.
    pub name: String,
    /// The configuration list.
    pub list: NetworkConfigList,
    /// The NAD's `k8s.v1.cni.cncf.io/resourceName`: the network needs a device of it.
    pub resource_name: Option<String>,
}

/// Resolves networks for one request.
pub struct Resolver<'a> {
    /// The configuration.
    pub conf: &'a NetConf,
    /// The cluster, if any.
    pub cluster: Option<&'a dyn Cluster>,
}

impl Resolver<'_> {
    /// The configuration of a NAD: `spec.config` (name injected), or when it has none
    /// the network of the same name in `confDir` (conflists first). A missing NAD
    /// records a `NoNetworkFound` warning on the pod.
    pub fn nad(&self, r: &ObjectRef, pod: Option<&PodInfo>) -> Result<Resolved> {
        let cluster = self.cluster.ok_or_else(|| {
            CniError::invalid_config(format!(
                "network \"{r}\": no Kubernetes API and no local NAD directory to look it up in"
            ))
        })?;
        let Some(nad) = cluster.get_nad(&r.namespace, &r.name)? else {
            let msg = format!(
                "cannot find a network-attachment-definition ({}) in namespace ({})",
                r.name, r.namespace
            );
            if let Some(p) = pod {
                cluster.event(p, EventType::Warning, "NoNetworkFound", &msg);
            }
            return Err(CniError::invalid_config(format!("network \"{r}\": {msg}")));
        };
        let list = match nad.network_config()? {
            Some(l) => l,
            None => loader::find_network(&self.conf.conf_dir, &r.name).map_err(|e| {
                e.context(format!("network \"{r}\": the NetworkAttachmentDefinition has no spec.config and the on-disk lookup failed"))
            })?,
        };
        Ok(Resolved {
            name: r.to_string(),
            list,
            resource_name: nad.resource_name.filter(|r| !r.is_empty()),
        })
    }

    /// `clusterNetwork`/`defaultNetworks` entries: an absolute path (file or directory),
    /// a NAD in `multusNamespace`, or a network name in `confDir`.
    pub fn named(&self, value: &str) -> Result<Resolved> {
        if value.starts_with('/') {
            let p = Path::new(value);
            let list = if p.is_dir() {
                loader::first_in_dir(p)?
            } else if p.is_file() {
                loader::from_file(p)?
            } else {
                return Err(CniError::invalid_config(format!(
                    "network {value:?}: no such file or directory"
                )));
            };
            return Ok(Resolved {
                name: list.name.clone(),
                list,
                resource_name: None,
            });
        }
        if let Some(c) = self.cluster {
            if is_dns1123_subdomain(value)
                && c.get_nad(&self.conf.multus_namespace, value)?.is_some()
            {
                return self.nad(&ObjectRef::new(&self.conf.multus_namespace, value), None);
            }
        }
        let list = loader::find_network(&self.conf.conf_dir, value).map_err(|e| {
            e.context(format!(
                "network {value:?}: not a NetworkAttachmentDefinition in {:?} nor a network in {}",
                self.conf.multus_namespace,
                self.conf.conf_dir.display()
            ))
        })?;
        Ok(Resolved {
            name: list.name.clone(),
            list,
            resource_name: None,
        })
    }

    /// The cluster default network of the configuration (`clusterNetwork`, else the first of `delegates`).
    pub fn cluster_network(&self) -> Result<Resolved> {
        match self
            .conf
            .cluster_network
            .as_deref()
            .filter(|s| !s.is_empty())
        {
            Some(cn) => self.named(cn),
            None => self.delegate(0).ok_or_else(|| {
                CniError::invalid_config("plexus configuration: no cluster network")
            })?,
        }
    }

    /// Inline delegate `i`.
    pub fn delegate(&self, i: usize) -> Option<Result<Resolved>> {
        let v = self.conf.delegates.get(i)?;
        let bytes = v.to_string();
        Some(
            NetworkConfigList::from_bytes_any(bytes.as_bytes())
                .map(|list| Resolved {
                    name: list.name.clone(),
                    list,
                    resource_name: None,
                })
                .map_err(|e| e.context(format!("plexus configuration: delegates[{i}]"))),
        )
    }
}
