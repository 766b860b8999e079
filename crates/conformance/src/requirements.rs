//! One test per requirement: NPWG multi-net-spec v1.3 (`NPWG-<section>-…`), the Device
//! Information Specification 1.1 (`DI-<section>-…`) and the CNI 1.1 obligations of a
//! meta-plugin (`CNI-<section>-…`). Each states the requirement in the suite's words.
//! Where the specification is ambiguous the test asks for determinism and a clear
//! error, not for one reading.

use crate::suite::{skip, Ctx, Level, Pod, Requirement};
use crate::world;
use anyhow::{anyhow, bail, ensure, Result};
use plexus_cni::runtime::ValidAttachment;
use serde_json::{json, Map, Value};

/// Every requirement, in report order.
pub fn all() -> Vec<Requirement> {
    use Level::*;
    macro_rules! req {
        ($id:expr, $level:expr, $text:expr, $f:expr) => {
            Requirement {
                id: $id,
                level: $level,
                text: $text,
                run: $f,
            }
        };
    }
    vec![
        req!("CNI-2.3-version", Must, "VERSION answers with the specification versions it supports, 1.1.0 among them.", cni_version),
        req!("CNI-2.5-add-result-version", Must, "ADD prints its result in the cniVersion of the configuration it was given (0.4.0, 1.0.0, 1.1.0).", add_result_version),
        req!("CNI-2.5-error-object", Must, "A failed operation prints a CNI error object (numeric code, msg) on stdout and exits non-zero.", error_object),
        req!("CNI-2.3-add-bad-netns", Must, "ADD with a CNI_NETNS that is not a network namespace fails and leaves nothing behind.", add_bad_netns),
        req!("CNI-2.3-del-idempotent", Must, "DEL succeeds twice for the same sandbox, and for a sandbox never added.", del_idempotent),
        req!("CNI-2.3-del-without-netns", Should, "DEL succeeds once the pod's network namespace is gone, and releases every IP address.", del_without_netns),
        req!("CNI-2.3-check", Must, "CHECK after a successful ADD, given its result, succeeds.", check_after_add),
        req!("CNI-2.3-check-detects-missing-interface", Should, "CHECK fails when the interface of an attachment is gone from the pod.", check_detects),
        req!("CNI-2.3-status", Must, "STATUS succeeds when the cluster default network is ready (CNI 1.1).", status_ready),
        req!("CNI-2.3-gc-every-attachment", Should, "GC with an empty list of valid attachments releases the IPs of every attachment of a sandbox, not only the default network's (CNI 1.1).", gc_every_attachment),
        req!("NPWG-6-default-network", Must, "A pod without a selection is attached to the cluster default network, as the runtime's interface.", default_network),
        req!("NPWG-6.2-1-default-first", Must, "The cluster default network is attached before any selected network.", default_first),
        req!("NPWG-4.1.1-comma-form", Must, "The comma-delimited selection `a,<namespace>/b` attaches each network, in order, as net1 and net2.", comma_form),
        req!("NPWG-4.1.2-json-form", Must, "The JSON selection (a list of objects with name and namespace) attaches each network.", json_form),
        req!("NPWG-4.2-1-same-network-twice", Must, "The same network selected twice is two attachments with two interfaces.", same_network_twice),
        req!("NPWG-4.2.1-1-same-tuple", Must, "Every operation on an attachment uses the container ID, network name and interface of its ADD.", same_tuple),
        req!("NPWG-3.4.1-missing-nad-fails", Must, "A selected network with no NetworkAttachmentDefinition fails the ADD; nothing stays attached.", missing_nad),
        req!("NPWG-3.4.2-name-injected", Must, "A NAD config without `name` reaches its plugin with the NAD's name.", name_injected),
        req!("NPWG-3.2-2-config-list", Must, "A NAD config may be a configuration list: its plugins run as a chain, each given the previous result.", config_list),
        req!("NPWG-7.1-1-list-version-and-name", Must, "Every plugin of a list is given the list's cniVersion and name.", list_version_and_name),
        req!("NPWG-4.1.2.1.3-ips-capability", Must, "`ips` reach runtimeConfig.ips of a plugin declaring the capability, and the pod's interface has the address.", ips_capability),
        req!("NPWG-4.1.2.1.3-ips-undeclared-fails", Must, "`ips` for a network none of whose plugins declares the capability fail the ADD; nothing stays attached.", ips_undeclared),
        req!("NPWG-4.1.2.1.4-mac-capability", Must, "`mac` reaches runtimeConfig.mac of a plugin declaring the capability, and the pod's interface has that address.", mac_capability),
        req!("NPWG-4.1.2.1.4-mac-undeclared-fails", Must, "`mac` for a network none of whose plugins declares the capability fails the ADD.", mac_undeclared),
        req!("NPWG-4.1.2.1.5-interface-name", Must, "`interface` is the attachment's CNI_IFNAME and the name of its interface in the pod.", interface_name),
        req!("NPWG-4.1.2.1.5-interface-in-use-fails", Must, "An `interface` a previous attachment already uses fails the ADD; nothing stays attached.", interface_in_use),
        req!("NPWG-4.1.2.1.6-cni-args", Must, "`cni-args` are merged into the plugin's args.cni, the selection's values over the NAD's.", cni_args),
        req!("NPWG-4.1.2.1.7-port-mappings", Must, "`portMappings` reach runtimeConfig.portMappings of a plugin declaring the capability.", port_mappings),
        req!("NPWG-4.1.2.1.7-port-mappings-unsupported-fails", Must, "`portMappings` for a network that cannot take them fail the ADD.", port_mappings_unsupported),
        req!("NPWG-4.1.2.1.8-bandwidth", Must, "`bandwidth` reaches runtimeConfig.bandwidth of a plugin declaring the capability.", bandwidth),
        req!("NPWG-4.1.2.1.8-bandwidth-unsupported-fails", Must, "`bandwidth` for a network that cannot take it fails the ADD.", bandwidth_unsupported),
        req!("NPWG-4.1.2.1.9-default-route", Must, "`default-route` moves the pod's default route to that attachment's gateway, off the cluster default network.", default_route),
        req!("NPWG-4.1.2.1.9-default-route-once", Should, "`default-route` on two elements is invalid: the ADD fails with an error naming it, or no element's default route is applied; never both.", default_route_once),
        req!("NPWG-4.1.2.1.10-infiniband-guid", Must, "`infiniband-guid` reaches runtimeConfig.infinibandGUID where declared, and fails the ADD where no plugin declares it.", infiniband_guid),
        req!("NPWG-4.1.2.1.11-ips-with-claim-fails", Must, "`ips` together with `ipam-claim-reference` in one element is an error.", ips_with_claim),
        req!("NPWG-4.1.2.1-invalid-value-deterministic", Should, "An invalid value (`ips` that are no address) gives the same outcome every time: an error naming the key, or the annotation ignored; nothing left behind.", invalid_value),
        req!("NPWG-7.2-1-fail-fast", Must, "When an attachment fails, the ADD fails at once, later networks are not attempted, and the earlier ones are torn down.", fail_fast),
        req!("NPWG-7.2-2-teardown-continues", Must, "A DEL that fails for one attachment still tears down the others, and returns an error.", teardown_continues),
        req!("NPWG-7.5-1-runtime-config-default-only", Must, "The runtime's runtimeConfig reaches the cluster default network only.", runtime_config_default_only),
        req!("NPWG-5-status-published", May, "The pod's network-status annotation is published.", status_published),
        req!("NPWG-5.2-1-default-entry", Must, "network-status (when published) has one entry per attachment, exactly one with `default: true`: the cluster default network's.", status_default_entry),
        req!("NPWG-5.3.1-namespaced-names", Should, "network-status (when published) names a NAD's entry `<namespace>/<name>`.", status_names),
        req!("NPWG-5.3.2-interface-ips-mac", Must, "network-status (when published) gives each attachment's interface, its pod-side addresses and its MAC as the pod has them.", status_interface_ips_mac),
        req!("DI-5.1-cni-device-info-file", Must, "A plugin declaring CNIDeviceInfoFile receives a file path in runtimeConfig.CNIDeviceInfoFile.", device_info_file),
        req!("DI-6.1.1-device-info-reported", Must, "The device-info file's content is reported as `device-info` in network-status (when published).", device_info_reported),
        req!("DI-4.2-cni-file-removed-on-del", Must, "The CNI device-info file is removed on DEL.", device_info_removed),
    ]
}

// ---- helpers ---------------------------------------------------------------------

/// A NAD config of the recording plugin with `extra` keys.
fn rec(ctx: &Ctx, ip: &str, extra: Value) -> Value {
    let mut v = json!({"cniVersion": "1.0.0", "type": "plexus-test-plugin",
                       "recordDir": ctx.env.rec, "ip": ip});
    merge(&mut v, extra);
    v
}

fn merge(v: &mut Value, extra: Value) {
    if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
        m.extend(e);
    }
}

/// A bridge network with host-local addresses from `subnet` (its gateway `gw`, set on
/// the bridge), plus `extra` keys on the bridge plugin.
fn bridge(ctx: &Ctx, subnet: &str, gw: &str) -> Value {
    json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": ctx.env.bridge_name(), "isGateway": true,
           "ipam": {"type": "host-local", "dataDir": ctx.env.ipam,
                    "ranges": [[{"subnet": subnet, "gateway": gw}]]}})
}

fn ns_name(ctx: &Ctx, nad: &str) -> String {
    format!("{}/{nad}", ctx.env.ns)
}

/// The ADD calls of the recording plugin on `ifname`.
fn adds_on(ctx: &Ctx, pod: &Pod, ifname: &str) -> Vec<Value> {
    ctx.calls_of(pod, "ADD")
        .into_iter()
        .filter(|c| c["env"]["CNI_IFNAME"] == ifname)
        .collect()
}

fn one_add_on(ctx: &Ctx, pod: &Pod, ifname: &str) -> Result<Value> {
    let mut v = adds_on(ctx, pod, ifname);
    ensure!(
        v.len() == 1,
        "expected one ADD on {ifname}, the recording plugin got {}",
        v.len()
    );
    Ok(v.remove(0))
}

/// ADD must fail; the error.
fn add_fails(ctx: &mut Ctx, pod: &Pod) -> Result<plexus_cni::CniError> {
    match ctx.add(pod)? {
        Ok(_) => bail!("the ADD succeeded"),
        Err(e) => Ok(e),
    }
}

/// The status, or a skip when the candidate publishes none.
fn status_or_skip(ctx: &Ctx, pod: &Pod) -> Result<Vec<Value>> {
    match ctx.status(pod)? {
        Some(Value::Array(a)) => Ok(a),
        Some(other) => bail!("network-status is not a JSON list: {other}"),
        None => skip("the candidate publishes no network-status"),
    }
}

fn entry_for<'a>(st: &'a [Value], ifname: &str) -> Result<&'a Value> {
    st.iter().find(|e| e["interface"] == ifname).ok_or_else(|| {
        anyhow!(
            "network-status has no entry for {ifname}: {}",
            Value::Array(st.to_vec())
        )
    })
}

// ---- CNI ---------------------------------------------------------------------------

fn cni_version(ctx: &mut Ctx) -> Result<()> {
    let rt = ctx.env.runtime();
    let t = ctx.env.candidate.plugin_type.clone();
    let v = ctx.env.in_host(|| rt.plugin_versions(&t))??;
    ensure!(v.iter().any(|x| x == "1.1.0"), "supportedVersions: {v:?}");
    Ok(())
}

fn add_result_version(ctx: &mut Ctx) -> Result<()> {
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let pod = ctx.pod(None)?;
        let att = ctx.attachment(&pod);
        let added = ctx
            .add_version(&pod, version, att)?
            .map_err(|e| anyhow!("ADD at {version}: {e}"))?;
        ensure!(
            added.version == version,
            "configuration at {version}, result printed at {:?}",
            added.version
        );
        ctx.del_ok(&pod)?;
    }
    Ok(())
}

fn error_object(ctx: &mut Ctx) -> Result<()> {
    // A selection that cannot be attached (its NAD does not exist), executed directly
    // to see stdout and the exit status.
    let pod = ctx.pod(Some("no-such-network-x"))?;
    let list = ctx.env.list(&ctx.env.candidate.cni_version)?;
    let att = ctx.attachment(&pod);
    let req = plexus_cni::runtime::derive_request(
        &list.plugins[0],
        &list,
        plexus_cni::runtime::Op::Add,
        None,
        &Default::default(),
    )?;
    let bin =
        plexus_cni::exec::find_plugin(&ctx.env.candidate.plugin_type, &ctx.env.runtime().paths)?;
    let paths = ctx
        .env
        .runtime()
        .paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let out = ctx.env.in_host(|| {
        use std::io::Write;
        let mut child = std::process::Command::new(&bin)
            .env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", att.netns.clone().unwrap_or_default())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", att.args.to_env())
            .env("CNI_PATH", &paths)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(&req)?;
        }
        child.wait_with_output()
    })??;
    ensure!(!out.status.success(), "exit status 0 for a failed ADD");
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow!(
            "stdout is not a JSON error object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    ensure!(
        v["code"].as_u64().is_some_and(|c| c > 0),
        "no numeric code: {v}"
    );
    ensure!(
        v["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "no msg: {v}"
    );
    Ok(())
}

fn add_bad_netns(ctx: &mut Ctx) -> Result<()> {
    let pod = ctx.pod(None)?;
    let file = ctx.env.subdir("not-a-netns")?.join(&pod.name);
    std::fs::write(&file, b"")?;
    let mut att = ctx.attachment(&pod);
    att.netns = Some(file.display().to_string());
    let v = ctx.env.candidate.cni_version.clone();
    ensure!(
        ctx.add_version(&pod, &v, att)?.is_err(),
        "ADD succeeded with CNI_NETNS a regular file"
    );
    Ok(())
}

fn del_idempotent(ctx: &mut Ctx) -> Result<()> {
    let pod = ctx.pod(None)?;
    ctx.add_ok(&pod)?;
    ctx.del_ok(&pod)?;
    ctx.del(&pod)?.map_err(|e| anyhow!("second DEL: {e}"))?;
    let never = ctx.pod(None)?;
    ctx.del(&never)?
        .map_err(|e| anyhow!("DEL of a sandbox never added: {e}"))?;
    Ok(())
}

fn del_without_netns(ctx: &mut Ctx) -> Result<()> {
    let br = ctx.nad("br", bridge(ctx, "198.51.100.0/26", "198.51.100.1"))?;
    let pod = ctx.pod(Some(&br))?;
    let gone = world::namespace("gon")?;
    let mut att = ctx.attachment(&pod);
    att.netns = Some(gone.path().display().to_string());
    let v = ctx.env.candidate.cni_version.clone();
    ctx.add_version(&pod, &v, att.clone())?
        .map_err(|e| anyhow!("ADD: {e}"))?;
    ensure!(
        ctx.env.reservations().len() == 2,
        "expected two IP reservations after ADD, found {:?}",
        ctx.env.reservations()
    );
    gone.remove()?;
    ctx.del_with(&pod, att)?
        .map_err(|e| anyhow!("DEL with the namespace gone: {e}"))?;
    ensure!(
        ctx.env.reservations().is_empty(),
        "IPs still reserved: {:?}",
        ctx.env.reservations()
    );
    Ok(())
}

fn check_after_add(ctx: &mut Ctx) -> Result<()> {
    let br = ctx.nad("br", bridge(ctx, "198.51.100.0/26", "198.51.100.1"))?;
    let pod = ctx.pod(Some(&br))?;
    let added = ctx.add_ok(&pod)?;
    ctx.check(&pod, &added.result)?
        .map_err(|e| anyhow!("CHECK: {e}"))?;
    ctx.del_ok(&pod)
}

fn check_detects(ctx: &mut Ctx) -> Result<()> {
    let br = ctx.nad("br", bridge(ctx, "198.51.100.0/26", "198.51.100.1"))?;
    let pod = ctx.pod(Some(&br))?;
    let added = ctx.add_ok(&pod)?;
    world::ip(Some(ctx.pod_ns.name()), &["link", "del", "net1"])?;
    ensure!(
        ctx.check(&pod, &added.result)?.is_err(),
        "CHECK succeeded with net1 gone from the pod"
    );
    ctx.del_ok(&pod)
}

fn status_ready(ctx: &mut Ctx) -> Result<()> {
    if ctx.env.candidate.cni_version != "1.1.0" {
        return skip("the candidate's configuration is not at 1.1.0");
    }
    let list = ctx.env.list("1.1.0")?;
    let rt = ctx.env.runtime();
    ctx.env
        .in_host(|| rt.status_list(&list))?
        .map_err(|e| anyhow!("STATUS: {e}"))
}

fn gc_every_attachment(ctx: &mut Ctx) -> Result<()> {
    let br = ctx.nad("br", bridge(ctx, "198.51.100.0/26", "198.51.100.1"))?;
    let pod = ctx.pod(Some(&br))?;
    ctx.add_ok(&pod)?;
    ensure!(
        ctx.env.reservations().len() == 2,
        "expected two IP reservations, found {:?}",
        ctx.env.reservations()
    );
    // The runtime lost the sandbox: nothing is valid any more.
    let list = ctx.env.list("1.1.0")?;
    let rt = ctx.env.runtime();
    let valid: Vec<ValidAttachment> = vec![];
    ctx.env.in_host(|| rt.gc_plugins(&list, &valid))?;
    let left = ctx.env.reservations();
    ensure!(left.is_empty(), "after GC, still reserved: {left:?}");
    ctx.del_ok(&pod)
}

// ---- NPWG: default network, selection ----------------------------------------------

fn default_network(ctx: &mut Ctx) -> Result<()> {
    let pod = ctx.pod(None)?;
    ctx.add_ok(&pod)?;
    let links = ctx.links()?;
    ensure!(
        links.iter().any(|l| l == "eth0"),
        "no eth0 in the pod: {links:?}"
    );
    let a = world::addresses(ctx.pod_ns.name(), "eth0")?;
    ensure!(
        a.iter().any(|a| a.starts_with("192.0.2.")),
        "eth0 has no address of the cluster network: {a:?}"
    );
    ensure!(
        adds_on(ctx, &pod, "eth0").len() == 1,
        "the cluster network's chain did not run once"
    );
    ctx.del_ok(&pod)
}

fn default_first(ctx: &mut Ctx) -> Result<()> {
    let a = ctx.nad("a", rec(ctx, "198.51.100.10/24", json!({})))?;
    let pod = ctx.pod(Some(&a))?;
    ctx.add_ok(&pod)?;
    let order: Vec<String> = ctx
        .calls_of(&pod, "ADD")
        .iter()
        .map(|c| {
            c["env"]["CNI_IFNAME"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    ensure!(order == ["eth0", "net1"], "ADD order: {order:?}");
    ctx.del_ok(&pod)
}

fn comma_form(ctx: &mut Ctx) -> Result<()> {
    let a = ctx.nad("a", rec(ctx, "198.51.100.10/24", json!({})))?;
    let other = ctx.env.other_ns.clone();
    let b = ctx.nad_in(
        &other,
        "b",
        Some(rec(ctx, "198.51.100.11/24", json!({}))),
        json!({}),
    )?;
    let pod = ctx.pod(Some(&format!("{a},{other}/{b}")))?;
    ctx.add_ok(&pod)?;
    ensure!(
        one_add_on(ctx, &pod, "net1")?["config"]["ip"] == "198.51.100.10/24",
        "net1 is not {a}"
    );
    ensure!(
        one_add_on(ctx, &pod, "net2")?["config"]["ip"] == "198.51.100.11/24",
        "net2 is not {other}/{b}"
    );
    ctx.del_ok(&pod)
}

fn json_form(ctx: &mut Ctx) -> Result<()> {
    let a = ctx.nad("a", rec(ctx, "198.51.100.10/24", json!({})))?;
    let other = ctx.env.other_ns.clone();
    let b = ctx.nad_in(
        &other,
        "b",
        Some(rec(ctx, "198.51.100.11/24", json!({}))),
        json!({}),
    )?;
    let sel = json!([{"name": a}, {"name": b, "namespace": other}]).to_string();
    let pod = ctx.pod(Some(&sel))?;
    ctx.add_ok(&pod)?;
    ensure!(
        one_add_on(ctx, &pod, "net1")?["config"]["ip"] == "198.51.100.10/24",
        "net1 is not {a}"
    );
    ensure!(
        one_add_on(ctx, &pod, "net2")?["config"]["ip"] == "198.51.100.11/24",
        "net2 is not {other}/{b}"
    );
    ctx.del_ok(&pod)
}

fn same_network_twice(ctx: &mut Ctx) -> Result<()> {
    let br = ctx.nad("br", bridge(ctx, "198.51.100.0/26", "198.51.100.1"))?;
    let pod = ctx.pod(Some(&format!("{br},{br}")))?;
    ctx.add_ok(&pod)?;
    let links = ctx.links()?;
    ensure!(
        links.iter().any(|l| l == "net1") && links.iter().any(|l| l == "net2"),
        "interfaces: {links:?}"
    );
    ctx.del_ok(&pod)
}

fn same_tuple(ctx: &mut Ctx) -> Result<()> {
    let a = ctx.nad("a", rec(ctx, "198.51.100.10/24", json!({})))?;
    let sel = json!([{"name": a}, {"name": a, "interface": "data0"}]).to_string();
    let pod = ctx.pod(Some(&sel))?;
    ctx.add_ok(&pod)?;
    ctx.del_ok(&pod)?;
    let tuple = |c: &Value| {
        (
            c["env"]["CNI_CONTAINERID"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            c["config"]["name"].as_str().unwrap_or_default().to_string(),
            c["env"]["CNI_IFNAME"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    let mut adds: Vec<_> = ctx.calls_of(&pod, "ADD").iter().map(tuple).collect();
    let mut dels: Vec<_> = ctx.calls_of(&pod, "DEL").iter().map(tuple).collect();
    adds.sort();
    dels.sort();
    dels.dedup();
    ensure!(adds.len() == 3, "ADD calls: {adds:?}");
    ensure!(adds == dels, "ADD tuples {adds:?}, DEL tuples {dels:?}");
    Ok(())
}

fn missing_nad(ctx: &mut Ctx) -> Result<()> {
    let pod = ctx.pod(Some(&format!("absent-{}", world::unique("x"))))?;
    add_fails(ctx, &pod)?;
    let links = ctx.links()?;
    ensure!(links == ["lo"], "interfaces left in the pod: {links:?}");
    Ok(())
}

fn name_injected(ctx: &mut Ctx) -> Result<()> {
    let a = ctx.nad("a", rec(ctx, "198.51.100.10/24", json!({})))?;
    let pod = ctx.pod(Some(&a))?;
    ctx.add_ok(&pod)?;
    let got = one_add_on(ctx, &pod, "net1")?;
    ensure!(
        got["config"]["name"] == a.as_str(),
        "the plugin got name {}",
        got["config"]["name"]
    );
    ctx.del_ok(&pod)
}

fn config_list(ctx: &mut Ctx) -> Result<()> {
    let rec_dir = ctx.env.rec.clone();
    let list = json!({"cniVersion": "1.0.0", "plugins": [
        {"type": "plexus-test-plugin", "recordDir": rec_dir, "ip": "198.51.100.10/24", "step": 1},
        {"type": "plexus-test-plugin", "recordDir": rec_dir, "ip": "198.51.100.11/24", "step": 2}]});
    let a = ctx.nad("a", list)?;
    let pod = ctx.pod(Some(&a))?;
    ctx.add_ok(&pod)?;
    let calls = adds_on(ctx, &pod, "net1");
    ensure!(
        calls.len() == 2,
        "the chain's plugins ran {} times",
        calls.len()
    );
    ensure!(
        calls[0]["config"]["step"] == 1 && calls[1]["config"]["step"] == 2,
        "order: {calls:?}"
    );
    ensure!(
        calls[0]["config"].get("prevResult").is_none(),
        "the first plugin got a prevResult"
    );
    ensure!(
        calls[1]["config"]["prevResult"]["ips"].is_array(),
        "the second plugin got no prevResult"
    );
    ctx.del_ok(&pod)
}

fn list_version_and_name(ctx: &mut Ctx) -> Result<()> {
    let rec_dir = ctx.env.rec.clone();
    let list = json!({"cniVersion": "0.4.0", "name": "chain-x", "plugins": [
        {"type": "plexus-test-plugin", "recordDir": rec_dir, "ip": "198.51.100.10/24"},
        {"type": "plexus-test-plugin", "recordDir": rec_dir, "ip": "198.51.100.11/24"}]});
    let a = ctx.nad("a", list)?;
    let pod = ctx.pod(Some(&a))?;
    ctx.add_ok(&pod)?;
    let calls = adds_on(ctx, &pod, "net1");
    ensure!(
        calls.len() == 2,
        "the list's plugins ran {} times",
        calls.len()
    );
    for c in calls {
        ensure!(
            c["config"]["cniVersion"] == "0.4.0",
            "a plugin got cniVersion {}",
            c["config"]["cniVersion"]
        );
        ensure!(
            c["config"]["name"] == "chain-x",
            "a plugin got name {}",
            c["config"]["name"]
        );
    }
    ctx.del_ok(&pod)
}

// ---- NPWG: selection keys ----------------------------------------------------------

fn macvlan_static(ctx: &Ctx) -> Value {
    json!({"cniVersion": "1.0.0", "type": "macvlan", "master": ctx.env.master, "mode": "bridge",
           "capabilities": {"ips": true}, "ipam": {"type": "static"}})
}

fn ips_capability(ctx: &mut Ctx) -> Result<()> {
    let mv = ctx.nad("mv", macvlan_static(ctx))?;
    let pod = ctx.pod(Some(
        &json!([{"name": mv, "ips": ["203.0.113.7/24"]}]).to_string(),
    ))?;
    ctx.add_ok(&pod)?;
    let a = world::addresses(ctx.pod_ns.name(), "net1")?;
    ensure!(a == ["203.0.113.7/24"], "net1 has {a:?}");
    ctx.del_ok(&pod)
}

fn ips_undeclared(ctx: &mut Ctx) -> Result<()> {
    let a = ctx.nad("a", rec(ctx, "198.51.100.10/24", json!({})))?;
    let pod = ctx.pod(Some(
        &json!([{"name": a, "ips": ["203.0.113.7/24"]}]).to_string(),
    ))?;
    add_fails(ctx, &pod)?;
    ensure!(
        ctx.links()? == ["lo"],
        "interfaces left: {:?}",
        ctx.links()?
    );
    Ok(())
}

fn mac_capability(ctx: &mut Ctx) -> Result<()> {
    let mut list = bridge(ctx, "198.51.100.0/26", "198.51.100.1");
    let first = std::mem::take(&mut list);
    let list = json!({"cniVersion": "1.0.0", "plugins": [first, {"type": "tuning", "capabilities": {"mac": true}}]});
    let br = ctx.nad("br", list)?;
    let mac = "02:00:5e:10:00:42";
    let pod = ctx.pod(Some(&json!([{"name": br, "mac": mac}]).to_string()))?;
    ctx.add_ok(&pod)?;
    let l = world::link(ctx.pod_ns.name(), "net1")?.ok_or_else(|| anyhow!("no net1"))?;
    ensure!(l["address"] == mac, "net1 has MAC {}", l["address"]);
    ctx.del_ok(&pod)
}

fn mac_undeclared(ctx: &mut Ctx) -> Result<()> {
    let a = ctx.nad("a", rec(ctx, "198.51.100.10/24", json!({})))?;
    let pod = ctx.pod(Some(
        &json!([{"name": a, "mac": "02:00:5e:10:00:43"}]).to_string(),
    ))?;
    add_fails(ctx, &pod)?;
    Ok(())
}

fn interface_name(ctx: &mut Ctx) -> Result<()> {
    let br = ctx.nad("br", bridge(ctx, "198.51.100.0/26", "198.51.100.1"))?;
    let pod = ctx.pod(Some(
        &json!([{"name": br, "interface": "data0"}]).to_string(),
    ))?;
    ctx.add_ok(&pod)?;
    ensure!(
        ctx.links()?.iter().any(|l| l == "data0"),
        "interfaces: {:?}",
        ctx.links()?
    );
    ctx.del_ok(&pod)
}

fn interface_in_use(ctx: &mut Ctx) -> Result<()> {
    let a = ctx.nad("a", bridge(ctx, "198.51.100.0/26", "198.51.100.1"))?;
    let b = ctx.nad("b", rec(ctx, "198.51.100.70/24", json!({})))?;
    let sel =
        json!([{"name": a, "interface": "data0"}, {"name": b, "interface": "data0"}]).to_string();
    let pod = ctx.pod(Some(&sel))?;
    add_fails(ctx, &pod)?;
    ensure!(
        ctx.links()? == ["lo"],
        "interfaces left: {:?}",
        ctx.links()?
    );
    Ok(())
}

fn cni_args(ctx: &mut Ctx) -> Result<()> {
    let a = ctx.nad(
        "a",
        rec(
            ctx,
            "198.51.100.10/24",
            json!({"args": {"cni": {"keep": "nad", "over": "nad"}}}),
        ),
    )?;
    let pod = ctx.pod(Some(
        &json!([{"name": a, "cni-args": {"over": "pod", "new": "pod"}}]).to_string(),
    ))?;
    ctx.add_ok(&pod)?;
    let got = one_add_on(ctx, &pod, "net1")?["config"]["args"]["cni"].clone();
    ensure!(
        got == json!({"keep": "nad", "over": "pod", "new": "pod"}),
        "args.cni: {got}"
    );
    ctx.del_ok(&pod)
}

fn requested(ctx: &mut Ctx, cap: &str, key: &str, value: Value, want: Value) -> Result<()> {
    let a = ctx.nad(
        "a",
        rec(
            ctx,
            "198.51.100.10/24",
            json!({"capabilities": {cap: true}}),
        ),
    )?;
    let mut el = Map::new();
    el.insert("name".into(), json!(a));
    el.insert(key.into(), value);
    let pod = ctx.pod(Some(&Value::Array(vec![Value::Object(el)]).to_string()))?;
    ctx.add_ok(&pod)?;
    let got = one_add_on(ctx, &pod, "net1")?["config"]["runtimeConfig"][cap].clone();
    ensure!(got == want, "runtimeConfig.{cap}: {got}");
    ctx.del_ok(&pod)
}

fn unsupported(ctx: &mut Ctx, key: &str, value: Value) -> Result<()> {
    let a = ctx.nad("a", rec(ctx, "198.51.100.10/24", json!({})))?;
    let mut el = Map::new();
    el.insert("name".into(), json!(a));
    el.insert(key.into(), value);
    let pod = ctx.pod(Some(&Value::Array(vec![Value::Object(el)]).to_string()))?;
    add_fails(ctx, &pod)?;
    ensure!(
        ctx.links()? == ["lo"],
        "interfaces left: {:?}",
        ctx.links()?
    );
    Ok(())
}

fn port_mappings(ctx: &mut Ctx) -> Result<()> {
    let pm = json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]);
    let got_any = |v: &Value| {
        v.as_array().is_some_and(|a| {
            a.len() == 1 && a[0]["hostPort"] == 8080 && a[0]["containerPort"] == 80
        })
    };
    let a = ctx.nad(
        "a",
        rec(
            ctx,
            "198.51.100.10/24",
            json!({"capabilities": {"portMappings": true}}),
        ),
    )?;
    let pod = ctx.pod(Some(&json!([{"name": a, "portMappings": pm}]).to_string()))?;
    ctx.add_ok(&pod)?;
    let got = one_add_on(ctx, &pod, "net1")?["config"]["runtimeConfig"]["portMappings"].clone();
    ensure!(got_any(&got), "runtimeConfig.portMappings: {got}");
    ctx.del_ok(&pod)
}

fn port_mappings_unsupported(ctx: &mut Ctx) -> Result<()> {
    unsupported(
        ctx,
        "portMappings",
        json!([{"hostPort": 8080, "containerPort": 80}]),
    )
}

fn bandwidth(ctx: &mut Ctx) -> Result<()> {
    let bw =
        json!({"ingressRate": 2048, "ingressBurst": 1600, "egressRate": 4096, "egressBurst": 1600});
    let a = ctx.nad(
        "a",
        rec(
            ctx,
            "198.51.100.10/24",
            json!({"capabilities": {"bandwidth": true}}),
        ),
    )?;
    let pod = ctx.pod(Some(&json!([{"name": a, "bandwidth": bw}]).to_string()))?;
    ctx.add_ok(&pod)?;
    let got = one_add_on(ctx, &pod, "net1")?["config"]["runtimeConfig"]["bandwidth"].clone();
    ensure!(
        got["ingressRate"] == 2048 && got["egressRate"] == 4096,
        "runtimeConfig.bandwidth: {got}"
    );
    ctx.del_ok(&pod)
}

fn bandwidth_unsupported(ctx: &mut Ctx) -> Result<()> {
    unsupported(
        ctx,
        "bandwidth",
        json!({"ingressRate": 2048, "ingressBurst": 1600}),
    )
}

fn default_routes_via(ctx: &Ctx) -> Result<Vec<(String, String)>> {
    Ok(world::routes(ctx.pod_ns.name(), "-4")?
        .iter()
        .filter(|r| r["dst"] == "default")
        .map(|r| {
            (
                r["gateway"].as_str().unwrap_or_default().to_string(),
                r["dev"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

fn default_route(ctx: &mut Ctx) -> Result<()> {
    let br = ctx.nad("br", bridge(ctx, "198.51.100.0/26", "198.51.100.1"))?;
    let pod = ctx.pod(Some(
        &json!([{"name": br, "default-route": ["198.51.100.1"]}]).to_string(),
    ))?;
    ctx.add_ok(&pod)?;
    let d = default_routes_via(ctx)?;
    ensure!(
        d == [("198.51.100.1".to_string(), "net1".to_string())],
        "default routes: {d:?}"
    );
    ctx.del_ok(&pod)
}

fn default_route_once(ctx: &mut Ctx) -> Result<()> {
    let a = ctx.nad("a", bridge(ctx, "198.51.100.0/26", "198.51.100.1"))?;
    let b = ctx.nad("b", bridge(ctx, "198.51.100.64/26", "198.51.100.65"))?;
    let sel = json!([{"name": a, "default-route": ["198.51.100.1"]}, {"name": b, "default-route": ["198.51.100.65"]}]).to_string();
    let pod = ctx.pod(Some(&sel))?;
    match ctx.add(&pod)? {
        Err(e) => ensure!(
            e.msg.contains("default-route"),
            "the error does not name default-route: {}",
            e.msg
        ),
        Ok(_) => {
            let d = default_routes_via(ctx)?;
            ensure!(
                !d.iter()
                    .any(|(gw, _)| gw == "198.51.100.1" || gw == "198.51.100.65"),
                "an invalid annotation was applied: default routes {d:?}"
            );
            ctx.del_ok(&pod)?;
        }
    }
    Ok(())
}

fn infiniband_guid(ctx: &mut Ctx) -> Result<()> {
    let guid = "c2:11:22:33:44:55:66:77";
    requested(
        ctx,
        "infinibandGUID",
        "infiniband-guid",
        json!(guid),
        json!(guid),
    )?;
    unsupported(ctx, "infiniband-guid", json!(guid))
}

fn ips_with_claim(ctx: &mut Ctx) -> Result<()> {
    let mv = ctx.nad("mv", macvlan_static(ctx))?;
    let sel = json!([{"name": mv, "ips": ["203.0.113.7/24"], "ipam-claim-reference": "claim-a"}])
        .to_string();
    let pod = ctx.pod(Some(&sel))?;
    add_fails(ctx, &pod)?;
    Ok(())
}

fn invalid_value(ctx: &mut Ctx) -> Result<()> {
    let a = ctx.nad(
        "a",
        rec(
            ctx,
            "198.51.100.10/24",
            json!({"capabilities": {"ips": true}}),
        ),
    )?;
    let sel = json!([{"name": a, "ips": ["300.1.2.3/24"]}]).to_string();
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let pod = ctx.pod(Some(&sel))?;
        match ctx.add(&pod)? {
            Err(e) => {
                ensure!(
                    e.msg.contains("ips") || e.msg.contains("300.1.2.3"),
                    "the error names neither the key nor the value: {}",
                    e.msg
                );
                outcomes.push("error".to_string());
            }
            Ok(_) => {
                ensure!(
                    adds_on(ctx, &pod, "net1").is_empty(),
                    "the network with the invalid value was attached"
                );
                outcomes.push("ignored".to_string());
                ctx.del_ok(&pod)?;
            }
        }
    }
    ensure!(
        outcomes[0] == outcomes[1],
        "two runs, two outcomes: {outcomes:?}"
    );
    Ok(())
}

// ---- NPWG: failures, runtimeConfig ---------------------------------------------------

fn fail_fast(ctx: &mut Ctx) -> Result<()> {
    let a = ctx.nad("a", rec(ctx, "198.51.100.10/24", json!({})))?;
    let bad = ctx.nad(
        "bad",
        rec(ctx, "198.51.100.11/24", json!({"failOn": "ADD"})),
    )?;
    let c = ctx.nad("c", rec(ctx, "198.51.100.12/24", json!({})))?;
    let pod = ctx.pod(Some(&format!("{a},{bad},{c}")))?;
    add_fails(ctx, &pod)?;
    ensure!(
        adds_on(ctx, &pod, "net3").is_empty(),
        "the network after the failed one was attempted"
    );
    let dels: Vec<String> = ctx
        .calls_of(&pod, "DEL")
        .iter()
        .map(|c| {
            c["env"]["CNI_IFNAME"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for ifname in ["net1", "eth0"] {
        ensure!(
            dels.iter().any(|d| d == ifname),
            "{ifname} was not torn down (DELs: {dels:?})"
        );
    }
    ensure!(
        ctx.links()? == ["lo"],
        "interfaces left: {:?}",
        ctx.links()?
    );
    Ok(())
}

fn teardown_continues(ctx: &mut Ctx) -> Result<()> {
    let flag = ctx.env.subdir("flags")?.join(world::unique("f"));
    std::fs::write(&flag, b"")?;
    let a = ctx.nad("a", rec(ctx, "198.51.100.10/24", json!({})))?;
    let bad = ctx.nad(
        "bad",
        rec(
            ctx,
            "198.51.100.11/24",
            json!({"failOn": "DEL", "failWhileExists": flag}),
        ),
    )?;
    let c = ctx.nad("c", rec(ctx, "198.51.100.12/24", json!({})))?;
    let pod = ctx.pod(Some(&format!("{a},{bad},{c}")))?;
    ctx.add_ok(&pod)?;
    let first = ctx.del(&pod)?;
    let dels: Vec<String> = ctx
        .calls_of(&pod, "DEL")
        .iter()
        .map(|c| {
            c["env"]["CNI_IFNAME"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    // The failure goes away; the runtime's retried DEL must then succeed.
    let _ = std::fs::remove_file(&flag);
    ensure!(
        first.is_err(),
        "DEL succeeded although an attachment's DEL failed"
    );
    for ifname in ["net3", "net1", "eth0"] {
        ensure!(
            dels.iter().any(|d| d == ifname),
            "{ifname} was not torn down after net2's DEL failed (DELs: {dels:?})"
        );
    }
    ctx.del_ok(&pod)
}

fn runtime_config_default_only(ctx: &mut Ctx) -> Result<()> {
    let a = ctx.nad(
        "a",
        rec(
            ctx,
            "198.51.100.10/24",
            json!({"capabilities": {"portMappings": true}}),
        ),
    )?;
    let pod = ctx.pod(Some(&a))?;
    let mut att = ctx.attachment(&pod);
    att.capability_args.insert(
        "portMappings".into(),
        json!([{"hostPort": 9090, "containerPort": 90, "protocol": "tcp"}]),
    );
    let v = ctx.env.candidate.cni_version.clone();
    ctx.add_version(&pod, &v, att)?
        .map_err(|e| anyhow!("ADD: {e}"))?;
    let net1 = one_add_on(ctx, &pod, "net1")?;
    ensure!(
        net1["config"]["runtimeConfig"]
            .get("portMappings")
            .is_none(),
        "the runtime's portMappings reached a selected network: {}",
        net1["config"]["runtimeConfig"]
    );
    ctx.del_ok(&pod)
}

// ---- NPWG-5: network-status ---------------------------------------------------------

fn status_published(ctx: &mut Ctx) -> Result<()> {
    let pod = ctx.pod(None)?;
    ctx.add_ok(&pod)?;
    let st = ctx.status(&pod)?;
    ctx.del_ok(&pod)?;
    ensure!(st.is_some(), "no network-status on the pod");
    Ok(())
}

fn with_status<T>(
    ctx: &mut Ctx,
    f: impl FnOnce(&mut Ctx, &Pod, &str, Vec<Value>) -> Result<T>,
) -> Result<T> {
    let br = ctx.nad("br", bridge(ctx, "198.51.100.0/26", "198.51.100.1"))?;
    let pod = ctx.pod(Some(&br))?;
    ctx.add_ok(&pod)?;
    let st = match status_or_skip(ctx, &pod) {
        Ok(s) => s,
        Err(e) => {
            ctx.del_ok(&pod)?;
            return Err(e);
        }
    };
    let out = f(ctx, &pod, &br, st)?;
    ctx.del_ok(&pod)?;
    Ok(out)
}

fn status_default_entry(ctx: &mut Ctx) -> Result<()> {
    with_status(ctx, |_, _, _, st| {
        ensure!(
            st.len() == 2,
            "expected two entries: {}",
            Value::Array(st.clone())
        );
        let defaults: Vec<&Value> = st.iter().filter(|e| e["default"] == true).collect();
        ensure!(
            defaults.len() == 1,
            "{} entries with default: true",
            defaults.len()
        );
        ensure!(
            defaults[0]["interface"] == "eth0",
            "the default entry is not eth0's: {}",
            defaults[0]
        );
        Ok(())
    })
}

fn status_names(ctx: &mut Ctx) -> Result<()> {
    with_status(ctx, |ctx, _, br, st| {
        let e = entry_for(&st, "net1")?;
        ensure!(e["name"] == ns_name(ctx, br).as_str(), "name {}", e["name"]);
        Ok(())
    })
}

fn status_interface_ips_mac(ctx: &mut Ctx) -> Result<()> {
    with_status(ctx, |ctx, _, _, st| {
        for ifname in ["eth0", "net1"] {
            let e = entry_for(&st, ifname)?;
            let l = world::link(ctx.pod_ns.name(), ifname)?
                .ok_or_else(|| anyhow!("no {ifname} in the pod"))?;
            ensure!(
                e["mac"] == l["address"],
                "{ifname}: status mac {} , the pod's {}",
                e["mac"],
                l["address"]
            );
            let have: Vec<String> = world::addresses(ctx.pod_ns.name(), ifname)?
                .iter()
                .map(|a| a.split('/').next().unwrap_or_default().to_string())
                .collect();
            let ips: Vec<String> = e["ips"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| {
                            i.as_str()
                                .map(|s| s.split('/').next().unwrap_or_default().to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            ensure!(
                !ips.is_empty() && ips.iter().all(|i| have.contains(i)),
                "{ifname}: status ips {ips:?}, the pod has {have:?}"
            );
        }
        Ok(())
    })
}

// ---- device-info ---------------------------------------------------------------------

/// ADDs a pod with a network whose plugin declares CNIDeviceInfoFile (the recording
/// plugin writes a device-info file there); the path it was given.
fn with_device_info(ctx: &mut Ctx) -> Result<(Pod, String)> {
    let a = ctx.nad(
        "dev",
        rec(
            ctx,
            "198.51.100.10/24",
            json!({"capabilities": {"CNIDeviceInfoFile": true}}),
        ),
    )?;
    let pod = ctx.pod(Some(&a))?;
    ctx.add_ok(&pod)?;
    let got = one_add_on(ctx, &pod, "net1")?;
    let path = got["config"]["runtimeConfig"]["CNIDeviceInfoFile"]
        .as_str()
        .map(str::to_string);
    match path {
        Some(p) if !p.is_empty() => Ok((pod, p)),
        _ => {
            ctx.del_ok(&pod)?;
            bail!(
                "runtimeConfig.CNIDeviceInfoFile not given: {}",
                got["config"]["runtimeConfig"]
            )
        }
    }
}

fn device_info_file(ctx: &mut Ctx) -> Result<()> {
    let (pod, _) = with_device_info(ctx)?;
    ctx.del_ok(&pod)
}

fn device_info_reported(ctx: &mut Ctx) -> Result<()> {
    let (pod, path) = with_device_info(ctx)?;
    let written: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let st = match status_or_skip(ctx, &pod) {
        Ok(s) => s,
        Err(e) => {
            ctx.del_ok(&pod)?;
            return Err(e);
        }
    };
    let e = entry_for(&st, "net1")?.clone();
    ctx.del_ok(&pod)?;
    ensure!(
        e["device-info"] == written,
        "device-info {} , the file holds {written}",
        e["device-info"]
    );
    Ok(())
}

fn device_info_removed(ctx: &mut Ctx) -> Result<()> {
    let (pod, path) = with_device_info(ctx)?;
    ctx.del_ok(&pod)?;
    ensure!(
        !std::path::Path::new(&path).exists(),
        "{path} is still there after DEL"
    );
    Ok(())
}
