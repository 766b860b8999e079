//! Spec versions: parsing, ordering and `cniVersion`/`cniVersions` negotiation.

use crate::error::{CniError, Result};
use std::cmp::Ordering;

/// Every spec version whose results this crate reads and writes, oldest first.
pub const SUPPORTED: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The newest spec version implemented.
pub const CURRENT: &str = "1.1.0";

/// A parsed `MAJOR.MINOR.PATCH` version (a missing part counts as 0, as libcni does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parses `1.1.0`, `0.3` or `1`; an empty string is 0.1.0 (pre-0.2.0 results carry none).
    pub fn parse(s: &str) -> Result<Version> {
        if s.is_empty() {
            return Ok(Version(0, 1, 0));
        }
        let mut parts = [0u32; 3];
        for (n, p) in s.split('.').enumerate() {
            if n == 3 {
                return Err(bad_version(s));
            }
            parts[n] = p.parse().map_err(|_| bad_version(s))?;
        }
        Ok(Version(parts[0], parts[1], parts[2]))
    }

    /// True when this version is at least `other` (which must be a valid literal).
    pub fn at_least(self, other: &str) -> bool {
        Version::parse(other).map(|o| self >= o).unwrap_or(false)
    }
}

fn bad_version(s: &str) -> CniError {
    CniError::incompatible_version(format!("invalid version {s:?}: expected MAJOR.MINOR.PATCH"))
}

/// Compares two version strings.
pub fn compare(a: &str, b: &str) -> Result<Ordering> {
    Ok(Version::parse(a)?.cmp(&Version::parse(b)?))
}

/// True when `v` is one of [`SUPPORTED`].
pub fn is_supported(v: &str) -> bool {
    SUPPORTED.contains(&v)
}

/// Negotiates the version of a configuration list (spec §1, libcni `NetworkConfFromBytes`):
/// the highest of `cniVersion` and `cniVersions` that is not newer than [`CURRENT`].
/// Without `cniVersions`, `cniVersion` is taken as it is.
pub fn negotiate(cni_version: &str, cni_versions: Option<&[String]>) -> Result<String> {
    let Some(list) = cni_versions else {
        return Ok(cni_version.to_string());
    };
    let current = Version::parse(CURRENT)?;
    let mut best: Option<(Version, &str)> = None;
    let candidates = list
        .iter()
        .map(String::as_str)
        .chain((!cni_version.is_empty()).then_some(cni_version));
    for v in candidates {
        let parsed =
            Version::parse(v).map_err(|e| e.context(format!("cniVersions entry {v:?}")))?;
        if parsed > current {
            continue;
        }
        if best.is_none_or(|(b, _)| parsed > b) {
            best = Some((parsed, v));
        }
    }
    Ok(best
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| cni_version.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        assert_eq!(Version::parse("").unwrap(), Version(0, 1, 0));
        assert_eq!(Version::parse("0.3").unwrap(), Version(0, 3, 0));
        assert!(Version::parse("1.1.0").unwrap() > Version::parse("1.0.0").unwrap());
        assert!(Version::parse("0.10.0").unwrap() > Version::parse("0.4.0").unwrap());
        assert!(Version::parse("x.1").is_err());
        assert!(Version::parse("1.2.3.4").is_err());
        assert_eq!(Version::parse("a").unwrap_err().code, 1);
    }

    #[test]
    fn negotiation_picks_highest_supported() {
        let vs = vec![
            "1.0.0".to_string(),
            "1.1.0".to_string(),
            "2.0.0".to_string(),
        ];
        assert_eq!(negotiate("0.4.0", Some(&vs)).unwrap(), "1.1.0");
        assert_eq!(negotiate("0.4.0", None).unwrap(), "0.4.0");
        let only_future = vec!["9.0.0".to_string()];
        assert_eq!(negotiate("1.0.0", Some(&only_future)).unwrap(), "1.0.0");
        assert!(negotiate("1.0.0", Some(&["bogus".to_string()])).is_err());
    }
}
