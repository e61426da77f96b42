//! A `skein-lab` for one test: brought up under a name unique to the test, taken down when
//! dropped, with helpers to read each node's status and act on the lab. Names of the lab's
//! namespaces, interfaces and files come from the lab (`status --json`), never rebuilt here.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{built_bin, is_root, require, which};

/// Whether lab tests can run here: root, iproute2, and the control plane binaries (built by
/// `cmd/skein-lab/controlplane/build.sh`, which tests/run.sh runs first).
pub fn available() -> bool {
    require(is_root(), "a lab needs root (network namespaces)")
        && require(which("ip").is_some(), "iproute2 is not installed")
}

/// Labs are heavy (an API server each): tests take turns. Returns the turn, or `None` when lab
/// tests cannot run here (after saying why, or failing under `SKEIN_TEST_ALL=1`).
pub fn exclusive() -> Option<std::sync::MutexGuard<'static, ()>> {
    static ONE_LAB_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    available().then(|| ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()))
}

#[derive(Debug)]
pub struct Lab {
    pub name: String,
    pub status: serde_json::Value,
    /// Workloads the test started outside pods; stopped and reaped when the lab goes.
    workloads: std::sync::Mutex<Vec<std::process::Child>>,
}

/// A lab name unique to this test process and call: `t` + pid + counter, within 8 characters.
fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id() % 100_000;
    format!("t{pid:05}{}", (b'a' + (n % 26) as u8) as char)
}

impl Lab {
    /// `skein-lab up --nodes N` with `extra` arguments; panics with the lab's output on failure.
    pub fn up(nodes: usize, extra: &[&str]) -> Self {
        let name = unique_name();
        let mut lab = Self {
            name,
            status: serde_json::Value::Null,
            workloads: Default::default(),
        };
        let count = nodes.to_string();
        let mut args = vec!["up", "--nodes", &count];
        args.extend_from_slice(extra);
        let (ok, out, err) = lab.run(&args);
        assert!(ok, "skein-lab up failed:\n{out}\n{err}\n{}", lab.logs());
        lab.refresh();
        lab
    }

    /// Runs `skein-lab --name <this lab> args...`: (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(built_bin("skein-lab"))
            .args(["--name", &self.name])
            .args(args)
            .output()
            .expect("run skein-lab");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Like [`Lab::run`], failing the test when the command fails.
    pub fn must(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "skein-lab {args:?} failed:\n{out}\n{err}");
        out
    }

    pub fn refresh(&mut self) {
        let out = self.must(&["status", "--json"]);
        self.status = serde_json::from_str(&out).expect("status --json");
    }

    pub fn page(&self, node: &str) -> SocketAddr {
        let port = self.status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["name"] == node))
            .and_then(|n| n["page_port"].as_u64())
            .unwrap_or_else(|| panic!("lab has no node {node}: {}", self.status));
        SocketAddr::from(([127, 0, 0, 1], port as u16))
    }

    /// The node's `/api/v1/status` with each section's details (`/api/v1/<section>`, lists up
    /// to 1000 long) under the section's name, if its daemon answers.
    pub fn node_status(&self, node: &str) -> Option<serde_json::Value> {
        let get = |path: &str| {
            let (code, body) = skein_lab::page::http_get(self.page(node), path)?;
            (code == 200)
                .then(|| serde_json::from_str::<serde_json::Value>(&body).ok())
                .flatten()
        };
        let mut status = skein_lab::page::status(self.page(node))?;
        let names: Vec<String> = status["sections"]
            .as_object()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        for name in names {
            let details = get(&format!("/api/v1/{name}?limit=1000"))?;
            status[name.as_str()] = details;
        }
        Some(status)
    }

    /// A node's entry in the lab's status.
    fn node_entry(&self, node: &str) -> &serde_json::Value {
        self.status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["name"] == node))
            .unwrap_or_else(|| panic!("lab has no node {node}: {}", self.status))
    }

    /// A string field of the lab's status, such as `underlay_netns`.
    fn named(&self, field: &str) -> String {
        self.status[field]
            .as_str()
            .unwrap_or_else(|| panic!("lab status has no {field}: {}", self.status))
            .to_string()
    }

    /// The namespace of the lab's underlay bridge.
    pub fn underlay_netns(&self) -> String {
        self.named("underlay_netns")
    }

    /// The namespace of the lab's control plane.
    pub fn control_plane_netns(&self) -> String {
        self.named("control_plane_netns")
    }

    /// A name for a namespace of the test's own that `down` removes with the lab.
    pub fn extra_netns(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.named("netns_prefix"))
    }

    /// A name for an interface of the test's own, under the lab's interface names (whose
    /// leftover control sockets `down` removes).
    pub fn extra_interface(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.named("interface_prefix"))
    }

    /// A node's config file.
    pub fn config(&self, node: &str) -> String {
        self.node_entry(node)["config"]
            .as_str()
            .expect("config path")
            .to_string()
    }

    pub fn node_names(&self) -> Vec<String> {
        self.status["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs a command inside a node's (or any lab) network namespace: (success, stdout+stderr).
    pub fn exec(&self, netns: &str, argv: &[&str]) -> (bool, String) {
        skein_lab::netns::run(&self.name, netns, argv).expect("ip netns exec")
    }

    /// A command running `program` inside `netns`, tagged with the lab's name (so `down` stops
    /// it if the test does not).
    pub fn command_in(&self, netns: &str, program: impl AsRef<OsStr>) -> Command {
        skein_lab::netns::command(&self.name, netns, program)
    }

    /// A command running one of `skein-lab`'s tools (`probe`, `udp-send`, ...) inside `netns`.
    pub fn tool_in(&self, netns: &str) -> Command {
        self.command_in(netns, built_bin("skein-lab"))
    }

    /// `skein-lab apply -f` of a YAML text.
    pub fn apply(&self, yaml: &str) -> String {
        let file = tempfile::Builder::new()
            .suffix(".yaml")
            .tempfile()
            .expect("tmp");
        std::fs::write(file.path(), yaml).expect("write");
        self.must(&["apply", "-f", file.path().to_str().expect("utf-8")])
    }

    /// A pod as the API has it once it runs: (network namespace, first pod IP), or `None`.
    /// The namespace is the one the lab recorded for the pod's UID.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<(String, String)> {
        let out = self.run(&["get", "pods", "-o", "json"]).1;
        let pods: serde_json::Value = serde_json::from_str(&out).ok()?;
        let pod = pods
            .as_array()?
            .iter()
            .find(|p| p["metadata"]["namespace"] == namespace && p["metadata"]["name"] == name)?;
        let ip = pod["status"]["podIP"].as_str()?.to_string();
        let uid = pod["metadata"]["uid"].as_str()?;
        let (_, status, _) = self.run(&["status", "--json"]);
        let status: serde_json::Value = serde_json::from_str(&status).ok()?;
        let netns = status["pods"]
            .as_array()?
            .iter()
            .find(|p| p["uid"] == uid)?["netns"]
            .as_str()?
            .to_string();
        Some((netns, ip))
    }

    /// `skein-lab probe` from inside `netns`: what the target answered, or `None`.
    pub fn probe(&self, netns: &str, protocol: &str, target: &str) -> Option<String> {
        let out = self
            .tool_in(netns)
            .args(["probe", protocol, target, "--timeout", "3s"])
            .output()
            .expect("skein-lab probe");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts a lab workload answering on `port` (TCP and UDP) inside `netns`; `down` stops it.
    pub fn serve_in(&self, netns: &str, name: &str, port: u16) {
        let port = port.to_string();
        self.tool_in(netns)
            .args(["workload", "--pod", name, "--tcp", &port, "--udp", &port])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(|child| {
                self.workloads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(child)
            })
            .expect("start a workload");
    }

    /// Runs the node's installed CNI plugin as a runtime would: `command` with the first
    /// plugin of the node's conflist (at `version`), for `container`'s `netns_path`.
    pub fn cni(
        &self,
        node: &str,
        command: &str,
        container: &str,
        netns_path: &str,
        version: &str,
    ) -> (bool, serde_json::Value) {
        let config = self.cni_config(node, version);
        self.cni_raw(
            node,
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", container),
                ("CNI_NETNS", netns_path),
                ("CNI_IFNAME", "eth0"),
            ],
            &config.to_string(),
        )
    }

    /// The first plugin's configuration from the node's conflist, at `version`, as a runtime
    /// hands it to the plugin (the list's name and version filled in).
    pub fn cni_config(&self, node: &str, version: &str) -> serde_json::Value {
        let path = format!("{}/nodes/{node}/net.d/10-skein.conflist", self.dir());
        let list: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("conflist"))
                .expect("conflist json");
        let mut config = list["plugins"][0].clone();
        config["cniVersion"] = version.into();
        config["name"] = list["name"].clone();
        config
    }

    /// The plugin with exactly these variables and this stdin: (exit success, printed JSON).
    pub fn cni_raw(
        &self,
        node: &str,
        env: &[(&str, &str)],
        stdin: &str,
    ) -> (bool, serde_json::Value) {
        use std::io::Write;
        let plugin = format!("{}/nodes/{node}/bin/skein", self.dir());
        let mut child = self
            .command_in(&self.netns(node), &plugin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("plugin output");
        let text = String::from_utf8_lossy(&out.stdout);
        let json =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text.into_owned()));
        (out.status.success(), json)
    }

    /// The pid of one of the lab's processes (a node's skein is named after the node).
    pub fn pid(&self, process: &str) -> Option<u32> {
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{}/lab.json", self.dir())).ok()?,
        )
        .ok()?;
        state["processes"][process]["pid"]
            .as_u64()
            .map(|p| p as u32)
    }

    pub fn netns(&self, node: &str) -> String {
        self.node_entry(node)["netns"]
            .as_str()
            .expect("netns")
            .to_string()
    }

    pub fn dir(&self) -> String {
        self.status["dir"].as_str().unwrap_or_default().to_string()
    }

    /// Every log of the lab, for failure messages.
    pub fn logs(&self) -> String {
        let dir = format!("{}/logs", self.dir());
        let mut out = String::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {}\n", entry.path().display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Waits for the lab's own view of a condition; `what` names it in a timeout, with the
    /// lab's logs. A panic inside `check` propagates as it is.
    pub fn wait<T>(&self, what: &str, deadline: Duration, check: impl FnMut() -> Option<T>) -> T {
        crate::wait_explained(what, deadline, || self.logs(), check)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut child in self
            .workloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.run(&["down"]);
    }
}
