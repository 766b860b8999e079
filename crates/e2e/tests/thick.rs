//! Thick mode: plexusd on a temporary socket in the node's host namespace, the
//! plexus-shim CNI binary executed as a runtime executes it, the repo's test API
//! server behind the daemon's caches, real namespaces and reference plugins.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use plexus_e2e::meta::*;
use plexus_e2e::*;
use plexus_testapi::Resource;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn kube_node() -> (Node, plexus_testapi::TestApiServer) {
    let (n, api) = Node::kube(2);
    api.put(
        Resource::Nads,
        nad_object(
            "demo",
            "br",
            &bridge_host_local(&unique("tbr"), "198.51.100.0/24", &n.ipam_dir()),
        ),
    );
    (n, api)
}

fn thick(n: &mut Node) -> Value {
    let shim = n.shim_conf();
    std::mem::replace(&mut n.conf, shim)
}

#[test]
fn steady_state_add_reads_nothing_and_writes_the_status_once() {
    let (mut n, api) = kube_node();
    api.put(Resource::Pods, pod_object("demo", "web", "u1", Some("br")));
    let d = Daemon::start(&n, json!({"plexus": {"addedInterfaceEvents": false}}));
    thick(&mut n);
    api.clear_requests();
    let att = n.attachment(0, &unique("cid"), "demo", "web", &[]);
    let r = n.add(&att).unwrap();
    assert_eq!(r.version(), "1.0.0");
    let reads: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|(m, p)| m == "GET" && !p.contains("watch=true"))
        .collect();
    assert!(reads.is_empty(), "no API read in steady state: {reads:?}");
    assert_eq!(api.count("PATCH", "/pods/web/status"), 1);
    assert_eq!(
        api.requests()
            .iter()
            .filter(|(m, p)| m != "GET" || !p.contains("watch"))
            .count(),
        1,
        "{:?}",
        api.requests()
    );
    let st = api.get(Resource::Pods, "demo", "web").unwrap();
    assert!(
        st["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]
            .as_str()
            .unwrap()
            .contains("demo/br")
    );
    n.del(&att).unwrap();
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    d.stop();
}

#[test]
fn new_pod_and_new_nad_are_found() {
    let (mut n, api) = kube_node();
    let d = Daemon::start(&n, json!({}));
    thick(&mut n);
    api.put(
        Resource::Nads,
        nad_object(
            "demo",
            "late",
            &bridge_host_local(&unique("lbr"), "203.0.113.0/24", &n.ipam_dir()),
        ),
    );
    api.put(
        Resource::Pods,
        pod_object("demo", "fresh", "u2", Some("late")),
    );
    let att = n.attachment(0, &unique("cid"), "demo", "fresh", &[]);
    n.add(&att).unwrap();
    assert!(addresses(n.world.ctr(0), "net1")[0].starts_with("203.0.113."));
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    d.stop();
}

fn added_interface_events(api: &plexus_testapi::TestApiServer, uid: &str) -> Vec<String> {
    api.list(Resource::Events)
        .into_iter()
        .filter(|e| e["reason"] == "AddedInterface" && e["involvedObject"]["uid"] == uid)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits (bounded) until `n` events are there: the daemon posts them in the background.
fn wait_events(api: &plexus_testapi::TestApiServer, uid: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = added_interface_events(api, uid);
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn added_interface_events_are_posted_after_the_answer() {
    let (mut n, api) = kube_node();
    api.put(
        Resource::Nads,
        nad_object(
            "demo",
            "broken",
            &json!({"cniVersion": "1.0.0", "type": "no-such-plugin"}),
        ),
    );
    api.put(Resource::Pods, pod_object("demo", "ok", "u-ok", Some("br")));
    api.put(
        Resource::Pods,
        pod_object("demo", "half", "u-half", Some("br,broken")),
    );
    let d = Daemon::start(&n, json!({}));
    thick(&mut n);
    let att = n.attachment(0, &unique("cid"), "demo", "ok", &[]);
    n.add(&att).unwrap();
    let mut got = wait_events(&api, "u-ok", 2);
    got.sort();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("Add eth0 [192.0.2."), "{got:?}");
    assert!(got[1].starts_with("Add net1 [198.51.100."), "{got:?}");
    assert!(got[1].ends_with("] from demo/br"), "{got:?}");
    n.del(&att).unwrap();
    // The second network fails: the interfaces attached before it are still reported
    // (as Multus does), after the answer, and were removed by the rollback; nothing is
    // left.

    let att = n.attachment(1, &unique("cid"), "demo", "half", &[]);
    let e = n.add(&att).unwrap_err();
    assert!(e.msg.contains("no-such-plugin"), "{}", e.msg);
    let got = wait_events(&api, "u-half", 2);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(links(n.world.ctr(1)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    d.stop();
}

#[test]
fn the_status_write_retries_conflicts_and_server_errors_and_its_failure_rolls_the_add_back() {
    let (mut n, api) = kube_node();
    api.put(Resource::Pods, pod_object("demo", "p", "u1", Some("br")));
    let d = Daemon::start(&n, json!({}));
    let thin = thick(&mut n);
    // A conflict: the pod is read again and the write retried.
    api.fail_when("PATCH", "/status", 1, 409);
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    n.add(&att).unwrap();
    assert_eq!(api.count("PATCH", "/pods/p/status"), 2);
    assert_eq!(api.count("GET", "/pods/p"), 1);
    n.del(&att).unwrap();
    // A server error is transient: retried, as in thin mode (plexus.apiRetries).
    api.fail_when("PATCH", "/status", 1, 500);
    let att = n.attachment(1, &unique("cid"), "demo", "p", &[]);
    n.add(&att).unwrap();
    assert_eq!(api.count("PATCH", "/pods/p/status"), 4);
    n.del(&att).unwrap();
    d.stop();
    // Without retries, the ADD fails with it, after everything it attached is deleted.
    n.conf = thin;
    let d = Daemon::start(&n, json!({"plexus": {"apiRetries": 1}}));
    thick(&mut n);
    api.fail_when("PATCH", "/status", 1, 500);
    let att = n.attachment(1, &unique("cid"), "demo", "p", &[]);
    let e = n.add(&att).unwrap_err();
    assert_eq!(e.code, 11, "{e}");
    assert!(
        e.msg.contains("pod \"demo/p\": writing network-status"),
        "{e}"
    );
    assert_eq!(links(n.world.ctr(1)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    // The runtime's DEL after the failed ADD finds nothing left to do.
    n.del(&att).unwrap();
    d.stop();
}

/// The host's root mounted at a directory of the test, as the DaemonSet mounts it at
/// /hostroot, with a directory of the test over its /var/lib/cni/networks: what a
/// delegate writes there shows it ran in the chroot. Unmounted when dropped.
struct HostRoot {
    root: std::path::PathBuf,
    reservations: std::path::PathBuf,
    /// The host had no /var/lib/cni/networks: the test made it, and removes it.
    made: bool,
}

impl HostRoot {
    fn mount(n: &Node) -> HostRoot {
        let root = n.world.subdir("hostroot");
        let reservations = n.world.subdir("reservations");
        let sh = |cmd: &[&str]| {
            let out = std::process::Command::new(cmd[0])
                .args(&cmd[1..])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let made = !std::path::Path::new("/var/lib/cni/networks").exists();
        std::fs::create_dir_all("/var/lib/cni/networks").unwrap();
        let r = root.to_str().unwrap();
        sh(&["mount", "--rbind", "/", r]);
        // Private first: the overlay below must never reach the host's own tree.
        let guard = HostRoot {
            root: root.clone(),
            reservations: reservations.clone(),
            made,
        };
        sh(&["mount", "--make-rprivate", r]);
        let over = root.join("var/lib/cni/networks");
        sh(&[
            "mount",
            "--bind",
            reservations.to_str().unwrap(),
            over.to_str().unwrap(),
        ]);
        guard
    }
}

impl Drop for HostRoot {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-R", "-l"])
            .arg(&self.root)
            .status();
        if self.made {
            // Only if still empty: nothing of anyone else's is removed.
            let _ = std::fs::remove_dir("/var/lib/cni/networks");
            let _ = std::fs::remove_dir("/var/lib/cni");
        }
    }
}

#[test]
fn delegates_run_in_the_host_root_and_reservations_survive_a_restart() {
    // The shipped layout: the configmap's chrootDir, the host's root mounted there.
    let (mut n, api) = kube_node();
    let host = HostRoot::mount(&n);
    let cm = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/configmap.yaml"
    ))
    .unwrap();
    assert!(
        cm.contains("\"chrootDir\": \"/hostroot\""),
        "the manifests run delegates chrooted"
    );
    // host-local with its default dataDir, as most NADs leave it.
    let net = json!({"cniVersion": "1.0.0", "plugins": [{"type": "bridge", "bridge": unique("hbr"),
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "203.0.113.0/24"}]]}}]});
    api.put(Resource::Nads, nad_object("demo", "hl", &net));
    for p in ["p0", "p1"] {
        api.put(
            Resource::Pods,
            pod_object("demo", p, &format!("u-{p}"), Some("hl")),
        );
    }
    let chroot = json!({"chrootDir": host.root});
    let d = Daemon::start(&n, chroot.clone());
    let thin = thick(&mut n);
    let a0 = n.attachment(0, &unique("cid"), "demo", "p0", &[]);
    n.add(&a0).unwrap();
    let reserved = |dir: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("hl"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with("203.0.113."))
            .collect();
        v.sort();
        v
    };
    let first = reserved(&host.reservations);
    assert_eq!(
        first.len(),
        1,
        "the reservation is in the host root the delegate saw"
    );
    assert!(reserved(std::path::Path::new("/var/lib/cni/networks")).is_empty());
    // The daemon restarts: the next pod gets another address, the first one kept.
    d.stop();
    n.conf = thin;
    let d = Daemon::start(&n, chroot);
    thick(&mut n);
    let a1 = n.attachment(1, &unique("cid"), "demo", "p1", &[]);
    n.add(&a1).unwrap();
    let both = reserved(&host.reservations);
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both.contains(&first[0]));
    n.del(&a0).unwrap();
    n.del(&a1).unwrap();
    assert!(reserved(&host.reservations).is_empty(), "released on DEL");
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    d.stop();
    drop(host);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn daemon_restart_between_add_and_del() {
    let (mut n, api) = kube_node();
    api.put(Resource::Pods, pod_object("demo", "p", "u1", Some("br")));
    let cfg = Daemon::config(&n, json!({}));
    let d = Daemon::run(&n.world, &cfg);
    thick(&mut n);
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    n.add(&att).unwrap();
    d.stop();
    a_new_daemon_dels_cleanly(&n, &cfg, &att);
}

/// A new daemon with `cfg` takes over: the runtime's DEL through it leaves nothing.
fn a_new_daemon_dels_cleanly(n: &Node, cfg: &Value, att: &plexus_cni::runtime::Attachment) {
    let d = Daemon::run(&n.world, cfg);
    n.del(att).unwrap();
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    d.stop();
}

#[test]
fn no_daemon_is_try_again_later_for_add_and_del() {
    let (mut n, _api) = kube_node();
    thick(&mut n);
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    let start = Instant::now();
    let e = n.add(&att).unwrap_err();
    assert_eq!(e.code, 11, "{e}");
    assert!(
        e.msg.contains("plexus daemon") && e.msg.contains("not ready"),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(
        n.del(&att).unwrap_err().code,
        11,
        "DEL is not swallowed: the runtime retries it"
    );
}

#[test]
fn del_errors_reach_the_runtime_and_the_state_is_kept() {
    let (mut n, api) = kube_node();
    n.conf["binDir"] = json!(plexus_bin().parent().unwrap());
    api.put(Resource::Nads, nad_object("demo", "sticky", &json!({"cniVersion": "1.0.0", "type": "plexus-test-plugin", "failOn": "DEL", "errorCode": 133})));
    api.put(
        Resource::Pods,
        pod_object("demo", "p", "u1", Some("sticky")),
    );
    let d = Daemon::start(&n, json!({}));
    thick(&mut n);
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    n.add(&att).unwrap();
    let e = n.del(&att).unwrap_err();
    assert_eq!(
        e.code, 133,
        "the delegate's DEL error and code reach the runtime: {e}"
    );
    assert!(e.msg.contains("demo/sticky"), "{e}");
    let state = n
        .world
        .subdir("cni")
        .join(format!("plexus/{}.json", att.container_id));
    let kept: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        kept["attachments"].as_array().unwrap().len(),
        1,
        "only the attachment whose DEL failed is kept for the retry"
    );
    assert_eq!(
        links(n.world.ctr(0)),
        ["lo"],
        "the cluster network was deleted anyway"
    );
    d.stop();
}

#[test]
fn thin_add_thick_del_and_the_reverse() {
    let (mut n, api) = kube_node();
    api.put(Resource::Pods, pod_object("demo", "p", "u1", Some("br")));
    let d = Daemon::start(&n, json!({}));
    let thin = n.conf.clone();
    let shim = n.shim_conf();
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    n.add(&att).unwrap();
    n.conf = shim.clone();
    n.del(&att).unwrap();
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    n.add(&att).unwrap();
    n.conf = thin;
    n.del(&att).unwrap();
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    d.stop();
}

#[test]
fn autoconfig_is_written_regenerated_and_never_removed() {
    let (n, _api) = kube_node();
    let netd = n.world.subdir("netd");
    std::fs::write(netd.join("10-cluster.conflist"), json!({"cniVersion": "1.0.0", "name": "cluster", "plugins": [{"type": "bridge"}, {"type": "portmap", "capabilities": {"portMappings": true}}]}).to_string()).unwrap();
    let d = Daemon::start(
        &n,
        json!({"multusConfigFile": "auto", "multusAutoconfigDir": netd, "cniConfigDir": netd}),
    );
    let generated = netd.join("00-plexus.conflist");
    let read = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(b) = std::fs::read(&generated) {
                let v: Value = serde_json::from_slice(&b).unwrap();
                if v["plugins"][0]["clusterNetwork"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(want))
                {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} never pointed at {want}",
                generated.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let v = read("10-cluster.conflist");
    assert_eq!(v["plugins"][0]["type"], "plexus-shim");
    assert_eq!(
        v["plugins"][0]["capabilities"],
        json!({"portMappings": true})
    );
    std::fs::write(
        netd.join("05-new.conflist"),
        json!({"cniVersion": "1.0.0", "name": "new", "plugins": [{"type": "bridge"}]}).to_string(),
    )
    .unwrap();
    read("05-new.conflist");
    d.stop();
    assert!(
        generated.exists(),
        "stopping the daemon never opens a window where the runtime uses the primary network alone"
    );
}

#[test]
fn bad_input_on_the_socket() {
    let (n, _api) = kube_node();
    let d = Daemon::start(
        &n,
        json!({"plexus": {"requestReadTimeoutMs": 500, "maxRequestBytes": 65536}}),
    );
    let post = |body: &str| {
        d.raw(format!("POST /cni HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).unwrap()
    };
    let r = post("not json");
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("\"code\":6"),
        "{r}"
    );
    let r = post(r#"{"env":{},"config":"e30="}"#);
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("\"code\":4") && r.contains("CNI_COMMAND"),
        "{r}"
    );
    let r = post(r#"{"env":{"CNI_COMMAND":"ADD"},"config":"!!!"}"#);
    assert!(r.starts_with("HTTP/1.1 400") && r.contains("base64"), "{r}");
    // /delegate: an `args.cni` of the wrong shape merged with `cni-args` is no panic (code 999).
    let env: std::collections::BTreeMap<String, String> = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "net1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut req = plexus_proto::CniRequest::new(
        &env,
        br#"{"cniVersion":"1.0.0","name":"n","type":"no-such-plugin","args":{"cni":"x"}}"#,
    );
    req.interface_attributes = json!({"cni-args": {"a": "b"}}).as_object().cloned();
    let body = serde_json::to_string(&req).unwrap();
    let r = d.raw(format!("POST /delegate HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).unwrap();
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("no-such-plugin") && !r.contains("999"),
        "{r}"
    );
    let huge = format!(r#"{{"env":{{}},"config":"{}"}}"#, "A".repeat(200_000));
    let r = post(&huge);
    assert!(r.starts_with("HTTP/1.1 413"), "{}", &r[..r.len().min(200)]);
    let r = d
        .raw(b"GET /cni HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    let r = d
        .raw(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    // A client that connects and stalls is cut off, and others are still served.
    use std::io::{Read, Write};
    let mut stalled = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    stalled
        .write_all(b"POST /cni HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut body_staller = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    body_staller
        .write_all(b"POST /cni HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let r = d
        .raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = stalled.read_to_end(&mut buf);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "the stalled connection was closed by the daemon"
    );
    body_staller
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = String::new();
    let _ = body_staller.read_to_string(&mut buf);
    assert!(buf.starts_with("HTTP/1.1 408"), "{buf}");
    d.stop();
    assert!(!d_socket_exists(&n), "the socket is removed at shutdown");
}

#[test]
fn an_oversized_request_gets_a_readable_error_that_is_not_try_again() {
    let (mut n, api) = kube_node();
    api.put(Resource::Pods, pod_object("demo", "p", "u1", Some("br")));
    let d = Daemon::start(&n, json!({"plexus": {"maxRequestBytes": 8192}}));
    thick(&mut n);
    n.conf["padding"] = json!("x".repeat(256 * 1024));
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    let e = n.add(&att).unwrap_err();
    assert_eq!(e.code, 7, "the same request would be refused again: {e}");
    assert!(e.msg.contains("plexus.maxRequestBytes = 8192"), "{e}");
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    d.stop();
}

#[test]
fn idle_connections_do_not_hold_back_requests() {
    use std::io::Read;
    let (n, _api) = kube_node();
    let d = Daemon::start(
        &n,
        json!({"connectionLimit": 4, "plexus": {"requestReadTimeoutMs": 3000}}),
    );
    // As many idle connections as the daemon serves at once: they send nothing.
    let idle: Vec<_> = (0..4)
        .map(|_| std::os::unix::net::UnixStream::connect(d.socket()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let r = d
        .raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // Every idle connection is still open: the answer did not wait for one to be cut.
    for s in &idle {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        match (&*s).read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("an idle connection was closed first: {other:?}"),
        }
    }
    // And they are cut in the end.
    for s in &idle {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        assert!((&*s).read_to_end(&mut buf).is_ok());
    }
    d.stop();
}

/// Runs plexus-shim as uid 65534 (nobody) with `env` and `stdin`; (exit code, stdout).
fn shim_as_nobody(n: &Node, env: &[(&str, &str)], stdin: &str) -> (i32, Value) {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    // A copy nobody may execute, whatever the checkout's directories allow.
    let bin = n.world.subdir("nobody").join("plexus-shim");
    std::fs::copy(plexus_bin().with_file_name("plexus-shim"), &bin).unwrap();
    for p in [
        bin.parent().unwrap(),
        bin.parent().unwrap().parent().unwrap(),
    ] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = n
        .world
        .host
        .run(|| {
            let mut c = std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&bin)
                .env_clear()
                .envs(env.iter().copied())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
            c.wait_with_output().unwrap()
        })
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn the_socket_serves_root_and_the_allowed_uids_only() {
    use std::os::unix::fs::PermissionsExt;
    let (n, _api) = kube_node();
    let env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "nobody-c1"),
        ("CNI_IFNAME", "eth0"),
    ];
    let conf = json!({"cniVersion": "1.0.0", "name": "plexus", "type": "plexus-shim",
                      "daemonSocketDir": n.world.subdir("run"), "plexus": {"shimWaitSeconds": 1}})
    .to_string();
    for (allowed, refused) in [(json!(null), true), (json!([65534]), false)] {
        let d = Daemon::start(&n, json!({"plexus": {"socketAllowedUids": allowed}}));
        // Modes opened up, as a careless mount might: the credentials still decide.
        let run = n.world.subdir("run");
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            run.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
        let (code, v) = shim_as_nobody(&n, &env, &conf);
        if refused {
            assert_eq!(code, 1, "{v}");
            assert_eq!(v["code"], 4, "{v}");
            assert!(v["msg"].as_str().unwrap().contains("uid 65534"), "{v}");
        } else {
            assert_eq!(code, 0, "{v}");
        }
        d.stop();
    }
}

fn d_socket_exists(n: &Node) -> bool {
    n.world.subdir("run").join("plexus.sock").exists()
}

#[test]
fn fifty_concurrent_adds_and_dels_repeated() {
    let mut n = Node::new(50, Mode::Local);
    n.nad(
        "demo",
        "br",
        bridge_host_local(&unique("ldb"), "198.51.100.0/24", &n.ipam_dir()),
    );
    let d = Daemon::start(&n, json!({"plexus": {"maxConcurrentRequests": 16}}));
    thick(&mut n);
    let mut rss = Vec::new();
    for round in 0..2 {
        let atts: Vec<_> = (0..50)
            .map(|i| {
                n.attachment(
                    i,
                    &format!("load{round}x{i}"),
                    "demo",
                    &format!("p{i}"),
                    &[("PLEXUS_NETWORKS", "br")],
                )
            })
            .collect();
        std::thread::scope(|s| {
            let hs: Vec<_> = atts.iter().map(|a| s.spawn(|| n.add(a))).collect();
            for (i, h) in hs.into_iter().enumerate() {
                h.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("ADD {i} in round {round}: {e}"));
            }
        });
        for i in 0..50 {
            assert_eq!(
                links(n.world.ctr(i)).len(),
                3,
                "pod {i}: {}",
                std::fs::read_to_string(&d.log)
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        rss.push(d.rss_kib());
        std::thread::scope(|s| {
            let hs: Vec<_> = atts.iter().map(|a| s.spawn(|| n.del(a))).collect();
            for (i, h) in hs.into_iter().enumerate() {
                h.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("DEL {i} in round {round}: {e}"));
            }
        });
        for i in 0..50 {
            assert_eq!(links(n.world.ctr(i)), ["lo"], "pod {i}");
        }
        assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    }
    eprintln!("plexusd RSS after each round of 50 ADDs: {rss:?} KiB");
    assert!(
        rss[1] < rss[0] + 20 * 1024,
        "memory does not grow with repeated churn: {rss:?}"
    );
    d.stop();
}

#[test]
fn nad_watch_metrics_and_cache_state() {
    let (mut n, api) = kube_node();
    let port = n.free_port();
    let d = Daemon::start(
        &n,
        json!({"metricsPort": port, "plexus": {"metricsBindAddress": "127.0.0.1"}}),
    );
    thick(&mut n);
    api.put(
        Resource::Nads,
        nad_object(
            "demo",
            "watched",
            &bridge_host_local(&unique("wbr"), "203.0.113.0/24", &n.ipam_dir()),
        ),
    );
    api.put(
        Resource::Pods,
        pod_object("demo", "p", "u1", Some("watched,br")),
    );
    // Wait until the watches delivered both objects (the cache gauges say so).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !n.scrape(port).contains("plexus_cached_nads 2")
        || !n.scrape(port).contains("plexus_cached_pods 1")
    {
        assert!(Instant::now() < deadline, "{}", n.scrape(port));
        std::thread::sleep(Duration::from_millis(200));
    }
    api.clear_requests();
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    n.add(&att).unwrap();
    assert_eq!(
        api.count("GET", "network-attachment-definitions/watched"),
        0,
        "the new NAD came from the watch"
    );
    let bad = n.attachment(
        1,
        &unique("cid"),
        "demo",
        "ghost-pod",
        &[("K8S_POD_UID", "x")],
    );
    let _ = n.add(&bad); // a pod unknown everywhere: empty result
    n.del(&att).unwrap();
    let m = n.scrape(port);
    assert!(m.contains("plexus_caches_synced 1"), "{m}");
    assert!(
        m.contains(r#"plexus_requests_total{handler="/cni",command="ADD",result="ok"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"plexus_requests_total{handler="/cni",command="DEL",result="ok"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"plexus_attachments_total{network="demo/watched"} 1"#),
        "{m}"
    );
    assert!(m.contains("plexus_request_duration_seconds_bucket"), "{m}");
    assert!(m.contains("plexus_requests_in_flight 0"), "{m}");
    // A hostile container ID sent straight to the socket (the runtime side would refuse it).
    let body = r#"{"env":{"CNI_COMMAND":"ADD","CNI_CONTAINERID":"bad/../id","CNI_NETNS":"/proc/self/ns/net","CNI_IFNAME":"eth0"},"config":"eyJjbmlWZXJzaW9uIjoiMS4wLjAifQ=="}"#;
    let r = d.raw(format!("POST /cni HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).unwrap();
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("\"code\":4"),
        "{r}"
    );
    let m = n.scrape(port);
    assert!(
        m.contains(r#"plexus_errors_total{command="ADD",code="4"} 1"#),
        "{m}"
    );
    d.stop();
}

/// The modes every plexus-bench run measures.
const BENCH_MODES: [&str; 4] = [
    "delegates alone",
    "plexus thin",
    "plexus thick",
    "thick floor",
];

/// Runs plexus-bench with `args`; its standard output, once it succeeded and printed
/// every mode.
fn run_bench<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let bench = plexus_bin().with_file_name("plexus-bench");
    let out = std::process::Command::new(&bench)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    for mode in BENCH_MODES {
        assert!(stdout.contains(mode), "{mode} missing:\n{stdout}");
    }
    stdout
}

#[test]
fn benchmark_harness_smoke_run() {
    // The harness (docs/benchmarks.md) in its quick form: it must run, measure every
    // mode, find no leak, and print every table. No number is asserted.
    let stdout = run_bench(["--quick"]);
    for table in [
        "## Latency per pod",
        "## Overhead over the delegates alone",
        "## Churn",
        "## plexusd memory",
        "## API requests per pod",
    ] {
        assert!(stdout.contains(table), "{table} missing:\n{stdout}");
    }
}

#[test]
fn benchmark_harness_runs_against_a_kubeconfig() {
    // `--kubeconfig`: an existing cluster instead of the harness's own test API server.
    // Here the "cluster" is a test API server on this test's loopback, outside the
    // bench's node namespace: the meta-plugins reach it through the bench's forwarder,
    // with TLS verified against the server's own name (tls-server-name).
    let api = plexus_testapi::TestApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kc);
    let stdout = run_bench([
        std::ffi::OsStr::new("--quick"),
        "--kinds".as_ref(),
        "noop,bridge".as_ref(),
        "--kubeconfig".as_ref(),
        kc.as_os_str(),
    ]);
    assert!(stdout.contains("API server: the cluster of"), "{stdout}");
    // No filler objects; the bench's own, in its namespace, on its node.
    let nads = api.list(Resource::Nads);
    assert!(!nads.is_empty());
    for n in &nads {
        let ns = n["metadata"]["namespace"].as_str().unwrap();
        assert!(ns.starts_with("plexus-bench-"), "{n}");
    }
    let pods = api.list(Resource::Pods);
    assert!(!pods.is_empty());
    for p in &pods {
        let node = p["spec"]["nodeName"].as_str().unwrap();
        assert!(node.starts_with("plexus-bench-"), "{p}");
    }
    // The plugins wrote their network-status through the forwarder (thin and thick).
    let with_status = pods
        .iter()
        .filter(|p| {
            p["metadata"]["annotations"]
                .get("k8s.v1.cni.cncf.io/network-status")
                .is_some()
        })
        .count();
    assert!(
        with_status * 2 >= pods.len(),
        "{with_status} of {}",
        pods.len()
    );
    // The thick floor's server wrote its status too (its entries' addresses are its own).
    let by_floor = pods
        .iter()
        .filter(|p| {
            p["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]
                .as_str()
                .is_some_and(|s| s.contains("02:00:00:00:00:00"))
        })
        .count();
    assert!(by_floor > 0, "no status written by the thick floor");
}

#[test]
fn a_benchmark_kubeconfig_that_cannot_be_used_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
         contexts: [{name: c, context: {cluster: k, user: u}}]\n\
         clusters: [{name: k, cluster: {server: 'http://127.0.0.1:8080'}}]\nusers: [{name: u, user: {}}]\n",
    )
    .unwrap();
    let bench = plexus_bin().with_file_name("plexus-bench");
    let child = std::process::Command::new(&bench)
        .args(["--quick", "--kubeconfig"])
        .arg(&kc)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not an https:// URL"), "{err}");
    // Refused before anything was made: no namespace of the bench's (their names carry
    // its process ID).
    let mine = format!("{:05x}", pid & 0xfffff);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !left.iter().any(|n| n.get(3..8) == Some(mine.as_str())),
        "left behind: {left:?}"
    );
}

#[test]
fn fault_soak_short_run_leaves_nothing() {
    // plexus-soak (docs/reliability.md) in a short form: pods through ADD and DEL in both
    // modes, several at a time, with every fault at least once (API server down or
    // failing, plugin and daemon killed mid-ADD, a delegate failing or hanging, the
    // namespace gone before DEL). It fails on any DEL error other than a retryable one and
    // on anything left behind; the soak's own report says which.
    let soak = plexus_bin().with_file_name("plexus-soak");
    let out = std::process::Command::new(&soak)
        .args(["--cycles", "24", "--workers", "3", "--modes", "thin,thick"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "## thin: 24 cycles",
        "## thick: 24 cycles",
        "plugin or daemon killed mid-ADD",
        "namespace gone before DEL",
    ] {
        assert!(stdout.contains(line), "{line} missing:\n{stdout}");
    }
    assert_eq!(
        stdout
            .matches("left behind: nothing (files, interfaces, reservations, processes)")
            .count(),
        2,
        "{stdout}"
    );
}

#[test]
fn a_delegate_dies_with_the_daemon_that_started_it() {
    let (mut n, api) = kube_node();
    n.conf["binDir"] = json!(plexus_bin().parent().unwrap());
    let rec = n.world.subdir("rec");
    api.put(
        Resource::Nads,
        nad_object(
            "demo",
            "stuck",
            &json!({"cniVersion": "1.0.0", "type": "plexus-test-plugin", "recordDir": rec, "hangOn": "ADD"}),
        ),
    );
    api.put(Resource::Pods, pod_object("demo", "p", "u1", Some("stuck")));
    let cfg = Daemon::config(&n, json!({}));
    let d = Daemon::run(&n.world, &cfg);
    thick(&mut n);
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    let (call, add) = std::thread::scope(|s| {
        let adding = s.spawn(|| n.add(&att));
        let call = wait_for_call(&rec, "ADD", Duration::from_secs(20));
        assert_eq!(call["ppid"].as_u64(), Some(u64::from(d.pid())));
        kill_9(u64::from(d.pid()));
        (call, adding.join().unwrap())
    });
    assert!(add.is_err(), "the killed daemon answered: {add:?}");
    let pid = call["pid"].as_u64().unwrap();
    assert!(
        gone_within(pid, Duration::from_secs(5)),
        "delegate {pid} outlived the daemon that started it"
    );
    drop(d);
    // The next daemon cleans up what the killed ADD attached.
    a_new_daemon_dels_cleanly(&n, &cfg, &att);
}
