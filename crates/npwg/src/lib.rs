//! The NPWG multi-network model (multi-net-spec v1.3, device-info-spec 1.1.0), as
//! Multus reads and writes it. Pure: parsing, validation and building, no I/O.
//!
//! - [`names`]: DNS-1123 rules and `ns/name` references;
//! - [`selection`]: the `k8s.v1.cni.cncf.io/networks` annotation, both forms, every key;
//! - [`nad`]: a NetworkAttachmentDefinition and its CNI configuration;
//! - [`status`]: the `k8s.v1.cni.cncf.io/network-status` entries.

pub mod nad;
pub mod names;
pub mod selection;
pub mod status;

/// The selection annotation.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// The status annotation.
pub const STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";
/// Multus's per-pod default network override.
pub const DEFAULT_NETWORK_ANNOTATION: &str = "v1.multus-cni.io/default-network";
/// The NAD annotation naming a device-plugin resource.
pub const RESOURCE_NAME_ANNOTATION: &str = "k8s.v1.cni.cncf.io/resourceName";
