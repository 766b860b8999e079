//! A deliberately broken meta-plugin for the suite's own tests: it runs the plexus
//! binary its configuration names (`inner`, the plugin object; `innerBinary`) and breaks
//! one rule, as `brokenMode` says:
//!
//! - `wrong-version`: ADD prints its result with another `cniVersion` than asked for;
//! - `no-del`: DEL answers success and does nothing (interfaces and IPs stay);
//! - `ignores-selection`: the pod's selection is never read (only the default network).
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
    if command == "VERSION" {
        print!(
            r#"{{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}}"#
        );
        return;
    }
    let conf: Value =
        serde_json::from_slice(&stdin).unwrap_or_else(|_| fail("configuration is not JSON"));
    let mode = conf["brokenMode"].as_str().unwrap_or_default().to_string();
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
    if command == "DEL" && mode == "no-del" {
        return;
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
    let _ = std::io::stdout().write_all(&stdout);
    std::process::exit(out.status.code().unwrap_or(1));
}
