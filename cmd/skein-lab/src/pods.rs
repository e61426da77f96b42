//! The lab's kubelet for Pods bound to its nodes: a namespace per pod, the real CNI ADD through
//! the node's conflist and installed plugin exactly as a container runtime runs it, the pod's
//! workload, and the pod status (phase, IPs, Ready) through the status subresource — so the real
//! EndpointSlice controller makes the slices. A Pod with a deletionTimestamp goes on serving
//! through its grace period (at most [`MAX_GRACE`]), as a kubelet's containers do after SIGTERM,
//! and is then torn down: CNI DEL, its namespace removed, and its deletion finished (grace
//! period 0, UID precondition).
//!
//! It reconciles: desired (the API's Pods) against actual (the pod state files it keeps), on
//! every change and every second, so a failed ADD (daemon down) is simply tried again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{HostIP, Pod, PodCondition, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};

use crate::lab::{self, Lab};

/// What the lab set up for one pod, kept in `<lab>/pods/<uid>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    pub ips: Vec<String>,
    pub workload_pid: Option<u32>,
}

fn records_dir(lab: &Lab) -> PathBuf {
    lab.dir.join("pods")
}

pub fn records(lab: &Lab) -> BTreeMap<String, PodRecord> {
    std::fs::read_dir(records_dir(lab))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| serde_json::from_slice::<PodRecord>(&std::fs::read(e.path()).ok()?).ok())
        .map(|r| (r.uid.clone(), r))
        .collect()
}

fn save(lab: &Lab, record: &PodRecord) -> anyhow::Result<()> {
    std::fs::create_dir_all(records_dir(lab))?;
    let path = records_dir(lab).join(format!("{}.json", record.uid));
    std::fs::write(&path, serde_json::to_vec_pretty(record)?)?;
    Ok(())
}

/// containerd's sandbox IDs are 64 hex digits; the lab derives one from the pod UID.
pub fn container_id(uid: &str) -> String {
    format!("{:0<64}", uid.replace('-', ""))
}

pub fn pod_netns(lab: &str, uid: &str) -> String {
    format!(
        "{}p-{}",
        lab::netns_prefix(lab),
        &uid.replace('-', "")[..12.min(uid.len())]
    )
}

/// Runs the node's CNI configuration list for `command`, plugin by plugin, as a runtime does.
pub fn run_cni(
    lab: &Lab,
    node: &lab::Node,
    command: &str,
    record: &PodRecord,
) -> anyhow::Result<serde_json::Value> {
    let node_dir = node.config.parent().context("node dir")?;
    let conflist_path = node_dir.join("net.d").join("10-skein.conflist");
    let text = std::fs::read_to_string(&conflist_path).with_context(|| {
        format!(
            "{} has no CNI config yet ({})",
            node.name,
            conflist_path.display()
        )
    })?;
    let conflist: serde_json::Value =
        serde_json::from_str(&text).with_context(|| conflist_path.display().to_string())?;
    let bin_dir = node_dir.join("bin");
    let version = conflist["cniVersion"].clone();
    let name = conflist["name"].clone();
    let mut plugins: Vec<serde_json::Value> =
        conflist["plugins"].as_array().cloned().unwrap_or_default();
    if command == "DEL" {
        plugins.reverse();
    }
    let mut previous = serde_json::Value::Null;
    for mut plugin in plugins {
        plugin["cniVersion"] = version.clone();
        plugin["name"] = name.clone();
        if command == "ADD" && !previous.is_null() {
            plugin["prevResult"] = previous.clone();
        }
        let kind = plugin["type"]
            .as_str()
            .context("plugin without a type")?
            .to_string();
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            record.namespace, record.name, record.container_id, record.uid
        );
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(bin_dir.join(&kind))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &record.container_id)
            .env("CNI_NETNS", format!("/run/netns/{}", record.netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &bin_dir)
            .env("CNI_ARGS", args)
            .env(lab::LAB_ENV, &lab.name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running the CNI plugin {kind}"))?;
        use std::io::Write;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(plugin.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "CNI {command} by {kind} failed: {} {}",
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if command == "ADD" {
            previous = serde_json::from_str(&stdout)
                .with_context(|| format!("CNI result of {kind}: {stdout}"))?;
        }
    }
    Ok(previous)
}

fn container_ports(pod: &Pod) -> (Vec<u16>, Vec<u16>) {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        for p in c.ports.iter().flatten() {
            let port = p.container_port as u16;
            match p.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => udp.push(port),
                _ => tcp.push(port),
            }
        }
    }
    if tcp.is_empty() && udp.is_empty() {
        // A pod that declares nothing still answers, on 8080, so probes have a target.
        tcp.push(8080);
        udp.push(8080);
    }
    (tcp, udp)
}

/// Where `ip netns exec` finds a namespace's own files: `/etc/netns/<name>/resolv.conf` is
/// bind-mounted over `/etc/resolv.conf` for every program run in the pod.
pub const ETC_NETNS: &str = "/etc/netns";

/// The resolv.conf a kubelet writes for a pod of `namespace` (dnsPolicy ClusterFirst): the
/// cluster DNS address, the search path of the pod's namespace, `ndots:5`.
pub fn resolv_conf(namespace: &str) -> String {
    let zone = lab::CLUSTER_DOMAIN;
    format!(
        "nameserver {}\nsearch {namespace}.svc.{zone} svc.{zone} {zone}\noptions ndots:5\n",
        lab::CLUSTER_DNS
    )
}

fn write_resolv_conf(netns: &str, namespace: &str) -> anyhow::Result<()> {
    let dir = Path::new(ETC_NETNS).join(netns);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("resolv.conf"), resolv_conf(namespace))
        .with_context(|| format!("writing {}/resolv.conf", dir.display()))
}

/// The record of pod `namespace/name` (or `name` in `default`).
pub fn find(lab: &Lab, pod: &str) -> anyhow::Result<PodRecord> {
    let (namespace, name) = pod.split_once('/').unwrap_or(("default", pod));
    records(lab)
        .into_values()
        .find(|r| r.namespace == namespace && r.name == name)
        .with_context(|| format!("no pod {namespace}/{name} runs in lab {}", lab.name))
}

async fn set_up(client: &kube::Client, lab: &Lab, pod: &Pod) -> anyhow::Result<()> {
    let uid = pod.metadata.uid.clone().context("pod without uid")?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().context("pod without name")?;
    let node_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .context("unbound pod")?;
    let node = lab
        .nodes
        .iter()
        .find(|n| n.name == node_name)
        .context("not a lab node")?;
    let mut record = PodRecord {
        uid: uid.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
        node: node_name.clone(),
        netns: pod_netns(&lab.name, &uid),
        container_id: container_id(&uid),
        ips: Vec::new(),
        workload_pid: None,
    };
    if !Path::new("/run/netns").join(&record.netns).exists() {
        lab::ip(&["netns", "add", &record.netns])?;
    }
    write_resolv_conf(&record.netns, &namespace)?;
    // Recorded before the ADD, so a teardown finds the namespace even if the ADD fails.
    save(lab, &record)?;
    let result = tokio::task::block_in_place(|| run_cni(lab, node, "ADD", &record))?;
    record.ips = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| {
            ip["address"]
                .as_str()?
                .split('/')
                .next()
                .map(str::to_string)
        })
        .collect();
    if record.ips.is_empty() {
        bail!("CNI ADD returned no address: {result}");
    }
    let (tcp, udp) = container_ports(pod);
    let mut argv = vec![
        std::env::current_exe()?.display().to_string(),
        "workload".into(),
        "--pod".into(),
        name.clone(),
    ];
    argv.extend(
        tcp.iter()
            .flat_map(|p| ["--tcp".to_string(), p.to_string()]),
    );
    argv.extend(
        udp.iter()
            .flat_map(|p| ["--udp".to_string(), p.to_string()]),
    );
    let log = lab
        .dir
        .join("logs")
        .join(format!("pod-{namespace}-{name}.log"));
    record.workload_pid = Some(lab::spawn_detached(
        &lab.name,
        Some(&record.netns),
        &argv,
        &log,
    )?);
    save(lab, &record)?;

    let now = Time(Timestamp::now());
    let condition = |t: &str| PodCondition {
        type_: t.into(),
        status: "True".into(),
        last_transition_time: Some(now.clone()),
        ..Default::default()
    };
    let status = PodStatus {
        phase: Some("Running".into()),
        pod_ip: record.ips.first().cloned(),
        pod_ips: Some(
            record
                .ips
                .iter()
                .map(|ip| PodIP { ip: ip.clone() })
                .collect(),
        ),
        host_ip: Some(node.address.to_string()),
        host_ips: Some(vec![HostIP {
            ip: node.address.to_string(),
        }]),
        start_time: Some(now.clone()),
        conditions: Some(
            ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
                .map(condition)
                .to_vec(),
        ),
        ..Default::default()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    pods.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .with_context(|| format!("writing the status of {namespace}/{name}"))?;
    tracing::info!(pod = %format!("{namespace}/{name}"), node = %node_name, ips = ?record.ips, "pod running");
    Ok(())
}

/// Undoes [`set_up`]: workload, CNI DEL, namespace, record. Each step tolerates what is gone.
fn tear_down(lab: &Lab, record: &PodRecord) -> anyhow::Result<()> {
    if let Some(pid) = record.workload_pid {
        lab::terminate(pid, Duration::from_secs(2));
    }
    if let Some(node) = lab.nodes.iter().find(|n| n.name == record.node) {
        run_cni(lab, node, "DEL", record)?;
    }
    if Path::new("/run/netns").join(&record.netns).exists() {
        lab::ip(&["netns", "del", &record.netns])?;
    }
    let _ = std::fs::remove_dir_all(Path::new(ETC_NETNS).join(&record.netns));
    let _ = std::fs::remove_file(records_dir(lab).join(format!("{}.json", record.uid)));
    Ok(())
}

async fn finish_deletion(client: &kube::Client, pod: &Pod) -> anyhow::Result<()> {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match Api::<Pod>::namespaced(client.clone(), &namespace)
        .delete(&name, &params)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The longest grace period the lab gives a deleted pod (a kubelet gives the pod's own
/// `terminationGracePeriodSeconds`, 30 s unless set): tests need not wait longer.
pub const MAX_GRACE: Duration = Duration::from_secs(30);

/// When a pod deleted with grace period `grace` (its `deletionGracePeriodSeconds`) and
/// `deletionTimestamp` `deleted` (the request's time plus the grace period) stops: at its
/// deletion timestamp, or [`MAX_GRACE`] after the request, whichever comes first.
pub fn grace_deadline(deleted: Timestamp, grace: Option<i64>) -> Timestamp {
    let grace = Duration::from_secs(grace.unwrap_or(0).max(0) as u64);
    let requested = deleted.checked_sub(grace).unwrap_or(deleted);
    requested
        .checked_add(grace.min(MAX_GRACE))
        .unwrap_or(deleted)
}

/// Desired vs. actual, once. A pod with a deletion timestamp goes on serving, Ready as it was
/// (so the EndpointSlice controller shows it ready=false, serving=true, terminating=true), until
/// its grace period ends; then CNI DEL and the grace-0 delete. `terminating` holds the pods
/// already announced as terminating.
async fn reconcile(
    client: &kube::Client,
    lab_name: &str,
    desired: &BTreeMap<String, Pod>,
    failing: &mut BTreeMap<String, String>,
    terminating: &mut BTreeSet<String>,
) {
    let Ok(lab) = Lab::load(lab_name) else { return };
    let actual = records(&lab);
    for (uid, pod) in desired {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let Some(lab_node) = lab.nodes.iter().find(|n| n.name == node) else {
            continue;
        };
        if lab.processes.get(&lab_node.name).is_some_and(|p| p.stopped) {
            continue; // a dead node's kubelet does nothing
        }
        let result = if let Some(deleted) = &pod.metadata.deletion_timestamp {
            let record = actual.get(uid);
            let deadline = grace_deadline(deleted.0, pod.metadata.deletion_grace_period_seconds);
            if record.is_some() && Timestamp::now() < deadline {
                // Terminating: it keeps serving, and stays Ready, until its grace period ends.
                if terminating.insert(uid.clone()) {
                    tracing::info!(
                        pod = %pod.metadata.name.as_deref().unwrap_or(""),
                        until = %deadline,
                        "pod terminating; serving through its grace period"
                    );
                }
                Ok(())
            } else {
                let torn = match record {
                    Some(record) => tokio::task::block_in_place(|| tear_down(&lab, record)),
                    None => Ok(()),
                };
                match torn {
                    Ok(()) => {
                        terminating.remove(uid);
                        finish_deletion(client, pod).await
                    }
                    Err(e) => Err(e),
                }
            }
        } else if !actual.contains_key(uid) || actual[uid].ips.is_empty() {
            set_up(client, &lab, pod).await
        } else {
            Ok(())
        };
        match result {
            Ok(()) => {
                failing.remove(uid);
            }
            Err(e) => {
                let e = format!("{e:#}");
                if failing.get(uid) != Some(&e) {
                    tracing::warn!(pod = %pod.metadata.name.as_deref().unwrap_or(""), "{e}");
                    failing.insert(uid.clone(), e);
                }
            }
        }
    }
    // Pods gone from the API without passing through a deletionTimestamp we saw.
    for (uid, record) in &actual {
        if !desired.contains_key(uid)
            && let Err(e) = tokio::task::block_in_place(|| tear_down(&lab, record))
        {
            tracing::warn!(pod = %record.name, "cleaning up after a vanished pod: {e:#}");
        }
    }
}

/// Watches Pods and keeps the lab's pods in line with them, forever.
pub async fn run(client: kube::Client, lab_name: String) {
    let api: Api<Pod> = Api::all(client.clone());
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut desired: BTreeMap<String, Pod> = BTreeMap::new();
    let mut listing: BTreeMap<String, Pod> = BTreeMap::new();
    let mut synced = false;
    let mut failing = BTreeMap::new();
    let mut terminating = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Init)) => listing.clear(),
                Some(Ok(watcher::Event::InitApply(pod))) => {
                    if let Some(uid) = pod.metadata.uid.clone() { listing.insert(uid, pod); }
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    desired = std::mem::take(&mut listing);
                    synced = true;
                }
                Some(Ok(watcher::Event::Apply(pod))) => {
                    if let Some(uid) = pod.metadata.uid.clone() { desired.insert(uid, pod); }
                }
                Some(Ok(watcher::Event::Delete(pod))) => {
                    if let Some(uid) = &pod.metadata.uid { desired.remove(uid); }
                }
                Some(Err(e)) => { tracing::debug!("pod watch: {e}"); continue; }
                None => return,
            },
            _ = tick.tick() => {}
        }
        if synced {
            reconcile(&client, &lab_name, &desired, &mut failing, &mut terminating).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_pod_serves_through_its_grace_period_capped() {
        let requested: Timestamp = "2030-01-01T00:00:00Z".parse().expect("time");
        let at = |secs: u64| {
            requested
                .checked_add(Duration::from_secs(secs))
                .expect("time")
        };
        // The API server sets deletionTimestamp to the request's time plus the grace period.
        assert_eq!(grace_deadline(at(10), Some(10)), at(10));
        assert_eq!(grace_deadline(at(30), Some(30)), at(30));
        assert_eq!(grace_deadline(at(600), Some(600)), at(30), "capped");
        assert_eq!(grace_deadline(at(0), Some(0)), at(0));
        assert_eq!(grace_deadline(at(0), None), at(0));
    }
}
