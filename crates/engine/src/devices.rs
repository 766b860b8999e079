//! Devices of device-backed networks: a NAD with `k8s.v1.cni.cncf.io/resourceName`
//! attaches one of the devices the kubelet allocated to the pod for that resource (an
//! SR-IOV VF, say). The kubelet is reached through the [`Devices`] seam (plexus-kubelet);
//! which attachment gets which device is decided here, before anything is attached.

use crate::cluster::PodInfo;
use crate::resolve::Resolved;
use plexus_cni::{CniError, Result};
use plexus_npwg::selection::NetworkSelection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The devices the kubelet allocated to one pod, by resource name (all containers
/// together), each list sorted so every run hands out the same device to the same
/// reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Resource name → device IDs, sorted.
    pub resources: BTreeMap<String, Vec<String>>,
    /// Where it was read, for messages: `kubelet PodResources at <socket>`, `kubelet
    /// checkpoint <file>`.
    pub source: String,
}

impl Allocation {
    /// Adds devices of `resource`, keeping each list sorted and without repeats.
    pub fn add(&mut self, resource: &str, ids: impl IntoIterator<Item = String>) {
        let list = self.resources.entry(resource.to_string()).or_default();
        list.extend(ids);
        list.sort();
        list.dedup();
    }
}

/// A device that dynamic resource allocation gave a pod, as the kubelet's PodResources
/// reports it (`ClaimResource`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DraDevice {
    /// The claim's name.
    pub claim: String,
    /// The DRA driver.
    pub driver: String,
    /// Its pool.
    pub pool: String,
    /// The device's name in the pool.
    pub device: String,
}

/// The attribute of a DRA device that names the NAD resource it serves.
pub const DRA_RESOURCE_NAME_ATTRIBUTE: &str = "k8s.cni.cncf.io/resourceName";
/// The attribute of a DRA device that gives its device ID (a PCI address, say).
pub const DRA_DEVICE_ID_ATTRIBUTE: &str = "k8s.cni.cncf.io/deviceID";

/// What DRA drivers publish of their devices for CNI (the Kubernetes API's
/// ResourceSlices): the attributes [`DRA_RESOURCE_NAME_ATTRIBUTE`] and
/// [`DRA_DEVICE_ID_ATTRIBUTE`], as Multus reads them.
pub trait DeviceAttributes: Send + Sync {
    /// For each of `devices`, in order, its resource name and device ID when the
    /// ResourceSlices of `node` publish both; `None` for a device published without them
    /// (a GPU in the same claim, say).
    fn cni_attributes(
        &self,
        node: &str,
        devices: &[DraDevice],
    ) -> Result<Vec<Option<(String, String)>>>;
}

/// Where the engine learns a pod's devices.
pub trait Devices: Send + Sync {
    /// The devices allocated to `pod`. Errors are CNI errors naming the kubelet's
    /// socket or checkpoint (code 11 when the kubelet does not answer in time).
    fn allocation(&self, pod: &PodInfo) -> Result<Allocation>;
}

/// The device of one attachment, as the state file keeps it: DEL, CHECK and hot-plug
/// need no kubelet call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// The resource (the NAD's `k8s.v1.cni.cncf.io/resourceName`).
    pub resource_name: String,
    /// The device ID the kubelet reported (a PCI address for SR-IOV).
    pub device_id: String,
}

impl Device {
    /// The device plugin's device-info file of this device (device-info-spec §4.1):
    /// `<dir>/<resourceName with / as ->-<deviceID>-device.json`; `None` for a device ID
    /// that is no file name part (a `/` in it, say), which no device plugin writes.
    pub fn plugin_info_file(&self, dir: &Path) -> Option<PathBuf> {
        let id = &self.device_id;
        if id.is_empty() || id.contains(['/', '\0']) {
            return None;
        }
        Some(dir.join(format!(
            "{}-{id}-device.json",
            self.resource_name.replace('/', "-"),
        )))
    }
}

/// True when a network needs a device.
pub(crate) fn needs_device(nets: &[(Resolved, Option<NetworkSelection>)]) -> bool {
    nets.iter().any(|(r, _)| r.resource_name.is_some())
}

/// The device of each network, in the order of `nets` (the order of the selection):
/// each reference to a device-backed NAD takes the next device of its resource that no
/// earlier reference took, so two references to one NAD get two devices. An element
/// with its own `deviceID` takes that device, which must be one the pod was allocated.
/// Not enough devices is an error naming the pod, the network and the resource.
/// `in_use` are devices attachments of the pod already hold (hot-plug): taken first.
pub(crate) fn assign(
    nets: &[(Resolved, Option<NetworkSelection>)],
    pod: &PodInfo,
    alloc: &Allocation,
    in_use: &[Device],
) -> Result<Vec<Option<Device>>> {
    let mut taken: BTreeSet<(&str, &str)> = in_use
        .iter()
        .map(|d| (d.resource_name.as_str(), d.device_id.as_str()))
        .collect();
    // Explicit device IDs first, so an unnamed reference earlier in the list does not
    // take the device a later element names.
    for (r, sel) in nets {
        let (Some(res), Some(id)) = (
            &r.resource_name,
            sel.as_ref().and_then(|s| s.device_id.as_deref()),
        ) else {
            continue;
        };
        let pool = alloc
            .resources
            .get(res)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !pool.iter().any(|d| d == id) {
            return Err(CniError::invalid_config(format!(
                "pod \"{}\": network \"{}\" asks for device {id:?} of resource {res:?}, but the kubelet allocated {} to the pod ({})",
                pod.key(),
                r.name,
                describe(pool),
                alloc.source
            )));
        }
        if !taken.insert((res, id)) {
            return Err(CniError::invalid_config(format!(
                "pod \"{}\": device {id:?} of resource {res:?} is asked for by two elements of the selection",
                pod.key()
            )));
        }
    }
    let mut out = Vec::with_capacity(nets.len());
    let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for d in in_use {
        users
            .entry(&d.resource_name)
            .or_default()
            .push("an attached network");
    }
    for (r, sel) in nets {
        let Some(res) = &r.resource_name else {
            out.push(None);
            continue;
        };
        users.entry(res).or_default().push(&r.name);
        if let Some(id) = sel.as_ref().and_then(|s| s.device_id.as_deref()) {
            out.push(Some(Device {
                resource_name: res.clone(),
                device_id: id.to_string(),
            }));
            continue;
        }
        let pool = alloc
            .resources
            .get(res)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some(id) = pool
            .iter()
            .find(|d| !taken.contains(&(res.as_str(), d.as_str())))
        else {
            let refs = users[res.as_str()].len();
            return Err(CniError::invalid_config(if pool.is_empty() {
                format!(
                    "pod \"{}\": network \"{}\" needs a device of resource {res:?} (the NetworkAttachmentDefinition's {:?} annotation), but the kubelet allocated none to the pod ({}): request {res:?} in the resources of one of the pod's containers",
                    pod.key(),
                    r.name,
                    plexus_npwg::RESOURCE_NAME_ANNOTATION,
                    alloc.source
                )
            } else {
                format!(
                    "pod \"{}\": network \"{}\" needs a device of resource {res:?}, but the kubelet allocated {} to the pod ({}) and {} network reference(s) use {res:?}: each needs a device of its own, request {refs}",
                    pod.key(),
                    r.name,
                    describe(pool),
                    alloc.source,
                    refs
                )
            }));
        };
        taken.insert((res, id));
        out.push(Some(Device {
            resource_name: res.clone(),
            device_id: id.clone(),
        }));
    }
    Ok(out)
}

fn describe(pool: &[String]) -> String {
    match pool.len() {
        0 => "no device of it".to_string(),
        1 => format!("only {:?}", pool[0]),
        n => format!("{n} devices ({})", pool.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_cni::config::NetworkConfigList;
    use plexus_npwg::names::ObjectRef;

    fn net(
        name: &str,
        res: Option<&str>,
        dev: Option<&str>,
    ) -> (Resolved, Option<NetworkSelection>) {
        let list = NetworkConfigList::from_bytes_any(
            br#"{"cniVersion":"1.0.0","name":"n","type":"host-device"}"#,
        )
        .unwrap();
        let mut sel = NetworkSelection::new(ObjectRef::new("ns", name));
        sel.device_id = dev.map(str::to_string);
        (
            Resolved {
                name: format!("ns/{name}"),
                list,
                resource_name: res.map(str::to_string),
            },
            Some(sel),
        )
    }

    fn pod() -> PodInfo {
        PodInfo {
            namespace: "ns".into(),
            name: "p".into(),
            ..Default::default()
        }
    }

    fn alloc(res: &str, ids: &[&str]) -> Allocation {
        let mut a = Allocation {
            source: "test".into(),
            ..Default::default()
        };
        a.add(res, ids.iter().rev().map(|s| s.to_string()));
        a
    }

    fn ids(v: &[Option<Device>]) -> Vec<Option<&str>> {
        v.iter()
            .map(|d| d.as_ref().map(|d| d.device_id.as_str()))
            .collect()
    }

    #[test]
    fn references_take_sorted_devices_in_order() {
        let a = alloc("vendor.example/vf", &["0000:03:02.1", "0000:03:02.0"]);
        let nets = [
            net("plain", None, None),
            net("sriov", Some("vendor.example/vf"), None),
            net("sriov", Some("vendor.example/vf"), None),
        ];
        let got = assign(&nets, &pod(), &a, &[]).unwrap();
        assert_eq!(
            ids(&got),
            [None, Some("0000:03:02.0"), Some("0000:03:02.1")]
        );
        assert_eq!(got[1].as_ref().unwrap().resource_name, "vendor.example/vf");
    }

    #[test]
    fn too_few_devices_name_the_pod_network_and_resource() {
        let a = alloc("vendor.example/vf", &["0000:03:02.0"]);
        let nets = [
            net("sriov", Some("vendor.example/vf"), None),
            net("sriov", Some("vendor.example/vf"), None),
        ];
        let e = assign(&nets, &pod(), &a, &[]).unwrap_err();
        assert_eq!(e.code, 7);
        for part in [
            "pod \"ns/p\"",
            "network \"ns/sriov\"",
            "\"vendor.example/vf\"",
            "request 2",
            "test",
        ] {
            assert!(e.msg.contains(part), "{part}: {}", e.msg);
        }
        let e = assign(&nets[..1], &pod(), &alloc("other/res", &["x"]), &[]).unwrap_err();
        assert!(e.msg.contains("allocated none"), "{}", e.msg);
        assert!(
            e.msg.contains("k8s.v1.cni.cncf.io/resourceName"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn an_explicit_device_must_be_allocated_and_is_not_handed_out_twice() {
        let a = alloc("r/vf", &["a", "b"]);
        let nets = [
            net("x", Some("r/vf"), None),
            net("y", Some("r/vf"), Some("a")),
        ];
        assert_eq!(
            ids(&assign(&nets, &pod(), &a, &[]).unwrap()),
            [Some("b"), Some("a")]
        );
        let e = assign(&[net("y", Some("r/vf"), Some("c"))], &pod(), &a, &[]).unwrap_err();
        assert!(
            e.msg.contains("\"c\"") && e.msg.contains("2 devices (a, b)"),
            "{}",
            e.msg
        );
        let e = assign(
            &[
                net("y", Some("r/vf"), Some("a")),
                net("z", Some("r/vf"), Some("a")),
            ],
            &pod(),
            &a,
            &[],
        )
        .unwrap_err();
        assert!(e.msg.contains("two elements"), "{}", e.msg);
    }

    #[test]
    fn plugin_info_file_follows_device_info_spec() {
        let d = Device {
            resource_name: "intel.com/sriov_netdevice".into(),
            device_id: "0000:03:02.3".into(),
        };
        assert_eq!(
            d.plugin_info_file(Path::new("/var/run/k8s.cni.cncf.io/devinfo/dp")).unwrap(),
            Path::new("/var/run/k8s.cni.cncf.io/devinfo/dp/intel.com-sriov_netdevice-0000:03:02.3-device.json")
        );
        for id in ["", "../../etc/x", "a/b"] {
            let d = Device {
                device_id: id.into(),
                ..d.clone()
            };
            assert_eq!(d.plugin_info_file(Path::new("/d")), None, "{id}");
        }
    }
}
