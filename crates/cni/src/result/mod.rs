//! Results of every spec version and the conversions between them, following the
//! rules of libcni's `pkg/types/{020,040,100}` (see reference §2.6).

mod types;
pub mod v020;
pub mod v040;
pub mod v100;

pub use types::{Dns, Interface, Route};
pub use v020::Result020;
pub use v040::Result040;
pub use v100::Result100;

use crate::error::{CniError, Result};
use crate::version;
use ipnet::IpNet;
use serde::Deserialize;

/// A result of any supported version, kept in the shape of its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CniResult {
    /// 0.1.0 or 0.2.0.
    V020(Result020),
    /// 0.3.0, 0.3.1 or 0.4.0.
    V040(Result040),
    /// 1.0.0 or 1.1.0.
    V100(Result100),
}

/// The family of shapes a version belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    V020,
    V040,
    V100,
}

fn shape_of(v: &str) -> Result<Shape> {
    match v {
        "" | "0.1.0" | "0.2.0" => Ok(Shape::V020),
        "0.3.0" | "0.3.1" | "0.4.0" => Ok(Shape::V040),
        "1.0.0" | "1.1.0" => Ok(Shape::V100),
        other => Err(CniError::incompatible_version(format!(
            "unsupported result version {other:?}; supported: {}",
            version::SUPPORTED.join(", ")
        ))),
    }
}

#[derive(Deserialize)]
struct VersionProbe {
    #[serde(rename = "cniVersion", default)]
    cni_version: Option<String>,
}

impl CniResult {
    /// Parses a result of any supported version; a missing `cniVersion` means 0.1.0.
    pub fn from_json(bytes: &[u8]) -> Result<CniResult> {
        let probe: VersionProbe = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode(format!("result is not a JSON object: {e}")))?;
        let v = probe.cni_version.unwrap_or_default();
        Self::from_json_as(bytes, &v)
    }

    /// Parses `value` as a result of version `v` (used for `prevResult`).
    pub fn from_value(value: &serde_json::Value) -> Result<CniResult> {
        let bytes = serde_json::to_vec(value).map_err(|e| CniError::decode(e.to_string()))?;
        Self::from_json(&bytes)
    }

    fn from_json_as(bytes: &[u8], v: &str) -> Result<CniResult> {
        let bad = |e: serde_json::Error| CniError::decode(format!("invalid {v} result: {e}"));
        Ok(match shape_of(v)? {
            Shape::V020 => {
                let mut r: Result020 = serde_json::from_slice(bytes).map_err(bad)?;
                if r.cni_version.is_empty() {
                    r.cni_version = "0.1.0".into();
                }
                CniResult::V020(r)
            }
            Shape::V040 => {
                let mut r: Result040 = serde_json::from_slice(bytes).map_err(bad)?;
                for ip in &mut r.ips {
                    if ip.version.is_empty() {
                        ip.version = family(&ip.address).into();
                    }
                }
                CniResult::V040(r)
            }
            Shape::V100 => CniResult::V100(serde_json::from_slice(bytes).map_err(bad)?),
        })
    }

    /// The result's `cniVersion`.
    pub fn version(&self) -> &str {
        match self {
            CniResult::V020(r) => &r.cni_version,
            CniResult::V040(r) => &r.cni_version,
            CniResult::V100(r) => &r.cni_version,
        }
    }

    /// The JSON document of the result.
    pub fn to_json(&self) -> Vec<u8> {
        self.to_value().to_string().into_bytes()
    }

    /// The result as a JSON value.
    pub fn to_value(&self) -> serde_json::Value {
        let v = match self {
            CniResult::V020(r) => serde_json::to_value(r),
            CniResult::V040(r) => serde_json::to_value(r),
            CniResult::V100(r) => serde_json::to_value(r),
        };
        // These types hold only strings, numbers and addresses: serialization cannot fail.
        v.unwrap_or(serde_json::Value::Null)
    }

    /// Converts to `target`, as libcni's `GetAsVersion` does. Converting down to
    /// 0.1.0/0.2.0 fails when the result has no IP address.
    pub fn convert_to(&self, target: &str) -> Result<CniResult> {
        if !version::is_supported(target) {
            return Err(CniError::incompatible_version(format!(
                "cannot convert result to unsupported version {target:?}"
            )));
        }
        let to = shape_of(target)?;
        let t = target.to_string();
        Ok(match (self, to) {
            (CniResult::V020(r), Shape::V020) => CniResult::V020(Result020 {
                cni_version: t,
                ..r.clone()
            }),
            (CniResult::V020(r), Shape::V040) => CniResult::V040(from_020(r, t)),
            (CniResult::V020(r), Shape::V100) => {
                CniResult::V100(from_040(&from_020(r, "0.4.0".into()), t))
            }
            (CniResult::V040(r), Shape::V020) => CniResult::V020(to_020(r, t)?),
            (CniResult::V040(r), Shape::V040) => CniResult::V040(Result040 {
                cni_version: t,
                ..r.clone()
            }),
            (CniResult::V040(r), Shape::V100) => CniResult::V100(from_040(r, t)),
            (CniResult::V100(r), Shape::V020) => {
                CniResult::V020(to_020(&to_040(r, "0.4.0".into()), t)?)
            }
            (CniResult::V100(r), Shape::V040) => CniResult::V040(to_040(r, t)),
            (CniResult::V100(r), Shape::V100) => CniResult::V100(Result100 {
                cni_version: t,
                ..r.clone()
            }),
        })
    }

    /// The result as 1.1.0, the richest shape (for reading interfaces, IPs and routes).
    pub fn to_current(&self) -> Result100 {
        match self.convert_to(version::CURRENT) {
            Ok(CniResult::V100(r)) => r,
            // Converting up never fails and always yields the 1.x shape.
            _ => Result100 {
                cni_version: version::CURRENT.into(),
                ..Result100::default()
            },
        }
    }
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "4",
        IpNet::V6(_) => "6",
    }
}

fn from_020(r: &Result020, version: String) -> Result040 {
    let mut out = Result040 {
        cni_version: version,
        interfaces: vec![],
        ips: vec![],
        routes: vec![],
        dns: r.dns.clone(),
    };
    for (cfg, fam) in [(&r.ip4, "4"), (&r.ip6, "6")] {
        if let Some(c) = cfg {
            out.ips.push(v040::IpConfig {
                version: fam.into(),
                interface: None,
                address: c.ip,
                gateway: c.gateway,
            });
            out.routes.extend(c.routes.iter().cloned());
        }
    }
    out
}

fn to_020(r: &Result040, version: String) -> Result<Result020> {
    let mut out = Result020 {
        cni_version: version,
        ip4: None,
        ip6: None,
        dns: r.dns.clone(),
    };
    // Only the first address of each family: 0.2.0 cannot hold more.
    for ip in &r.ips {
        let slot = match ip.version.as_str() {
            "4" => &mut out.ip4,
            "6" => &mut out.ip6,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(v020::IpConfig {
                ip: ip.address,
                gateway: ip.gateway,
                routes: vec![],
            });
        }
        if out.ip4.is_some() && out.ip6.is_some() {
            break;
        }
    }
    for route in &r.routes {
        let slot = match route.dst {
            IpNet::V4(_) => out.ip4.as_mut(),
            IpNet::V6(_) => out.ip6.as_mut(),
        };
        if let Some(cfg) = slot {
            cfg.routes.push(route.basic());
        }
    }
    if out.ip4.is_none() && out.ip6.is_none() {
        return Err(CniError::incompatible_version(format!(
            "cannot convert result to {}: no valid IP addresses",
            out.cni_version
        )));
    }
    Ok(out)
}

fn from_040(r: &Result040, version: String) -> Result100 {
    Result100 {
        cni_version: version,
        interfaces: r.interfaces.iter().map(Interface::basic).collect(),
        ips: r
            .ips
            .iter()
            .map(|ip| v100::IpConfig {
                interface: ip.interface,
                address: ip.address,
                gateway: ip.gateway,
            })
            .collect(),
        routes: r.routes.clone(),
        dns: r.dns.clone(),
    }
}

fn to_040(r: &Result100, version: String) -> Result040 {
    Result040 {
        cni_version: version,
        interfaces: r.interfaces.iter().map(Interface::basic).collect(),
        ips: r
            .ips
            .iter()
            .map(|ip| v040::IpConfig {
                version: family(&ip.address).into(),
                interface: ip.interface,
                address: ip.address,
                gateway: ip.gateway,
            })
            .collect(),
        routes: r.routes.clone(),
        dns: r.dns.clone(),
    }
}

#[cfg(test)]
mod tests;
