//! The suite run as its users run it: against Plexus in thin and in thick mode (every
//! MUST passes), and against a deliberately broken candidate (tests/broken_candidate),
//! where exactly the requirements it breaks fail. Needs root (network namespaces).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use plexus_conformance::candidate::CandidateFile;
use plexus_conformance::report;
use plexus_conformance::requirements;
use plexus_conformance::suite::{self, Env, Options, Outcome, Requirement, TestResult};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where cargo put the workspace's binaries (plexus, plexusd, the recording plugin).
fn exe_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_plexus-conformance"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn options() -> Options {
    Options {
        kubeconfig: None,
        node: "conformance-node".into(),
        timeout: Duration::from_secs(60),
        exe_dir: exe_dir(),
    }
}

fn run(file: &Path, only: &[&str]) -> Vec<TestResult> {
    let f = CandidateFile::load(file).unwrap();
    let base = file.parent().unwrap().to_path_buf();
    let env = Env::new(&f, &base, &options()).unwrap();
    let all = requirements::all();
    let chosen: Vec<&Requirement> = all
        .iter()
        .filter(|r| only.is_empty() || only.contains(&r.id))
        .collect();
    suite::run(&env, &chosen, &mut |_| {})
}

fn outcome<'a>(rs: &'a [TestResult], id: &str) -> &'a Outcome {
    &rs.iter().find(|r| r.id == id).unwrap().outcome
}

fn candidates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("candidates")
}

#[test]
fn every_must_passes_for_plexus_thin() {
    let rs = run(&candidates().join("plexus-thin.json"), &[]);
    assert!(
        report::conformant(&rs),
        "{}",
        report::to_markdown("thin", "", &rs)
    );
    assert_eq!(rs.len(), requirements::all().len());
}

#[test]
fn every_must_passes_for_plexus_thick() {
    let rs = run(&candidates().join("plexus-thick.json"), &[]);
    assert!(
        report::conformant(&rs),
        "{}",
        report::to_markdown("thick", "", &rs)
    );
}

/// A candidate file for the broken meta-plugin in `mode`, wrapping plexus thin.
fn broken(dir: &Path, mode: &str) -> PathBuf {
    let thin: serde_json::Value =
        serde_json::from_slice(&std::fs::read(candidates().join("plexus-thin.json")).unwrap())
            .unwrap();
    let examples = exe_dir().join("examples");
    let f = dir.join(format!("{mode}.json"));
    std::fs::write(
        &f,
        json!({"name": format!("broken ({mode})"), "path": [examples],
               "plugin": {"type": "broken-candidate", "brokenMode": mode,
                          "innerBinary": exe_dir().join("plexus"), "inner": thin["plugin"]}})
        .to_string(),
    )
    .unwrap();
    f
}

#[test]
fn a_broken_candidate_fails_exactly_what_it_breaks() {
    let dir = tempfile::tempdir().unwrap();
    // A result in the wrong version.
    let rs = run(
        &broken(dir.path(), "wrong-version"),
        &[
            "CNI-2.5-add-result-version",
            "CNI-2.3-version",
            "NPWG-6-default-network",
        ],
    );
    assert!(
        matches!(outcome(&rs, "CNI-2.5-add-result-version"), Outcome::Fail(m) if m.contains("result printed at")),
        "{rs:?}"
    );
    assert_eq!(outcome(&rs, "CNI-2.3-version"), &Outcome::Pass);
    assert_eq!(outcome(&rs, "NPWG-6-default-network"), &Outcome::Pass);
    assert!(!report::conformant(&rs));
    // A DEL that leaves the interface and the IP.
    let rs = run(
        &broken(dir.path(), "no-del"),
        &[
            "CNI-2.3-del-idempotent",
            "NPWG-6-default-network",
            "CNI-2.3-version",
        ],
    );
    for id in ["CNI-2.3-del-idempotent", "NPWG-6-default-network"] {
        assert!(
            matches!(outcome(&rs, id), Outcome::Fail(m) if m.contains("left behind") && m.contains("interface eth0") && m.contains("IP reservation")),
            "{id}: {rs:?}"
        );
    }
    assert_eq!(outcome(&rs, "CNI-2.3-version"), &Outcome::Pass);
    // The selection never read: ips, the comma form... fail; the default network passes.
    let ids = [
        "NPWG-4.1.2.1.3-ips-capability",
        "NPWG-4.1.1-comma-form",
        "NPWG-4.1.2.1.3-ips-undeclared-fails",
        "NPWG-6-default-network",
    ];
    let rs = run(&broken(dir.path(), "ignores-selection"), &ids);
    for id in &ids[..3] {
        assert!(matches!(outcome(&rs, id), Outcome::Fail(_)), "{id}: {rs:?}");
    }
    assert_eq!(outcome(&rs, "NPWG-6-default-network"), &Outcome::Pass);
}
