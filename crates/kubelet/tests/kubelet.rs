//! The PodResources client against the test kubelet (the real gRPC service on a unix
//! socket) and the checkpoint fallback. No root needed.

use plexus_engine::{Devices, PodInfo};
use plexus_kubelet::testing::{write_checkpoint, TestKubelet};
use plexus_kubelet::{KubeletDevices, Settings};
use std::path::Path;
use std::time::Duration;

fn pod(ns: &str, name: &str, uid: &str) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        uid: uid.into(),
        ..Default::default()
    }
}

fn settings(dir: &Path, timeout_ms: u64) -> Settings {
    Settings {
        socket: dir.join("kubelet.sock"),
        checkpoint: dir.join("kubelet_internal_checkpoint"),
        timeout: Duration::from_millis(timeout_ms),
    }
}

#[test]
fn get_answers_every_container_sorted() {
    let dir = tempfile::tempdir().unwrap();
    let k = TestKubelet::start(dir.path().join("kubelet.sock")).unwrap();
    k.allocate(
        "ns",
        "p",
        "a",
        "vendor.example/vf",
        &["0000:03:02.2", "0000:03:02.0"],
    );
    k.allocate("ns", "p", "b", "vendor.example/vf", &["0000:03:02.1"]);
    k.allocate("ns", "p", "b", "vendor.example/gpu", &["gpu-1"]);
    k.allocate("ns", "other", "a", "vendor.example/vf", &["0000:03:02.7"]);
    let c = KubeletDevices::new(settings(dir.path(), 5000));
    let a = c.allocation(&pod("ns", "p", "u")).unwrap();
    assert_eq!(
        a.resources["vendor.example/vf"],
        ["0000:03:02.0", "0000:03:02.1", "0000:03:02.2"]
    );
    assert_eq!(a.resources["vendor.example/gpu"], ["gpu-1"]);
    assert!(a.source.contains("kubelet.sock"), "{}", a.source);
    // The one pod asked for, with Get; the connection is kept for the next call.
    let b = c.allocation(&pod("ns", "other", "u2")).unwrap();
    assert_eq!(b.resources["vendor.example/vf"], ["0000:03:02.7"]);
    assert_eq!(k.calls(), ["Get", "Get"]);
}

#[test]
fn a_kubelet_without_get_is_listed_and_unknown_pods_have_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let k = TestKubelet::start(dir.path().join("kubelet.sock")).unwrap();
    k.disable_get();
    k.allocate("ns", "p", "a", "r/vf", &["x"]);
    let c = KubeletDevices::new(settings(dir.path(), 5000));
    assert_eq!(
        c.allocation(&pod("ns", "p", "u")).unwrap().resources["r/vf"],
        ["x"]
    );
    assert!(c
        .allocation(&pod("ns", "gone", "u"))
        .unwrap()
        .resources
        .is_empty());
    // Get refused once, List from then on.
    assert_eq!(k.calls(), ["Get", "List", "List"]);
    // A kubelet with Get that does not know the pod: List agrees, nothing allocated.
    let dir2 = tempfile::tempdir().unwrap();
    let k2 = TestKubelet::start(dir2.path().join("kubelet.sock")).unwrap();
    let c2 = KubeletDevices::new(settings(dir2.path(), 5000));
    assert!(c2
        .allocation(&pod("ns", "gone", "u"))
        .unwrap()
        .resources
        .is_empty());
    assert_eq!(k2.calls(), ["Get", "List"]);
}

#[test]
fn a_hanging_kubelet_is_a_clear_try_again_error() {
    let dir = tempfile::tempdir().unwrap();
    let k = TestKubelet::start(dir.path().join("kubelet.sock")).unwrap();
    k.allocate("ns", "p", "a", "r/vf", &["x"]);
    k.hang(true);
    let c = KubeletDevices::new(settings(dir.path(), 300));
    let e = c.allocation(&pod("ns", "p", "u")).unwrap_err();
    assert_eq!(e.code, 11);
    for part in ["kubelet.sock", "no answer within 300 ms", "\"ns/p\""] {
        assert!(e.msg.contains(part), "{part}: {}", e.msg);
    }
}

#[test]
fn without_the_socket_the_checkpoint_answers() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path(), 1000);
    write_checkpoint(
        &s.checkpoint,
        &[
            ("uid-p", "a", "r/vf", &["b", "a"]),
            ("uid-q", "a", "r/vf", &["c"]),
        ],
    )
    .unwrap();
    let c = KubeletDevices::new(s.clone());
    let a = c.allocation(&pod("ns", "p", "uid-p")).unwrap();
    assert_eq!(a.resources["r/vf"], ["a", "b"]);
    assert!(a.source.contains("checkpoint"), "{}", a.source);
    // A socket nobody listens on (a kubelet that died): the checkpoint too.
    let l = std::os::unix::net::UnixListener::bind(&s.socket).unwrap();
    drop(l);
    assert!(s.socket.exists());
    let a = KubeletDevices::new(s.clone())
        .allocation(&pod("ns", "p", "uid-p"))
        .unwrap();
    assert_eq!(a.resources["r/vf"], ["a", "b"]);
    // Neither: an error naming both.
    std::fs::remove_file(&s.checkpoint).unwrap();
    let e = KubeletDevices::new(s)
        .allocation(&pod("ns", "p", "uid-p"))
        .unwrap_err();
    assert_eq!(e.code, 11);
    assert!(
        e.msg.contains("kubelet.sock") && e.msg.contains("kubelet_internal_checkpoint"),
        "{}",
        e.msg
    );
}

#[test]
fn thick_mode_calls_from_blocking_threads_on_one_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let k = TestKubelet::start(dir.path().join("kubelet.sock")).unwrap();
    k.allocate("ns", "p", "a", "r/vf", &["x", "y"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let c = std::sync::Arc::new(KubeletDevices::on(
        rt.handle().clone(),
        settings(dir.path(), 5000),
    ));
    let got = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let c = c.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                c.allocation(&pod("ns", "p", "u"))
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap().unwrap());
        }
        out
    });
    assert!(got.iter().all(|a| a.resources["r/vf"] == ["x", "y"]));
    assert_eq!(k.calls().len(), 8);
}
