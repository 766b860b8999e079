//! What DRA drivers publish of their devices for CNI: the attributes
//! `k8s.cni.cncf.io/resourceName` and `k8s.cni.cncf.io/deviceID` of a device in a
//! `resource.k8s.io/v1` ResourceSlice (what Multus reads since 4.3). The slices of each
//! driver on the pod's node are listed with the API server's field selectors
//! (`spec.driver`, `spec.nodeName`), once per driver per call.

use crate::api::{api_error, Requests};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use plexus_cni::Result;
use plexus_engine::devices::{DRA_DEVICE_ID_ATTRIBUTE, DRA_RESOURCE_NAME_ATTRIBUTE};
use plexus_engine::DraDevice;
use serde_json::Value;
use std::collections::BTreeMap;

/// `resource.k8s.io/v1` ResourceSlices (Kubernetes 1.34 and later).
pub fn resource_slices() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("resource.k8s.io", "v1", "ResourceSlice"),
        "resourceslices",
    )
}

/// `attributes[name].string` of a device.
fn string_attribute(device: &Value, name: &str) -> Option<String> {
    device["attributes"][name]["string"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// (pool, device) → (resource name, device ID).
type CniDevices = BTreeMap<(String, String), (String, String)>;

/// The devices of `slices` that carry both attributes.
pub(crate) fn cni_devices(slices: &[Value]) -> CniDevices {
    let mut out = BTreeMap::new();
    for s in slices {
        let pool = s["spec"]["pool"]["name"].as_str().unwrap_or_default();
        for d in s["spec"]["devices"].as_array().into_iter().flatten() {
            let (Some(name), Some(res), Some(id)) = (
                d["name"].as_str(),
                string_attribute(d, DRA_RESOURCE_NAME_ATTRIBUTE),
                string_attribute(d, DRA_DEVICE_ID_ATTRIBUTE),
            ) else {
                continue;
            };
            out.insert((pool.to_string(), name.to_string()), (res, id));
        }
    }
    out
}

impl Requests {
    /// The CNI attributes of `devices` (see the module), in order.
    pub async fn cni_attributes(
        &self,
        node: &str,
        devices: &[DraDevice],
    ) -> Result<Vec<Option<(String, String)>>> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource_slices());
        let mut by_driver: BTreeMap<&str, CniDevices> = BTreeMap::new();
        for d in devices {
            if by_driver.contains_key(d.driver.as_str()) {
                continue;
            }
            let mut fields = format!("spec.driver={}", d.driver);
            if !node.is_empty() {
                fields.push_str(&format!(",spec.nodeName={node}"));
            }
            let lp = ListParams::default().fields(&fields);
            let what = format!("ResourceSlices of DRA driver {:?}", d.driver);
            let list = self
                .call(&what, || api.list(&lp))
                .await
                .map_err(|e| api_error(&what, e))?;
            let slices: Vec<Value> = list
                .items
                .iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect();
            by_driver.insert(&d.driver, cni_devices(&slices));
        }
        Ok(devices
            .iter()
            .map(|d| {
                by_driver
                    .get(d.driver.as_str())
                    .and_then(|m| m.get(&(d.pool.clone(), d.device.clone())))
                    .cloned()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_devices_with_both_attributes_count() {
        let slice = json!({"spec": {"driver": "vf.example.com", "nodeName": "node-a",
        "pool": {"name": "node-a", "generation": 1, "resourceSliceCount": 1},
        "devices": [
            {"name": "vf-0", "attributes": {
                "k8s.cni.cncf.io/resourceName": {"string": "vendor.example/vf"},
                "k8s.cni.cncf.io/deviceID": {"string": "0000:03:02.0"}}},
            {"name": "gpu-0", "attributes": {"model": {"string": "x"}}},
            {"name": "vf-1", "attributes": {"k8s.cni.cncf.io/deviceID": {"string": "0000:03:02.1"}}},
            {"name": "vf-2", "attributes": {
                "k8s.cni.cncf.io/resourceName": {"int": 3},
                "k8s.cni.cncf.io/deviceID": {"string": "0000:03:02.2"}}}
        ]}});
        let m = cni_devices(&[slice, json!({"spec": "garbage"})]);
        assert_eq!(m.len(), 1);
        assert_eq!(
            m[&("node-a".to_string(), "vf-0".to_string())],
            ("vendor.example/vf".to_string(), "0000:03:02.0".to_string())
        );
    }
}
