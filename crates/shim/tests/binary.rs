//! The shim as a runtime executes it, without a daemon.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run(env: &[(&str, &str)], stdin: &str) -> (i32, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plexus-shim"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn version_is_answered_locally() {
    let (code, v) = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
    assert_eq!(code, 0);
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 7);
}

#[test]
fn no_daemon_is_try_again_later_in_the_callers_version() {
    let dir = tempfile::tempdir().unwrap();
    let conf = serde_json::json!({"cniVersion": "0.3.1", "name": "n", "type": "plexus-shim",
        "daemonSocketDir": dir.path(), "plexus": {"shimWaitSeconds": 1}});
    let env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
    ];
    let start = Instant::now();
    let (code, v) = run(&env, &conf.to_string());
    assert_eq!(code, 1);
    assert_eq!(v["code"], 11, "{v}");
    assert_eq!(v["cniVersion"], "0.3.1");
    assert!(v["msg"].as_str().unwrap().contains("plexus.sock"), "{v}");
    assert!(start.elapsed() < Duration::from_secs(5));
    let (_, v) = run(&env, "not json");
    assert_eq!(v["code"], 6);
}
