//! Results of spec 0.1.0 and 0.2.0: `{cniVersion, ip4, ip6, dns}`.

use super::types::{Dns, Route};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One address family's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length.
    pub ip: IpNet,
    /// Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Routes of this family (only `dst` and `gw` exist in these versions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// A 0.1.0 / 0.2.0 result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Result020 {
    /// `0.1.0` or `0.2.0` (an empty value is read as 0.1.0).
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// IPv4 configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip4: Option<IpConfig>,
    /// IPv6 configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpConfig>,
    /// DNS.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}
