//! Results and errors printed by the real reference plugins (containernetworking-plugins),
//! read, re-printed and converted to every version.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use plexus_cni::result::CniResult;
use plexus_cni::version::SUPPORTED;
use plexus_cni::CniError;
use serde_json::Value;
use std::path::Path;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// The plugin's JSON without the empty `dns: {}` Go prints (we leave empty DNS out).
fn normalized(bytes: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(bytes).unwrap();
    if v.get("dns")
        .is_some_and(|d| d.as_object().is_some_and(|o| o.is_empty()))
    {
        v.as_object_mut().unwrap().remove("dns");
    }
    v
}

const RESULTS: &[&str] = &[
    "bridge-host-local-0.2.0.json",
    "bridge-host-local-0.3.1.json",
    "bridge-host-local-0.4.0.json",
    "bridge-host-local-1.0.0.json",
    "host-local-1.0.0.json",
    "static-0.4.0.json",
];

#[test]
fn real_results_reprint_identically() {
    for name in RESULTS {
        let bytes = fixture(name);
        let r = CniResult::from_json(&bytes).unwrap();
        assert_eq!(r.to_value(), normalized(&bytes), "{name}");
    }
}

#[test]
fn real_results_convert_to_every_version() {
    for name in RESULTS {
        let r = CniResult::from_json(&fixture(name)).unwrap();
        for v in SUPPORTED {
            let c = r
                .convert_to(v)
                .unwrap_or_else(|e| panic!("{name} -> {v}: {e}"));
            assert_eq!(c.version(), *v);
            // Converting back to the original version gives the original when the
            // target could hold everything (same or newer shape).
            if plexus_cni::version::compare(v, r.version())
                .unwrap()
                .is_ge()
            {
                assert_eq!(
                    c.convert_to(r.version()).unwrap(),
                    r,
                    "{name} -> {v} -> back"
                );
            }
        }
    }
}

#[test]
fn bridge_result_keeps_sandbox_interface_and_addresses() {
    let r = CniResult::from_json(&fixture("bridge-host-local-1.0.0.json"))
        .unwrap()
        .to_current();
    let idx = r.first_sandbox_interface().unwrap();
    assert_eq!(r.interfaces[idx].name, "e100");
    let own: Vec<String> = r
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(idx as i32))
        .map(|ip| ip.address.to_string())
        .collect();
    assert_eq!(own, ["192.0.2.5/24", "2001:db8:1::5/64"]);
    let old = CniResult::from_json(&fixture("bridge-host-local-1.0.0.json"))
        .unwrap()
        .convert_to("0.2.0")
        .unwrap()
        .to_value();
    assert_eq!(old["ip4"]["ip"], "192.0.2.5/24");
    assert_eq!(old["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(old["ip6"]["ip"], "2001:db8:1::5/64");
}

#[test]
fn real_error_is_read_with_its_code() {
    let e: CniError = serde_json::from_slice(&fixture("error-macvlan-no-master.json")).unwrap();
    assert_eq!(e.code, 999);
    assert_eq!(e.msg, "Link not found");
}
