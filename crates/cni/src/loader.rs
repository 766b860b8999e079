//! Loading configurations from a directory, the way libcni does (`ConfFiles`,
//! `LoadNetworkConf`, `NetworkConfFromFile` with sibling-directory plugins).

use crate::config::{NetworkConfigList, PluginConf};
use crate::error::{CniError, Result};
use crate::validate;
use std::path::{Path, PathBuf};

/// Extensions of single plugin configurations.
pub const CONF_EXTENSIONS: &[&str] = &["conf", "json"];
/// Extension of configuration lists.
pub const LIST_EXTENSION: &str = "conflist";

/// Regular files of `dir` with one of `exts`, sorted by name. A missing directory
/// holds no files; an unreadable one is an error.
pub fn conf_files(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CniError::io(format!(
                "cannot read configuration directory {}: {e}",
                dir.display()
            )))
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| CniError::io(format!("cannot read {}: {e}", dir.display())))?;
        let path = entry.path();
        // Follows symlinks, like os.ReadDir + IsDir in libcni would not; a dangling link is skipped.
        if !path.is_file() {
            continue;
        }
        if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e))
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| CniError::io(format!("cannot read {}: {e}", path.display())))
}

/// Loads `<dir>/<name>/*.conf`, the plugins aggregated into network `name` (spec §1).
pub fn sibling_plugins(dir: &Path, name: &str) -> Result<Vec<PluginConf>> {
    validate::network_name(name)?;
    conf_files(&dir.join(name), &["conf"])?
        .iter()
        .map(|f| PluginConf::from_bytes(&read(f)?).map_err(|e| e.context(f.display())))
        .collect()
}

/// Loads a `.conflist` file, appending sibling-directory plugins unless
/// `loadOnlyInlinedPlugins` is set; a list that ends up with no plugin is an error.
pub fn list_from_file(path: &Path) -> Result<NetworkConfigList> {
    let mut list =
        NetworkConfigList::from_bytes(&read(path)?).map_err(|e| e.context(path.display()))?;
    if !list.load_only_inlined_plugins {
        let dir = path.parent().unwrap_or(Path::new("."));
        list.plugins.extend(sibling_plugins(dir, &list.name)?);
    }
    if list.plugins.is_empty() {
        return Err(CniError::invalid_config(format!(
            "{}: no plugin configs found",
            path.display()
        )));
    }
    Ok(list)
}

/// Loads any configuration file: `.conflist` as a list, `.conf`/`.json` as a single
/// configuration wrapped into a list.
pub fn from_file(path: &Path) -> Result<NetworkConfigList> {
    if path.extension().and_then(|e| e.to_str()) == Some(LIST_EXTENSION) {
        return list_from_file(path);
    }
    let conf = PluginConf::from_bytes(&read(path)?)
        .map_err(|e| e.context(format!("{} (perhaps this is a .conflist?)", path.display())))?;
    NetworkConfigList::from_single(conf).map_err(|e| e.context(path.display()))
}

/// Finds network `name` in `dir`: `.conflist` files first, then `.conf`/`.json`, each
/// in file-name order; names must match exactly. Nothing outside `dir` is read.
pub fn find_network(dir: &Path, name: &str) -> Result<NetworkConfigList> {
    validate::network_name(name)?;
    for f in conf_files(dir, &[LIST_EXTENSION])? {
        let list = list_from_file(&f)?;
        if list.name == name {
            return Ok(list);
        }
    }
    for f in conf_files(dir, CONF_EXTENSIONS)? {
        let list = from_file(&f)?;
        if list.name == name {
            return Ok(list);
        }
    }
    Err(CniError::invalid_config(format!(
        "no network configuration named {name:?} in {}",
        dir.display()
    )))
}

/// The first configuration file of `dir` by name (`.conf`, `.conflist`, `.json`), as
/// a runtime picks its default network.
pub fn first_in_dir(dir: &Path) -> Result<NetworkConfigList> {
    let files = conf_files(dir, &["conf", "conflist", "json"])?;
    let first = files.first().ok_or_else(|| {
        CniError::invalid_config(format!("no network configuration in {}", dir.display()))
    })?;
    from_file(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(dir: &Path, name: &str, body: &str) {
        fs::write(dir.join(name), body).unwrap();
    }

    #[test]
    fn conflist_before_conf_and_sibling_plugins() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "00-a.conf",
            r#"{"cniVersion":"1.0.0","name":"net","type":"from-conf"}"#,
        );
        write(
            d.path(),
            "10-b.conflist",
            r#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"from-list"}]}"#,
        );
        write(
            d.path(),
            "20-c.conflist",
            r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"o"}]}"#,
        );
        fs::create_dir(d.path().join("net")).unwrap();
        write(&d.path().join("net"), "b.conf", r#"{"type":"second"}"#);
        write(&d.path().join("net"), "a.conf", r#"{"type":"first"}"#);
        let l = find_network(d.path(), "net").unwrap();
        let types: Vec<_> = l
            .plugins
            .iter()
            .map(|p| p.plugin_type().to_string())
            .collect();
        assert_eq!(types, ["from-list", "first", "second"]);
        assert_eq!(
            first_in_dir(d.path()).unwrap().plugins[0].plugin_type(),
            "from-conf"
        );
    }

    #[test]
    fn inlined_only_skips_siblings() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.conflist",
            r#"{"cniVersion":"1.1.0","name":"n","loadOnlyInlinedPlugins":true,"plugins":[{"type":"x"}]}"#,
        );
        fs::create_dir(d.path().join("n")).unwrap();
        write(&d.path().join("n"), "a.conf", r#"{"type":"y"}"#);
        assert_eq!(find_network(d.path(), "n").unwrap().plugins.len(), 1);
    }

    #[test]
    fn list_with_only_sibling_plugins() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.conflist",
            r#"{"cniVersion":"1.1.0","name":"n"}"#,
        );
        assert!(find_network(d.path(), "n")
            .unwrap_err()
            .msg
            .contains("no plugin configs"));
        fs::create_dir(d.path().join("n")).unwrap();
        write(&d.path().join("n"), "a.conf", r#"{"type":"y"}"#);
        assert_eq!(
            find_network(d.path(), "n").unwrap().plugins[0].plugin_type(),
            "y"
        );
    }

    #[test]
    fn missing_and_hostile_names() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(find_network(d.path(), "nope").unwrap_err().code, 7);
        assert_eq!(find_network(d.path(), "../etc").unwrap_err().code, 7);
        assert!(conf_files(&d.path().join("absent"), &["conf"])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn conf_without_type_hints_conflist() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.conf",
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
        );
        let e = find_network(d.path(), "n").unwrap_err();
        assert!(e.msg.contains("perhaps this is a .conflist"), "{}", e.msg);
    }
}
