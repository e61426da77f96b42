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

    /// `skein-lab probe --json` from inside `netns`, with `extra` options (`--timeout`,
    /// `--source-port`, `--path`, `--ca`): what happened, answered or not.
    pub fn probe_outcome(
        &self,
        netns: &str,
        protocol: &str,
        target: &str,
        extra: &[&str],
    ) -> Probe {
        let mut args = vec!["probe", protocol, target, "--json"];
        if !extra.contains(&"--timeout") {
            args.extend(["--timeout", "3s"]);
        }
        args.extend_from_slice(extra);
        let out = self
            .tool_in(netns)
            .args(&args)
            .output()
            .expect("skein-lab probe");
        let text = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "skein-lab probe printed no JSON ({e}): {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        Probe {
            answer: json["answer"].as_str().map(str::to_string),
            from: json["from"].as_str().map(str::to_string),
            status: json["status"].as_u64().map(|s| s as u16),
            error_kind: json["error_kind"].as_str().map(str::to_string),
            error: json["error"].as_str().map(str::to_string),
            elapsed: Duration::from_secs_f64(json["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0),
        }
    }

    /// A probe of a lab workload from `netns`: (the pod that answered, the source address it
    /// saw), or `None` without an answer.
    pub fn ask(&self, netns: &str, protocol: &str, target: &str) -> Option<(String, String)> {
        self.probe_outcome(netns, protocol, target, &[]).workload()
    }

    /// A namespace of the test's own on the underlay, as a machine outside the cluster on the
    /// nodes' network: `eth0` with `address`/24 on the underlay bridge, nothing routed beyond
    /// it. `down` removes it with the lab (its name has the lab's prefix).
    pub fn outside(&self, suffix: &str, address: &str) -> String {
        let ns = self.extra_netns(suffix);
        let underlay = self.underlay_netns();
        let mut port = format!("o{suffix}");
        port.truncate(15);
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &underlay, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        ip(&["-n", &underlay, "link", "set", &port, "master", "br0", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ns
    }

    /// The lab's CA certificate, which the API server's serving certificate chains to.
    pub fn ca_cert(&self) -> String {
        format!("{}/pki/ca.crt", self.dir())
    }

    /// A node's underlay address.
    pub fn address(&self, node: &str) -> String {
        self.node_entry(node)["address"]
            .as_str()
            .expect("address")
            .to_string()
    }

    /// `nft list table inet skein` in a node's namespace.
    pub fn nft_table(&self, node: &str) -> String {
        let (ok, out) = self.exec(
            &self.netns(node),
            &["nft", "list", "table", "inet", "skein"],
        );
        assert!(ok, "nft list table inet skein on {node}: {out}");
        out
    }

    /// A long-running TCP connection from `netns` to a lab workload at `target`: an echo every
    /// 10 ms until [`EchoStream::finish`]. A reset or close fails it.
    pub fn echo_stream(&self, netns: &str, target: &str) -> EchoStream {
        let dir = tempfile::tempdir().expect("tempdir");
        let stop = dir.path().join("stop");
        let child = self
            .tool_in(netns)
            .args(["echo-stream", target, "--every", "10ms", "--stop-file"])
            .arg(&stop)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the echo stream");
        EchoStream {
            child: Some(child),
            dir,
            netns: netns.to_string(),
        }
    }

    /// A UDP flow from `netns` to `target` from one fixed `source_port`, a datagram every 20 ms;
    /// its answers are collected as they arrive.
    pub fn udp_flow(&self, netns: &str, target: &str, source_port: u16) -> Collected {
        let dir = tempfile::tempdir().expect("tempdir");
        let stop = dir.path().join("stop");
        let port = source_port.to_string();
        let child = self
            .tool_in(netns)
            .args([
                "udp-flow",
                target,
                "--source-port",
                &port,
                "--every",
                "20ms",
            ])
            .arg("--stop-file")
            .arg(&stop)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the UDP flow");
        Collected::start(child, Some((dir, stop)))
    }

    /// `skein-lab watch kind`: every change of the kind's objects with the time it arrived.
    pub fn watch(&self, kind: &str) -> Collected {
        let child = Command::new(built_bin("skein-lab"))
            .args(["--name", &self.name, "watch", kind])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start skein-lab watch");
        Collected::start(child, None)
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
        // `down` removes the lab's directory: a failed test keeps its logs, whole, for a look
        // after the run (a failure message has only their tails).
        if std::thread::panicking() {
            let kept = std::env::temp_dir().join(format!("skein-failed-{}", self.name));
            let copied = std::process::Command::new("cp")
                .arg("-r")
                .arg(format!("{}/logs", self.dir()))
                .arg(&kept)
                .status()
                .is_ok_and(|s| s.success());
            if copied {
                eprintln!("the lab's logs are kept in {}", kept.display());
            }
        }
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

/// What one `skein-lab probe` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// TCP: the first line; UDP: the datagram; HTTP(S): the body.
    pub answer: Option<String>,
    /// Where the answer came from: UDP, the datagram's source; otherwise the target.
    pub from: Option<String>,
    /// HTTP(S): the status code.
    pub status: Option<u16>,
    /// Without an answer: `refused`, `reset`, `timeout`, `unreachable` or `other`.
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// From the connect (or send) to the answer or the error, as the probe measured it.
    pub elapsed: Duration,
}

impl Probe {
    /// A lab workload's answer split: (the pod's name, the source address it saw).
    pub fn workload(&self) -> Option<(String, String)> {
        let (name, source) = self.answer.as_deref()?.split_once(' ')?;
        Some((name.to_string(), source.to_string()))
    }
}

/// A long-running TCP connection (`skein-lab echo-stream`); killed when dropped unfinished.
#[derive(Debug)]
pub struct EchoStream {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    netns: String,
}

impl EchoStream {
    /// Packets the client's namespace has received on `eth0` so far (the kernel's counter).
    fn rx_packets(&self, lab: &Lab) -> Option<u64> {
        let (ok, out) = lab.exec(
            &self.netns,
            &["cat", "/sys/class/net/eth0/statistics/rx_packets"],
        );
        ok.then(|| out.trim().parse().ok()).flatten()
    }

    /// Waits until the client has received 200 more packets (about 200 echoes, 2 s of the
    /// stream): it is flowing at this point of the test.
    pub fn carries(&self, lab: &Lab, when: &str) {
        let since = self.rx_packets(lab).expect("the client's packet counter");
        lab.wait(
            &format!("the echo stream to carry 200 answers {when}"),
            Duration::from_secs(20),
            || (self.rx_packets(lab)? >= since + 200).then_some(()),
        );
    }

    /// Ends the stream and returns its report (`greeting`: the first line the server sent,
    /// `sent`, `received`, `out_of_order`, `max_gap_ms`, `seconds`); panics if it broke.
    pub fn finish(mut self) -> serde_json::Value {
        std::fs::write(self.dir.path().join("stop"), "").expect("stop file");
        let child = self.child.take().expect("running");
        let out = child.wait_with_output().expect("echo stream");
        assert!(
            out.status.success(),
            "the echo stream broke: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("echo report")
    }
}

impl Drop for EchoStream {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child whose stdout lines are collected as they arrive, each with the time it came
/// (`skein-lab udp-flow`'s answers and `watch`'s events carry their own time as well).
/// Stopped (stop file, then kill) when dropped.
#[derive(Debug)]
pub struct Collected {
    child: Option<std::process::Child>,
    stop: Option<(tempfile::TempDir, std::path::PathBuf)>,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Collected {
    fn start(
        mut child: std::process::Child,
        stop: Option<(tempfile::TempDir, std::path::PathBuf)>,
    ) -> Self {
        use std::io::BufRead;
        let stdout = child.stdout.take().expect("stdout");
        let lines: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Self {
            child: Some(child),
            stop,
            lines,
            reader: Some(reader),
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `udp-flow`'s answers so far: (unix ms, answer); errors (`!` lines) left out.
    pub fn answers(&self) -> Vec<(u64, String)> {
        self.lines()
            .iter()
            .filter_map(|l| {
                let (ms, rest) = l.split_once(' ')?;
                if rest.starts_with('!') {
                    return None;
                }
                Some((ms.parse().ok()?, rest.to_string()))
            })
            .collect()
    }

    /// `watch`'s events so far, as JSON.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Stops the child and returns what it wrote on stderr.
    pub fn stop(&mut self) -> String {
        use std::io::Read;
        let mut stderr = String::new();
        if let Some(mut child) = self.child.take() {
            if let Some((_, file)) = &self.stop {
                std::fs::write(file, "").expect("stop file");
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while child.try_wait().ok().flatten().is_none()
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        stderr
    }
}

impl Drop for Collected {
    fn drop(&mut self) {
        self.stop();
    }
}
