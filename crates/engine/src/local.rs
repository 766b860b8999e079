//! Local mode, for hosts without Kubernetes: NADs read from a directory of YAML or JSON
//! manifests, the pod's namespace, name and selection taken from `CNI_ARGS`
//! (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `PLEXUS_NETWORKS`, `PLEXUS_DEFAULT_NETWORK`),
//! network-status written to `<statusDir>/<namespace>_<pod>.json` (see [`file_key`]).

use crate::cluster::{Cluster, EventType, PodInfo, PodOrigin};
use crate::config::LocalConf;
use plexus_cni::args::CniArgs;
use plexus_cni::{fsutil, CniError, Result};
use plexus_npwg::nad::Nad;
use plexus_npwg::status::NetworkStatus;
use plexus_npwg::{DEFAULT_NETWORK_ANNOTATION, NETWORKS_ANNOTATION};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `CNI_ARGS` key holding the selection annotation in local mode.
pub const NETWORKS_ARG: &str = "PLEXUS_NETWORKS";
/// `CNI_ARGS` key holding the default-network annotation in local mode.
pub const DEFAULT_NETWORK_ARG: &str = "PLEXUS_DEFAULT_NETWORK";

/// The local cluster of one request.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    conf: LocalConf,
    pod: Option<PodInfo>,
    /// The pod's `CNI_ARGS` carry no selection at all.
    unselected: bool,
}

impl LocalCluster {
    /// Builds the pod of this request from `CNI_ARGS`.
    pub fn new(conf: LocalConf, args: &CniArgs) -> LocalCluster {
        let pod = match (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")) {
            (Some(ns), Some(name)) => {
                let mut annotations = BTreeMap::new();
                if let Some(n) = args.get(NETWORKS_ARG) {
                    annotations.insert(NETWORKS_ANNOTATION.to_string(), n.to_string());
                }
                if let Some(n) = args.get(DEFAULT_NETWORK_ARG) {
                    annotations.insert(DEFAULT_NETWORK_ANNOTATION.to_string(), n.to_string());
                }
                let uid = args.get("K8S_POD_UID").unwrap_or_default().to_string();
                Some(PodInfo {
                    namespace: ns.into(),
                    name: name.into(),
                    uid,
                    annotations,
                    origin: PodOrigin::CniArgs,
                    node_name: String::new(),
                })
            }
            _ => None,
        };
        let unselected =
            args.get(NETWORKS_ARG).is_none() && args.get(DEFAULT_NETWORK_ARG).is_none();
        LocalCluster {
            conf,
            pod,
            unselected,
        }
    }

    /// `<statusDir>/<namespace>_<name>.json`, each part as [`file_key`] writes it: the
    /// names runtimes generate (podman's `eloquent_rosalind`) are accepted too.
    fn status_path(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let (ns, n) = (file_key(namespace), file_key(name));
        if ns.is_empty() || n.is_empty() || ns.len() + n.len() > 240 {
            return Err(CniError::invalid_env(format!(
                "CNI_ARGS K8S_POD_NAMESPACE {namespace:?} and K8S_POD_NAME {name:?}: a namespace and a name are needed, together at most 240 bytes once encoded"
            )));
        }
        Ok(self.conf.status_dir.join(format!("{ns}_{n}.json")))
    }
}

/// `s` as one file-name component: `[a-z0-9.-]` (a Kubernetes name's characters) kept,
/// anything else (and a leading `.`) as `%XX`, so no two names share a file and none
/// leaves the directory. Kubernetes names are unchanged.
pub fn file_key(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        let keep =
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every NAD object in the manifests of `dir` (`.yaml`, `.yml`, `.json`; several YAML
/// documents or a `List` per file allowed). A manifest that does not parse is an error
/// naming the file.
pub fn read_manifests(dir: &Path) -> Result<Vec<Nad>> {
    let files = plexus_cni::loader::conf_files(dir, &["yaml", "yml", "json"])?;
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| CniError::io(format!("cannot read {}: {e}", f.display())))?;
        let docs: Vec<Value> = if f.extension().is_some_and(|e| e == "json") {
            vec![serde_json::from_str(&text)
                .map_err(|e| CniError::decode(format!("{}: invalid JSON: {e}", f.display())))?]
        } else {
            serde_saphyr::from_multiple(&text)
                .map_err(|e| CniError::decode(format!("{}: invalid YAML: {e}", f.display())))?
        };
        for doc in docs.into_iter().flat_map(expand_list) {
            if doc["kind"] != "NetworkAttachmentDefinition" {
                continue;
            }
            let doc = with_default_namespace(doc)
                .map_err(|e| CniError::decode(format!("{}: {e}", f.display())))?;
            out.push(Nad::from_object(&doc).map_err(|e| e.context(f.display()))?);
        }
    }
    Ok(out)
}

/// The manifest with `metadata.namespace` set to `default` where it has none.
fn with_default_namespace(mut doc: Value) -> std::result::Result<Value, String> {
    let meta = doc
        .as_object_mut()
        .ok_or("a NetworkAttachmentDefinition must be an object")?
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    let meta = meta
        .as_object_mut()
        .ok_or("NetworkAttachmentDefinition: \"metadata\" must be an object")?;
    if meta
        .get("namespace")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        meta.insert("namespace".into(), Value::String("default".into()));
    }
    Ok(doc)
}

fn expand_list(doc: Value) -> Vec<Value> {
    if doc.is_null() {
        return vec![];
    }
    match doc.get("items").and_then(Value::as_array) {
        Some(items) if doc["kind"].as_str().is_some_and(|k| k.ends_with("List")) => items.clone(),
        _ => vec![doc],
    }
}

impl Cluster for LocalCluster {
    fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>> {
        // Where its status will go is settled before anything is attached.
        self.status_path(namespace, name)?;
        if self.conf.require_selection && self.unselected {
            return Err(CniError::invalid_env(format!(
                "pod \"{namespace}/{name}\": CNI_ARGS has neither {NETWORKS_ARG} nor {DEFAULT_NETWORK_ARG}, and local.requireSelection is set: pass the container's networks again (a restart must carry them), or {NETWORKS_ARG}= to attach the default network alone"
            )));
        }
        Ok(self
            .pod
            .clone()
            .filter(|p| p.namespace == namespace && p.name == name))
    }

    fn get_nad(&self, namespace: &str, name: &str) -> Result<Option<Nad>> {
        Ok(read_manifests(&self.conf.nad_dir)?
            .into_iter()
            .find(|n| n.id.namespace == namespace && n.id.name == name))
    }

    fn set_network_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        let path = self.status_path(&pod.namespace, &pod.name)?;
        let body =
            serde_json::to_vec_pretty(status).map_err(|e| CniError::internal(e.to_string()))?;
        fsutil::write_atomic(&path, &body, 0o644, 0o755)
            .map_err(|e| CniError::io(format!("cannot write {}: {e}", path.display())))
    }

    fn event(&self, pod: &PodInfo, kind: EventType, reason: &str, message: &str) {
        tracing::info!(pod = %pod.key(), kind = kind.as_str(), reason, "{message}");
    }

    fn pod_torn_down(&self, namespace: &str, name: &str) {
        if let Ok(p) = self.status_path(namespace, name) {
            let _ = fsutil::remove_with_orphans(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_yaml_json_and_lists() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.yaml"), "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: br\n  namespace: demo\nspec:\n  config: '{\"cniVersion\":\"1.0.0\",\"type\":\"bridge\"}'\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n---\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: ondisk\n").unwrap();
        std::fs::write(d.path().join("b.json"), r#"{"kind":"List","items":[{"kind":"NetworkAttachmentDefinition","metadata":{"name":"mv","namespace":"demo"},"spec":{"config":"{}"}}]}"#).unwrap();
        let nads = read_manifests(d.path()).unwrap();
        let ids: Vec<String> = nads.iter().map(|n| n.id.to_string()).collect();
        assert_eq!(ids, ["demo/br", "default/ondisk", "demo/mv"]);
        assert!(nads[1].config.is_none());
        std::fs::write(
            d.path().join("m.yaml"),
            "kind: NetworkAttachmentDefinition\nmetadata: just-a-string\n",
        )
        .unwrap();
        let e = read_manifests(d.path()).unwrap_err();
        assert!(
            e.msg.contains("m.yaml") && e.msg.contains("\"metadata\" must be an object"),
            "{}",
            e.msg
        );
        std::fs::remove_file(d.path().join("m.yaml")).unwrap();
        std::fs::write(d.path().join("c.yaml"), "kind: [unclosed").unwrap();
        let e = read_manifests(d.path()).unwrap_err();
        assert!(
            e.msg.contains("c.yaml") && e.msg.contains("invalid YAML"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn pod_from_cni_args() {
        let args =
            CniArgs::parse("K8S_POD_NAMESPACE=demo;K8S_POD_NAME=p1;PLEXUS_NETWORKS=br@data0,mv")
                .unwrap();
        let d = tempfile::tempdir().unwrap();
        let c = LocalCluster::new(
            LocalConf {
                nad_dir: d.path().into(),
                status_dir: d.path().join("s"),
                require_selection: false,
            },
            &args,
        );
        let p = c.get_pod("demo", "p1").unwrap().unwrap();
        assert_eq!(p.annotations[NETWORKS_ANNOTATION], "br@data0,mv");
        assert!(c.get_pod("demo", "other").unwrap().is_none());
        c.set_network_status(&p, &[]).unwrap();
        assert!(d.path().join("s/demo_p1.json").exists());
        c.pod_torn_down("demo", "p1");
        assert!(!d.path().join("s/demo_p1.json").exists());
        // Runtime-generated names are accepted, each name its own file, none outside.
        let p = c.status_path("eloquent_rosalind", "Web.1").unwrap();
        assert_eq!(p, d.path().join("s/eloquent%5Frosalind_%57eb.1.json"));
        assert_ne!(
            c.status_path("a_b", "c").unwrap(),
            c.status_path("a", "b_c").unwrap()
        );
        let p = c.status_path("../x", "p").unwrap();
        assert_eq!(p.parent(), Some(d.path().join("s").as_path()));
        assert_eq!(c.status_path("", "p").unwrap_err().code, 4);
        assert!(c.get_pod("demo", &"x".repeat(300)).is_err());
    }

    #[test]
    fn require_selection_refuses_an_add_that_names_no_networks() {
        let d = tempfile::tempdir().unwrap();
        let conf = |require_selection| LocalConf {
            nad_dir: d.path().into(),
            status_dir: d.path().join("s"),
            require_selection,
        };
        let bare = CniArgs::parse("K8S_POD_NAMESPACE=demo;K8S_POD_NAME=p1").unwrap();
        let e = LocalCluster::new(conf(true), &bare)
            .get_pod("demo", "p1")
            .unwrap_err();
        assert_eq!(e.code, 4);
        assert!(
            e.msg.contains("demo/p1")
                && e.msg.contains("requireSelection")
                && e.msg.contains("PLEXUS_NETWORKS="),
            "{}",
            e.msg
        );
        // Off, the pod has the default network alone, as before.
        assert!(LocalCluster::new(conf(false), &bare)
            .get_pod("demo", "p1")
            .unwrap()
            .is_some());
        // An empty selection, or a default network alone, is a selection.
        for args in [
            "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=p1;PLEXUS_NETWORKS=",
            "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=p1;PLEXUS_DEFAULT_NETWORK=br",
        ] {
            let args = CniArgs::parse(args).unwrap();
            let p = LocalCluster::new(conf(true), &args)
                .get_pod("demo", "p1")
                .unwrap()
                .unwrap();
            assert_eq!(p.origin, PodOrigin::CniArgs);
        }
    }
}
