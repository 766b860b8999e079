//! A deliberately broken meta-plugin for the suite's own tests: it runs the plexus
//! binary its configuration names (`inner`, the plugin object; `innerBinary`) and breaks
//! one rule, named by its own file name `broken-candidate-<mode>` (VERSION has no
//! configuration to say it):
//!
//! - `wrong-version`: ADD prints its result with another `cniVersion` than asked for;
//! - `no-del`: DEL answers success and does nothing (interfaces and IPs stay);
//! - `ignores-selection`: the pod's selection is never read (only the default network);
//! - `old-versions`: VERSION does not list 1.1.0;
//! - `swallows-errors`: a failed ADD is answered with an empty result and exit 0;
//! - `status-fails`: STATUS always fails (code 50);
//! - `check-fails` / `check-passes`: CHECK always fails / succeeds without looking;
//! - `no-gc`: GC answers success and does nothing;
//! - `bad-status`: after a successful ADD, the pod's network-status is overwritten with
//!   one entry that is no attachment's.
//!
//! The suite's tests check that exactly the requirements these break fail.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Command, Stdio};

fn fail(msg: &str) -> ! {
    let _ = std::io::stdout().write_all(
        json!({"cniVersion": "1.0.0", "code": 999, "msg": format!("broken-candidate: {msg}")})
            .to_string()
            .as_bytes(),
    );
    std::process::exit(1)
}

fn main() {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let conf: Value =
        serde_json::from_slice(&stdin).unwrap_or_else(|_| fail("configuration is not JSON"));
    let mode = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("broken-candidate-"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    if command == "VERSION" {
        let mut versions = vec!["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
        if mode != "old-versions" {
            versions.push("1.1.0");
        }
        print!(
            "{}",
            json!({"cniVersion": "1.0.0", "supportedVersions": versions})
        );
        return;
    }
    match (command.as_str(), mode.as_str()) {
        ("DEL", "no-del") | ("CHECK", "check-passes") | ("GC", "no-gc") => return,
        ("STATUS", "status-fails") => {
            print!(
                "{}",
                json!({"cniVersion": "1.1.0", "code": 50, "msg": "broken-candidate: not available"})
            );
            std::process::exit(1)
        }
        ("CHECK", "check-fails") => fail("CHECK always fails"),
        _ => {}
    }
    let Some(binary) = conf["innerBinary"].as_str().map(str::to_string) else {
        fail("no innerBinary")
    };
    let mut inner = conf["inner"].clone();
    for k in [
        "cniVersion",
        "name",
        "runtimeConfig",
        "prevResult",
        "cni.dev/valid-attachments",
        "cni.dev/attachments",
    ] {
        if let Some(v) = conf.get(k) {
            inner[k] = v.clone();
        }
    }
    let mut cmd = Command::new(binary);
    if mode == "ignores-selection" {
        let args = std::env::var("CNI_ARGS").unwrap_or_default();
        let kept: Vec<&str> = args
            .split(';')
            .filter(|kv| !kv.starts_with("K8S_POD_NAME="))
            .collect();
        cmd.env("CNI_ARGS", kept.join(";"));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("running the inner plugin: {e}")));
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(inner.to_string().as_bytes());
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| fail(&format!("the inner plugin: {e}")));
    let mut stdout = out.stdout;
    if command == "ADD" && mode == "wrong-version" && out.status.success() {
        if let Ok(mut v) = serde_json::from_slice::<Value>(&stdout) {
            let asked = conf["cniVersion"].as_str().unwrap_or_default();
            v["cniVersion"] = json!(if asked == "1.0.0" { "1.1.0" } else { "1.0.0" });
            stdout = v.to_string().into_bytes();
        }
    }
    if command == "ADD" && mode == "swallows-errors" && !out.status.success() {
        let v = conf["cniVersion"].as_str().unwrap_or("1.0.0");
        print!(r#"{{"cniVersion":"{v}"}}"#);
        return;
    }
    if command == "ADD" && mode == "bad-status" && out.status.success() {
        if let Err(e) = overwrite_status(&inner) {
            fail(&format!("overwriting network-status: {e:#}"));
        }
    }
    let _ = std::io::stdout().write_all(&stdout);
    std::process::exit(out.status.code().unwrap_or(1));
}

/// Writes a network-status that describes no attachment on the request's pod.
fn overwrite_status(inner: &Value) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, Patch, PatchParams};
    let args = std::env::var("CNI_ARGS").unwrap_or_default();
    let arg = |k: &str| {
        args.split(';')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_string()
    };
    let (ns, name) = (arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME"));
    let kc = inner["kubeconfig"].as_str().unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(kc)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config)?, &ns);
        let status = json!([{"name": "not-an-attachment", "interface": "eth9", "default": false}]);
        let body = json!({"metadata": {"annotations": {"k8s.v1.cni.cncf.io/network-status": status.to_string()}}});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&body)).await?;
        Ok(())
    })
}
