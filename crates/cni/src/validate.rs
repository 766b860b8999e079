//! Validation of the identifiers that end up in file paths, process arguments and
//! netlink requests. A `../` must never reach a path: everything is checked here.

use crate::error::{CniError, Result};

/// Maximum length of a Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

fn is_spec_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `CNI_CONTAINERID`: non-empty, `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (spec §2).
pub fn container_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(CniError::invalid_env("CNI_CONTAINERID is empty"));
    }
    if !is_spec_identifier(id) {
        return Err(CniError::invalid_env(format!(
            "CNI_CONTAINERID {id:?} is invalid: it must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"
        )));
    }
    Ok(())
}

/// A network `name`: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` and nothing illegal in a path (spec §1).
pub fn network_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(CniError::invalid_config(
            "network configuration has no \"name\"",
        ));
    }
    if !is_spec_identifier(name) || name.contains("..") {
        return Err(CniError::invalid_config(format!(
            "network name {name:?} is invalid: it must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"
        )));
    }
    Ok(())
}

/// An interface name: 1 to 15 bytes, no `/`, `:`, whitespace or NUL, not `.` or `..`.
pub fn ifname(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "interface name {name:?} is longer than {MAX_IFNAME_LEN} bytes"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | ':' | '\0') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("interface name {name:?} contains {c:?}"));
    }
    Ok(())
}

/// `CNI_IFNAME` as an environment variable (code 4 on error).
pub fn env_ifname(name: &str) -> Result<()> {
    ifname(name).map_err(|e| CniError::invalid_env(format!("CNI_IFNAME: {e}")))
}

/// A plugin `type`: a binary name, never a path (spec §1).
pub fn plugin_type(t: &str) -> Result<()> {
    if t.is_empty() || t == "." || t == ".." || t.contains(['/', '\\', '\0']) {
        return Err(CniError::invalid_config(format!(
            "plugin type {t:?} is invalid: it must be a binary name without '/' or '\\'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_with_control_characters_are_refused() {
        for bad in ["net\u{1b}[31m", "a\u{7f}", "x\u{85}y", "eth\t0"] {
            let e = ifname(bad).unwrap_err();
            assert!(e.contains("contains"), "{bad:?}: {e}");
            assert_eq!(env_ifname(bad).unwrap_err().code, 4);
        }
        assert!(ifname("net1").is_ok());
    }

    #[test]
    fn container_ids() {
        assert!(container_id("abc-123_x.y").is_ok());
        for bad in ["", "../x", "-a", "a/b", "a b", ".hidden", "a\u{e9}"] {
            let e = container_id(bad).unwrap_err();
            assert_eq!(e.code, 4, "{bad}");
        }
    }

    #[test]
    fn network_names() {
        assert!(network_name("macvlan-conf.v1").is_ok());
        for bad in ["", "../etc", "a/b", "a..b", "_x", "a b"] {
            assert_eq!(network_name(bad).unwrap_err().code, 7, "{bad}");
        }
    }

    #[test]
    fn ifnames() {
        assert!(ifname("net1").is_ok());
        assert!(ifname("abcdefghijklmno").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "a:1", "abcdefghijklmnop"] {
            assert!(ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plugin_types() {
        assert!(plugin_type("host-local").is_ok());
        for bad in ["", "..", "../bin/sh", "/bin/sh", "a\\b"] {
            assert_eq!(plugin_type(bad).unwrap_err().code, 7, "{bad}");
        }
    }
}
