//! The binary as a runtime executes it, for the commands that need no namespace.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::Write;
use std::process::{Command, Stdio};

fn run(env: &[(&str, &str)], stdin: &str) -> (i32, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn version_lists_every_version() {
    let (code, v) = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.1.0"}"#);
    assert_eq!(code, 0);
    assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 7);
}

#[test]
fn bad_config_is_one_error_document() {
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_IFNAME", "eth0"),
    ];
    let (code, v) = run(&env, r#"{"cniVersion":"1.0.0","name":"x","type":"plexus"}"#);
    assert_eq!(code, 1);
    assert_eq!(v["code"], 7);
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("\"delegates\" or \"clusterNetwork\""),
        "{v}"
    );
    let (_, v) = run(
        &env,
        r#"{"cniVersion":"1.0.0","name":"x","type":"plexus","clusterNetwork":"x","delegates":"no"}"#,
    );
    assert_eq!(v["code"], 7);
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains("\"delegates\": invalid type"),
        "the key is named: {v}"
    );
    let (_, v) = run(&[("CNI_COMMAND", "ADD")], "not json");
    assert_eq!(v["code"], 6);
}

#[test]
fn bad_netns_is_code_4() {
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/tmp"),
        ("CNI_IFNAME", "eth0"),
    ];
    let (code, v) = run(
        &env,
        r#"{"cniVersion":"1.0.0","name":"x","type":"plexus","cniDir":"/nonexistent/plexus-test","delegates":[{"cniVersion":"1.0.0","name":"d","type":"bridge"}]}"#,
    );
    assert_eq!(code, 1);
    assert_eq!(v["code"], 4, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("CNI_NETNS"), "{v}");
    // The node's own namespace is never a pod's: refused before anything runs.
    let mut own = env;
    own[2] = ("CNI_NETNS", "/proc/self/ns/net");
    let (code, v) = run(
        &own,
        r#"{"cniVersion":"1.0.0","name":"x","type":"plexus","cniDir":"/nonexistent/plexus-test","delegates":[{"cniVersion":"1.0.0","name":"d","type":"bridge"}]}"#,
    );
    assert_eq!((code, v["code"].as_u64()), (1, Some(4)), "{v}");
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("the node's own network namespace"),
        "{v}"
    );
    // Nor is an interface name with control characters a name.
    let mut ctl = env;
    ctl[3] = ("CNI_IFNAME", "eth\u{1b}[0m");
    let (_, v) = run(
        &ctl,
        r#"{"cniVersion":"1.0.0","name":"x","type":"plexus","clusterNetwork":"x"}"#,
    );
    assert_eq!(v["code"], 4, "{v}");
}
