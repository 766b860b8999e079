//! The runtime side of the protocol against a recording test plugin: exactly what each
//! delegate receives (environment, derived configuration, prevResult), STATUS and GC
//! semantics, and every kind of misbehaving plugin.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use plexus_cni::config::NetworkConfigList;
use plexus_cni::runtime::{Attachment, Runtime, ValidAttachment};
use plexus_cni::CniError;
use plexus_e2e::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

fn runtime(cache: &Path) -> Runtime {
    Runtime::new(plugin_paths(&test_plugin()), Some(cache.to_path_buf()))
}

fn list(version: &str, rec: &Path, extra: Value) -> NetworkConfigList {
    let mut p = json!({"type": "plexus-test-plugin", "recordDir": rec});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    NetworkConfigList::from_value(json!({"cniVersion": version, "name": unique("prt"), "plugins": [p, {"type": "plexus-test-plugin", "recordDir": rec, "ip": "2001:db8::7/64"}]})).unwrap()
}

fn att(cid: &str) -> Attachment {
    Attachment {
        container_id: cid.into(),
        netns: Some("/run/netns/fake".into()),
        ifname: "eth0".into(),
        ..Default::default()
    }
}

fn commands(rec: &Path) -> Vec<String> {
    recorded_calls(rec)
        .iter()
        .map(|c| {
            c["env"]["CNI_COMMAND"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

struct Dirs {
    _root: tempfile::TempDir,
    rec: std::path::PathBuf,
    cache: std::path::PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let rec = root.path().join("rec");
    let cache = root.path().join("cache");
    std::fs::create_dir_all(&rec).unwrap();
    Dirs {
        rec,
        cache,
        _root: root,
    }
}

#[test]
fn add_del_check_protocol() {
    let d = dirs();
    let rt = runtime(&d.cache);
    let l = list(
        "1.1.0",
        &d.rec,
        json!({"capabilities": {"mac": true, "ips": false}, "custom": {"kept": [1, 2]}}),
    );
    let mut a = att("c1");
    a.args = plexus_cni::args::CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=p").unwrap();
    a.capability_args
        .insert("mac".into(), json!("02:00:5e:00:53:09"));
    a.capability_args
        .insert("ips".into(), json!(["192.0.2.1/24"]));
    let r = rt.add_list(&l, &a).unwrap().to_current();
    assert_eq!(r.ips.len(), 2, "second plugin extended the first's result");
    rt.check_list(&l, &a).unwrap();
    rt.del_list(&l, &a).unwrap();
    let c = recorded_calls(&d.rec);
    assert_eq!(
        commands(&d.rec),
        ["ADD", "ADD", "CHECK", "CHECK", "DEL", "DEL"]
    );
    // A clean, explicit environment: only CNI_* and PATH.
    let mut keys: Vec<&str> = c[0]["env"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "CNI_ARGS",
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_IFNAME",
            "CNI_NETNS",
            "CNI_PATH",
            "PATH"
        ]
    );
    assert_eq!(c[0]["env"]["CNI_ARGS"], "IgnoreUnknown=1;K8S_POD_NAME=p");
    // Derived config: name/cniVersion injected, capabilities removed, runtimeConfig = declared only.
    let first = &c[0]["config"];
    assert_eq!(first["name"], l.name.as_str());
    assert_eq!(first["cniVersion"], "1.1.0");
    assert!(first.get("capabilities").is_none());
    assert_eq!(first["runtimeConfig"], json!({"mac": "02:00:5e:00:53:09"}));
    assert_eq!(first["custom"], json!({"kept": [1, 2]}));
    assert!(
        first.get("prevResult").is_none(),
        "first ADD has no prevResult"
    );
    assert_eq!(
        c[1]["config"]["prevResult"]["ips"][0]["address"],
        "192.0.2.100/24"
    );
    assert!(c[1]["config"].get("runtimeConfig").is_none());
    // CHECK and DEL get the final result; DEL in reverse order.
    for (i, call) in c.iter().enumerate().skip(2) {
        let prev = &call["config"]["prevResult"]["ips"];
        assert_eq!(prev.as_array().unwrap().len(), 2, "call {i}");
    }
    assert!(
        c[4]["config"].get("ip").is_some(),
        "DEL starts with the last plugin"
    );
    assert!(c[5]["config"].get("custom").is_some());
    assert!(files_below(&d.cache).is_empty());
}

#[test]
fn disable_check_and_old_versions_skip_calls() {
    let d = dirs();
    let rt = runtime(&d.cache);
    let mut v = list("1.0.0", &d.rec, json!({})).to_value();
    v["disableCheck"] = json!(true);
    let l = NetworkConfigList::from_value(v).unwrap();
    rt.add_list(&l, &att("c1")).unwrap();
    rt.check_list(&l, &att("c1")).unwrap();
    rt.status_list(&l).unwrap();
    rt.gc_list(
        &l,
        &[ValidAttachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }],
    )
    .unwrap();
    assert_eq!(
        commands(&d.rec),
        ["ADD", "ADD"],
        "no CHECK (disabled), no STATUS/GC below 1.1.0"
    );
    // CHECK without a cached result is an error naming the container.
    let e = rt
        .check_list(&list("1.0.0", &d.rec, json!({})), &att("nope"))
        .unwrap_err();
    assert_eq!(e.code, 3);
}

#[test]
fn status_keeps_the_plugin_code() {
    let d = dirs();
    let rt = runtime(&d.cache);
    let e = rt
        .status_list(&list("1.1.0", &d.rec, json!({"statusCode": 51})))
        .unwrap_err();
    assert_eq!(e.code, 51);
    assert!(
        e.msg.contains("failed on STATUS") && e.msg.contains("not ready"),
        "{e}"
    );
    rt.status_list(&list("1.1.0", &d.rec, json!({}))).unwrap();
    let c = recorded_calls(&d.rec);
    assert_eq!(
        c[0]["env"].as_object().unwrap().len(),
        3,
        "STATUS gets CNI_COMMAND, CNI_PATH, PATH only"
    );
}

#[test]
fn gc_dels_stale_attachments_and_forwards_the_valid_list() {
    let d = dirs();
    let rt = runtime(&d.cache);
    let l = list("1.1.0", &d.rec, json!({}));
    for cid in ["keep1", "stale1"] {
        rt.add_list(&l, &att(cid)).unwrap();
    }
    let valid = [ValidAttachment {
        container_id: "keep1".into(),
        ifname: "eth0".into(),
    }];
    rt.gc_list(&l, &valid).unwrap();
    let c = recorded_calls(&d.rec);
    let tail: Vec<(String, String)> = c[4..]
        .iter()
        .map(|c| {
            (
                c["env"]["CNI_COMMAND"].as_str().unwrap().into(),
                c["env"]["CNI_CONTAINERID"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        tail,
        [
            ("DEL".into(), "stale1".into()),
            ("DEL".into(), "stale1".into()),
            ("GC".into(), "".into()),
            ("GC".into(), "".into())
        ]
    );
    let gc = &c[6]["config"];
    assert_eq!(
        gc["cni.dev/valid-attachments"],
        json!([{"containerID": "keep1", "ifname": "eth0"}])
    );
    assert_eq!(gc["cni.dev/attachments"], gc["cni.dev/valid-attachments"]);
    let cache = rt.cache.as_ref().unwrap();
    assert!(cache.load(&l.name, "keep1", "eth0").unwrap().is_some());
    assert!(cache.load(&l.name, "stale1", "eth0").unwrap().is_none());
}

#[test]
fn gc_reports_every_error_and_goes_on() {
    let d = dirs();
    let rt = runtime(&d.cache);
    let l = NetworkConfigList::from_value(json!({"cniVersion": "1.1.0", "name": unique("gce"), "plugins": [
        {"type": "plexus-test-plugin", "recordDir": d.rec, "behavior": "error", "errorCode": 120},
        {"type": "plexus-test-plugin", "recordDir": d.rec, "behavior": "error", "errorCode": 121}
    ]}))
    .unwrap();
    let e = rt.gc_list(&l, &[]).unwrap_err();
    assert_eq!(e.code, 120);
    assert_eq!(e.msg.matches("failed on GC").count(), 2, "{e}");
    assert_eq!(commands(&d.rec), ["GC", "GC"]);
}

fn add_err(extra: Value) -> CniError {
    let d = dirs();
    let l = list("1.0.0", &d.rec, extra);
    let mut rt = runtime(&d.cache);
    rt.timeout = Duration::from_millis(500);
    let e = rt.add_list(&l, &att("c1")).unwrap_err();
    assert!(
        files_below(&d.cache).is_empty(),
        "nothing cached after a failed ADD"
    );
    e
}

#[test]
fn misbehaving_plugins() {
    let e = add_err(json!({"behavior": "error", "errorCode": 142}));
    assert_eq!((e.code, e.details.as_str()), (142, "behavior=error"));
    let e = add_err(json!({"behavior": "garbage"}));
    assert_eq!(e.code, 6, "{e}");
    let e = add_err(json!({"behavior": "crash"}));
    assert_eq!(e.code, 999);
    assert!(
        e.msg.contains("exit status 3") && e.details.contains("fake crash"),
        "{e:?}"
    );
    let e = add_err(json!({"behavior": "silent"}));
    assert_eq!(e.code, 6, "an ADD without a result: {e}");
    let start = Instant::now();
    let e = add_err(json!({"behavior": "hang"}));
    assert_eq!(e.code, 11);
    assert!(e.msg.contains("was killed"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(10));
    let e = add_err(json!({"type": "no-such-plugin"}));
    assert_eq!(e.code, 7);
    assert!(
        e.msg.contains("failed to find plugin \"no-such-plugin\""),
        "{e}"
    );
}

#[test]
fn hostile_identifiers_never_reach_a_plugin_or_a_path() {
    let d = dirs();
    let rt = runtime(&d.cache);
    let l = list("1.0.0", &d.rec, json!({}));
    for (cid, ifname) in [
        ("../../etc", "eth0"),
        ("ok", "../x"),
        ("ok", "averyveryverylongname"),
        ("", "eth0"),
    ] {
        let a = Attachment {
            container_id: cid.into(),
            netns: Some("/x".into()),
            ifname: ifname.into(),
            ..Default::default()
        };
        assert_eq!(rt.add_list(&l, &a).unwrap_err().code, 4, "{cid} {ifname}");
        assert_eq!(rt.del_list(&l, &a).unwrap_err().code, 4, "{cid} {ifname}");
    }
    assert!(recorded_calls(&d.rec).is_empty());
    assert!(!d.cache.exists() || files_below(&d.cache).is_empty());
}

#[test]
fn corrupt_cache_does_not_block_del() {
    let d = dirs();
    let rt = runtime(&d.cache);
    let l = list("1.0.0", &d.rec, json!({}));
    rt.add_list(&l, &att("c1")).unwrap();
    let path = rt
        .cache
        .as_ref()
        .unwrap()
        .path(&l.name, "c1", "eth0")
        .unwrap();
    std::fs::write(&path, "{\"kind\":\"cniCacheV1\",").unwrap();
    rt.del_list(&l, &att("c1")).unwrap();
    assert!(!path.exists());
    let dels: Vec<_> = recorded_calls(&d.rec)
        .into_iter()
        .filter(|c| c["env"]["CNI_COMMAND"] == "DEL")
        .collect();
    assert_eq!(dels.len(), 2);
    assert!(dels[0]["config"].get("prevResult").is_none());
}

#[test]
fn plugin_version_probe_and_validation() {
    let d = dirs();
    let rt = runtime(&d.cache);
    assert_eq!(rt.plugin_versions("plexus-test-plugin").unwrap().len(), 7);
    assert!(rt
        .plugin_versions("bridge")
        .unwrap()
        .contains(&"1.0.0".to_string()));
    rt.validate_list(&list("1.1.0", &d.rec, json!({}))).unwrap();
    let bridge11 = NetworkConfigList::from_value(
        json!({"cniVersion": "1.1.0", "name": "b", "plugins": [{"type": "bridge"}]}),
    )
    .unwrap();
    let e = rt.validate_list(&bridge11).unwrap_err();
    assert_eq!(e.code, 1);
    assert!(
        e.msg.contains("does not support config version \"1.1.0\""),
        "{e}"
    );
}

/// Processes, zombies included, running the binary `path` (its name is unique and
/// shorter than the kernel's 15-byte `comm`).
fn processes_of(path: &Path) -> usize {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.len() <= 15);
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim_end() == name)
        .count()
}

#[test]
fn plugins_started_ahead_act_only_on_their_turn_and_are_killed_when_unused() {
    let d = dirs();
    // A copy under a name of its own, so this test's processes can be counted.
    let bin_dir = d.cache.parent().unwrap().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let name = unique("ahead");
    let bin = bin_dir.join(&name);
    std::fs::copy(test_plugin(), &bin).unwrap();
    let mut rt = Runtime::new(vec![bin_dir.clone()], Some(d.cache.clone()));
    rt.prestart_chained = true;

    let l = NetworkConfigList::from_value(
        json!({"cniVersion": "1.0.0", "name": unique("prt"), "plugins": [
        {"type": name, "recordDir": d.rec},
        {"type": name, "recordDir": d.rec, "ip": "2001:db8::7/64"}]}),
    )
    .unwrap();
    let a = att(&unique("cid"));
    // Started ahead: the process runs, but it does nothing before its configuration comes.
    rt.prestart_add(&l, &a);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(processes_of(&bin), 1);
    assert!(recorded_calls(&d.rec).is_empty());
    // Its turn: the chain's ADD as usual, each plugin given its configuration in order.
    let r = rt.add_list(&l, &a).unwrap().to_current();
    assert_eq!(commands(&d.rec), ["ADD", "ADD"]);
    let calls = recorded_calls(&d.rec);
    assert!(calls[0]["config"].get("prevResult").is_none());
    assert!(calls[1]["config"].get("prevResult").is_some());
    assert!(r
        .ips
        .iter()
        .any(|ip| ip.address.to_string() == "2001:db8::7/64"));
    assert_eq!(processes_of(&bin), 0);
    // Started ahead and never given its turn (an ADD that failed first): killed and
    // reaped, nothing done.
    rt.prestart_add(&l, &att(&unique("cid")));
    let deadline = Instant::now() + Duration::from_secs(2);
    while processes_of(&bin) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(processes_of(&bin), 1);
    rt.discard_prestarted();

    assert_eq!(processes_of(&bin), 0);
    // Dropping the runtime does the same.
    rt.prestart_add(&l, &att(&unique("cid")));
    drop(rt);
    assert_eq!(processes_of(&bin), 0);
    assert_eq!(commands(&d.rec), ["ADD", "ADD"]);
}
