//! `CNI_ARGS`: `K=V;K=V` pairs (spec §2, CONVENTIONS.md).

use crate::error::{CniError, Result};

/// Parsed `CNI_ARGS`, order kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs(pub Vec<(String, String)>);

impl CniArgs {
    /// Parses `K=V;K=V`; empty items are skipped; an item without `=` is an error (code 4).
    pub fn parse(s: &str) -> Result<CniArgs> {
        let mut out = Vec::new();
        for item in s.split(';').filter(|i| !i.is_empty()) {
            let Some((k, v)) = item.split_once('=') else {
                return Err(CniError::invalid_env(format!(
                    "CNI_ARGS: item {item:?} is not of the form KEY=VALUE"
                )));
            };
            if k.is_empty() {
                return Err(CniError::invalid_env(format!(
                    "CNI_ARGS: item {item:?} has an empty key"
                )));
            }
            out.push((k.to_string(), v.to_string()));
        }
        Ok(CniArgs(out))
    }

    /// The value of `key` (the last one wins, as in libcni's `LoadArgs`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key`, replacing every earlier value.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_string(), value.into()));
    }

    /// The `K=V;K=V` string.
    pub fn to_env(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trip() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;;X=a=b").unwrap();
        assert_eq!(a.get("K8S_POD_NAMESPACE"), Some("ns"));
        assert_eq!(a.get("X"), Some("a=b"));
        assert_eq!(a.to_env(), "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;X=a=b");
        assert_eq!(CniArgs::parse("novalue").unwrap_err().code, 4);
        assert_eq!(CniArgs::parse("=v").unwrap_err().code, 4);
    }

    #[test]
    fn set_replaces() {
        let mut a = CniArgs::parse("IP=192.0.2.1;IP=192.0.2.2").unwrap();
        assert_eq!(a.get("IP"), Some("192.0.2.2"));
        a.set("IP", "192.0.2.9");
        assert_eq!(a.to_env(), "IP=192.0.2.9");
    }
}
