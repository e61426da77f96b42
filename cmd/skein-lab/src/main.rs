//! `skein-lab`: several skein nodes on one machine. Each node is a network namespace on a shared
//! underlay bridge, running a real `skein run`; a real kube-apiserver and kube-controller-manager
//! (on kine/SQLite) run in a namespace of their own; the lab does a kubelet's part for its nodes.
//! The lab is for demos and end-to-end tests; it is not part of the `skein` binary.

mod controlplane;
mod dns_stub;
mod forward;
mod health;
mod kubelet;
mod lab;
mod objects;
mod pki;
mod pods;
mod routes;
mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use lab::{API_PORT, CONTROL_PLANE_IP, Lab, Node, Process};
use skein_lab::wait::{self, WaitError};

#[derive(Parser, Debug)]
#[command(
    name = "skein-lab",
    version,
    about = "A multi-node skein sandbox on one machine (needs root)"
)]
struct Cli {
    /// Which lab: 1 to 8 lower-case letters and digits. Several labs can run side by side.
    #[arg(long, global = true, default_value = "lab", env = "SKEIN_LAB_NAME")]
    name: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create the lab: underlay, control plane, N nodes each running `skein run`.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The skein binary the nodes run (default: the one next to skein-lab).
        #[arg(long)]
        skein: Option<PathBuf>,
        /// A directory with kine, kube-apiserver and kube-controller-manager (default: PATH,
        /// else built once into the cache).
        #[arg(long)]
        controlplane_bin: Option<PathBuf>,
        /// RBAC manifest granting the nodes' skein its rights (default: packaging/rbac.yaml).
        #[arg(long)]
        rbac: Option<PathBuf>,
        /// Return once every node's skein is ready, even if some node is not healthy (for a lab
        /// set up broken on purpose); without it `up` waits for every node to be ok.
        #[arg(long)]
        allow_unhealthy: bool,
    },
    /// Remove everything the lab made: processes, namespaces, links, files. Works after a crash.
    Down {
        /// Every lab on this machine.
        #[arg(long)]
        all: bool,
    },
    /// Nodes, processes and each node's status page address.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Create or update the objects in a YAML file (server-side apply; a `status` in a document
    /// goes to the status subresource, as a cloud controller would set it).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// List objects of a kind: nodes, pods, services, endpointslices, networkpolicies, ...
    Get {
        kind: String,
        #[arg(short = 'o', long, value_parser = ["table", "json"], default_value = "table")]
        output: String,
    },
    /// Delete one object: `skein-lab delete node node-3`, `skein-lab delete pod -n default web`.
    /// A pod goes on serving through its grace period (at most 30 s in the lab), terminating.
    Delete {
        kind: String,
        object: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// The deletion's grace period in seconds (0: at once); default: the object's own.
        #[arg(long)]
        grace_period: Option<u32>,
    },
    /// Print one JSON line per change of a kind's objects as it arrives, until killed:
    /// `{"at_ms", "event": "init"|"synced"|"apply"|"delete", "object"}`.
    Watch { kind: String },
    /// Run a command inside a pod (`namespace/name`, or `name` in `default`), with the pod's
    /// resolv.conf, as `kubectl exec` would; exits with the command's status.
    Exec {
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// A stub upstream DNS server for tests (names under example.test), logging each question.
    DnsStub {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        log: PathBuf,
    },
    /// Stop a node (its skein, and its kubelet heartbeats) or a control-plane process.
    Stop { component: String },
    /// Start again what `stop` stopped.
    Start { component: String },
    /// Print the admin kubeconfig path (for kubectl).
    Kubeconfig,
    /// The server a lab pod runs: answers with the pod's name on its ports.
    Workload {
        #[arg(long)]
        pod: String,
        #[arg(long)]
        tcp: Vec<u16>,
        #[arg(long)]
        udp: Vec<u16>,
        #[arg(long)]
        http: Vec<u16>,
    },
    /// Whether a target answers: prints what it said and exits 0, or exits 1.
    /// Run it inside a pod: `ip netns exec <pod namespace> skein-lab probe tcp 10.42.1.5:8080`.
    /// A lab workload's answer is its pod's name and the source address it saw.
    Probe {
        #[arg(value_parser = ["tcp", "udp", "http", "https"])]
        protocol: String,
        target: SocketAddr,
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
        /// The client's own port: probes one after another are then one flow to conntrack.
        #[arg(long)]
        source_port: Option<u16>,
        /// HTTP(S): the path to GET.
        #[arg(long, default_value = "/")]
        path: String,
        /// HTTPS: the CA certificate (PEM) the server's certificate must chain to.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Print the outcome as JSON (answer, HTTP status, error kind: refused, reset, timeout,
        /// unreachable; and the time it took), still exiting 1 without an answer.
        #[arg(long)]
        json: bool,
    },
    /// A UDP flow from one fixed source port: a datagram every `--every`, each answer printed
    /// as "<unix ms> <answer>" when it arrives, for `--for` or until `--stop-file` exists.
    UdpFlow {
        target: SocketAddr,
        #[arg(long)]
        source_port: u16,
        #[arg(long, default_value = "20ms", value_parser = parse_duration)]
        every: Duration,
        #[arg(long = "for", default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long)]
        stop_file: Option<PathBuf>,
    },
    /// An application-level echo stream over one TCP connection to a lab workload: a message
    /// every `--every`, for `--for`; prints the longest wait between two answers as JSON.
    /// Until `--stop-file` exists, when given, instead of `--for`.
    EchoStream {
        target: SocketAddr,
        #[arg(long, default_value = "10ms", value_parser = parse_duration)]
        every: Duration,
        #[arg(long = "for", default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long)]
        stop_file: Option<PathBuf>,
    },
    /// One-way UDP: a numbered datagram every `--every` for `--for`, no answers expected.
    UdpSend {
        target: SocketAddr,
        #[arg(long, default_value = "10ms", value_parser = parse_duration)]
        every: Duration,
        #[arg(long = "for", default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Receives `udp-send`'s datagrams on `--port` until killed, writing "<unix ms> <seq>" per
    /// datagram to `--out`.
    UdpSink {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        out: PathBuf,
    },
    /// Runs inside the lab: port forwards and the kubelet's heartbeats.
    #[command(hide = true)]
    Agent,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = lab::check_name(&cli.name).and_then(|()| dispatch(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skein-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?)
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let name = cli.name;
    match cli.command {
        Cmd::Up {
            nodes,
            skein,
            controlplane_bin,
            rbac,
            allow_unhealthy,
        } => {
            let want = if allow_unhealthy {
                health::Want::Ready
            } else {
                health::Want::Healthy
            };
            up(&name, nodes, skein, controlplane_bin.as_deref(), rbac, want)
        }
        Cmd::DnsStub { listen, log } => dns_stub::run(listen, &log),
        Cmd::Exec { pod, command } => {
            let lab = Lab::load(&name)?;
            let record = pods::find(&lab, &pod)?;
            let (program, args) = command.split_first().context("no command")?;
            let status = skein_lab::netns::command(&name, &record.netns, program)
                .args(args)
                .status()
                .with_context(|| format!("running {program} in {pod}"))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Down { all } => {
            down(if all { None } else { Some(&name) });
            Ok(())
        }
        Cmd::Status { json } => status(&name, json),
        Cmd::Apply { file } => {
            let lab = Lab::load(&name)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            runtime()?.block_on(async {
                let client = admin_client(&lab).await?;
                for applied in
                    objects::apply_yaml(&client, &text, &file.display().to_string()).await?
                {
                    println!("{applied} applied");
                }
                Ok(())
            })
        }
        Cmd::Get { kind, output } => {
            let lab = Lab::load(&name)?;
            runtime()?.block_on(async {
                let client = admin_client(&lab).await?;
                let items = objects::get(&client, &kind).await?;
                if output == "json" {
                    println!("{}", serde_json::to_string_pretty(&items)?);
                } else {
                    print_table(&items);
                }
                Ok(())
            })
        }
        Cmd::Delete {
            kind,
            object,
            namespace,
            grace_period,
        } => {
            let lab = Lab::load(&name)?;
            runtime()?.block_on(async {
                let client = admin_client(&lab).await?;
                objects::delete(&client, &kind, &namespace, &object, grace_period).await?;
                println!("{} {object} deleted", kind.to_lowercase());
                Ok(())
            })
        }
        Cmd::Stop { component } => {
            let mut lab = Lab::load(&name)?;
            lab.stop(&component, Duration::from_secs(5))?;
            lab.save()?;
            eprintln!("{component} stopped");
            Ok(())
        }
        Cmd::Start { component } => {
            let mut lab = Lab::load(&name)?;
            let pid = lab.spawn(&component)?;
            lab.save()?;
            eprintln!("{component} started (pid {pid})");
            Ok(())
        }
        Cmd::Kubeconfig => {
            println!("{}", Lab::load(&name)?.admin_kubeconfig.display());
            Ok(())
        }
        Cmd::Agent => agent(&name),
        Cmd::Workload {
            pod,
            tcp,
            udp,
            http,
        } => runtime()?.block_on(workload::serve(pod, tcp, udp, http)),
        Cmd::EchoStream {
            target,
            every,
            duration,
            stop_file,
        } => {
            let report =
                runtime()?.block_on(workload::echo_stream(target, every, duration, stop_file))?;
            println!("{report}");
            Ok(())
        }
        Cmd::UdpSend {
            target,
            every,
            duration,
        } => {
            let report = runtime()?.block_on(workload::udp_send(target, every, duration))?;
            println!("{report}");
            Ok(())
        }
        Cmd::UdpSink { port, out } => runtime()?.block_on(workload::udp_sink(port, out)),
        Cmd::Watch { kind } => {
            let lab = Lab::load(&name)?;
            runtime()?.block_on(async {
                let client = admin_client(&lab).await?;
                objects::watch(&client, &kind).await
            })
        }
        Cmd::Probe {
            protocol,
            target,
            timeout,
            source_port,
            path,
            ca,
            json,
        } => {
            let options = workload::ProbeOptions {
                timeout,
                source_port,
                path,
                ca,
            };
            let outcome = runtime()?.block_on(workload::probe(&protocol, target, &options));
            if json {
                println!("{}", outcome.json());
            }
            match (outcome.answer, outcome.error) {
                (Some(answer), _) => {
                    if !json {
                        println!("{answer}");
                    }
                    Ok(())
                }
                (None, Some((_, error))) => bail!(error),
                (None, None) => bail!("no answer"),
            }
        }
        Cmd::UdpFlow {
            target,
            source_port,
            every,
            duration,
            stop_file,
        } => {
            let report = runtime()?.block_on(workload::udp_flow(
                target,
                source_port,
                every,
                duration,
                stop_file,
            ))?;
            eprintln!("{report}");
            Ok(())
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 2s or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        _ => return Err(format!("{s:?}: expected e.g. 2s or 500ms")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn progress(started: Instant, what: &str) {
    eprintln!("==> [{:>3}s] {what}", started.elapsed().as_secs());
}

fn free_port() -> anyhow::Result<u16> {
    Ok(skein_lab::free_port()?)
}

fn up(
    name: &str,
    count: usize,
    skein: Option<PathBuf>,
    controlplane_bin: Option<&Path>,
    rbac: Option<PathBuf>,
    want: health::Want,
) -> anyhow::Result<()> {
    if !(1..=50).contains(&count) {
        bail!("--nodes {count}: a lab has 1 to 50 nodes");
    }
    let dir = Lab::dir_of(name);
    if dir.join("lab.json").exists() {
        bail!("lab {name:?} is already up; `skein-lab --name {name} down` removes it");
    }
    if !lab::netns_with_prefix(&lab::netns_prefix(name)).is_empty() {
        bail!(
            "namespaces of a lab {name:?} are left from a crash; run `skein-lab --name {name} down` first"
        );
    }
    let started = Instant::now();
    let skein = match skein {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("skein"),
    };
    if !skein.is_file() {
        bail!(
            "the skein binary {} does not exist (build it: cargo build --bins)",
            skein.display()
        );
    }
    let rbac_path = rbac
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/rbac.yaml"));
    let rbac_text = std::fs::read_to_string(&rbac_path)
        .with_context(|| format!("reading {}", rbac_path.display()))?;

    progress(started, "control plane binaries");
    let bin = controlplane::binaries(controlplane_bin)?;

    progress(started, "certificates");
    std::fs::create_dir_all(&dir)?;
    let node_names: Vec<String> = (1..=count).map(|i| format!("node-{i}")).collect();
    let mut clients = vec![
        pki::Client {
            file: "admin".into(),
            user: "skein-lab-admin".into(),
            groups: vec!["system:masters".into()],
        },
        pki::Client {
            file: "controller-manager".into(),
            user: "system:kube-controller-manager".into(),
            groups: vec![],
        },
    ];
    for node in &node_names {
        // The node's own identity, as a kubelet's client certificate carries it: the Node
        // authorizer and NodeRestriction confine it to its own Node; packaging/rbac.yaml grants
        // the group its reads.
        clients.push(pki::Client {
            file: node.clone(),
            user: format!("system:node:{node}"),
            groups: vec!["system:nodes".into()],
        });
    }
    let server_ips = [
        CONTROL_PLANE_IP.into(),
        std::net::Ipv4Addr::LOCALHOST.into(),
        "10.43.0.1".parse()?,
    ];
    let pki = pki::Pki::create(&dir.join("pki"), &server_ips, &clients)?;
    let api_port = free_port()?;
    let admin_kubeconfig =
        pki.write_kubeconfig("admin", &format!("https://127.0.0.1:{api_port}"))?;
    let in_lab_api = format!("https://{CONTROL_PLANE_IP}:{API_PORT}");
    let kcm_kubeconfig = pki.write_kubeconfig("controller-manager", &in_lab_api)?;

    progress(started, "namespaces and the underlay");
    let prefix = lab::netns_prefix(name);
    let mut lab = Lab {
        name: name.to_string(),
        dir: dir.clone(),
        underlay_netns: format!("{prefix}ul"),
        control_plane_netns: format!("{prefix}cp"),
        api_port,
        admin_kubeconfig,
        nodes: Vec::new(),
        processes: BTreeMap::new(),
    };
    for (i, node) in node_names.iter().enumerate() {
        let node_dir = dir.join("nodes").join(node);
        std::fs::create_dir_all(&node_dir)?;
        let kubeconfig = pki.write_kubeconfig(node, &in_lab_api)?;
        let config = node_dir.join("config.toml");
        let overlay_interface = lab::overlay_interface(name, i + 1);
        let state_dir = lab::state_dir_of(name, node);
        std::fs::write(
            &config,
            node_config(node, &node_dir, &state_dir, &kubeconfig, &overlay_interface),
        )?;
        lab.nodes.push(Node {
            name: node.clone(),
            netns: format!("{prefix}{node}"),
            address: lab::node_ip(i + 1),
            page_port: free_port()?,
            config,
            kubeconfig,
            overlay_interface,
        });
    }
    let mut members = vec![(lab.control_plane_netns.clone(), CONTROL_PLANE_IP)];
    members.extend(lab.nodes.iter().map(|n| (n.netns.clone(), n.address)));
    // Record the lab first, so `down` finds everything even if the rest fails half-way.
    lab.save()?;
    lab::build_underlay(&lab.underlay_netns, &members)?;

    let cp = Some(lab.control_plane_netns.clone());
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let add = |lab: &mut Lab, name: &str, netns: Option<String>, argv: Vec<String>| {
        let log = logs.join(format!("{name}.log"));
        lab.processes.insert(
            name.to_string(),
            Process {
                netns,
                argv,
                log,
                pid: None,
                stopped: false,
            },
        );
    };
    let me = std::env::current_exe()?.display().to_string();
    add(
        &mut lab,
        "agent",
        None,
        vec![me, "--name".into(), name.into(), "agent".into()],
    );
    add(
        &mut lab,
        "kine",
        cp.clone(),
        controlplane::kine_argv(&bin, &dir),
    );
    add(
        &mut lab,
        "apiserver",
        cp.clone(),
        controlplane::apiserver_argv(&bin, &dir, &pki),
    );
    let grace = kubelet::GRACE.as_secs();
    add(
        &mut lab,
        "controller-manager",
        cp,
        controlplane::controller_manager_argv(&bin, &dir, &pki, &kcm_kubeconfig, grace),
    );
    for node in lab.nodes.clone() {
        // The node's userspace WireGuard, a process of its own as skein-wireguard.service is:
        // it outlives restarts of the node's daemon. One worker: the lab's nodes share the
        // machine's CPUs, and more workers only contend (bench/README.md).
        let argv = vec![
            skein.display().to_string(),
            "wireguard".into(),
            "--interface".into(),
            node.overlay_interface.clone(),
            "--threads".into(),
            "1".into(),
        ];
        add(
            &mut lab,
            &lab::wireguard_process(&node.name),
            Some(node.netns.clone()),
            argv,
        );
        let argv = vec![
            skein.display().to_string(),
            "run".into(),
            "--config".into(),
            node.config.display().to_string(),
        ];
        add(&mut lab, &node.name, Some(node.netns.clone()), argv);
    }

    progress(started, "starting kine, kube-apiserver and the lab agent");
    for p in ["kine", "apiserver", "agent"] {
        lab.spawn(p)?;
    }
    lab.save()?;
    let rt = runtime()?;
    rt.block_on(async {
        let client = wait_for_api(&mut lab, started).await?;
        progress(started, "RBAC for the nodes' skein");
        objects::apply_yaml(&client, &rbac_text, &rbac_path.display().to_string()).await?;
        progress(
            started,
            "the kube-dns Service (skein answers on its address)",
        );
        objects::apply_yaml(&client, KUBE_DNS_YAML, "packaging/kube-dns.yaml").await?;
        progress(started, "starting kube-controller-manager");
        lab.spawn("controller-manager")?;
        lab.save()?;
        // Pod admission needs each namespace's `default` ServiceAccount, which the controller
        // manager's service-account controller makes: the lab is not up before it exists.
        let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
            kube::Api::namespaced(client.clone(), "default");
        let deadline = Instant::now() + Duration::from_secs(120);
        while accounts.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                bail!(
                    "the controller manager made no default ServiceAccount; its log: {}",
                    lab.processes["controller-manager"].log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        progress(started, "registering the nodes");
        for node in &lab.nodes {
            kubelet::register(&client, node)
                .await
                .with_context(|| format!("registering {}", node.name))?;
        }
        anyhow::Ok(())
    })?;

    progress(
        started,
        "starting skein and its WireGuard device on each node",
    );
    for node in lab.nodes.clone() {
        lab.spawn(&lab::wireguard_process(&node.name))?;
    }
    for node in &lab.nodes {
        let socket = format!("/var/run/wireguard/{}.sock", node.overlay_interface);
        wait_until(Duration::from_secs(10), || Ok(Path::new(&socket).exists()))
            .with_context(|| format!("waiting for the WireGuard device of {}", node.name))?;
    }
    for node in lab.nodes.clone() {
        lab.spawn(&node.name)?;
    }
    lab.save()?;
    // Not merely ready: a node also waits for its pod CIDR from the controller manager, and pods
    // applied before that would only be retried.
    progress(started, want.waiting_for());
    health::wait_for_nodes(&lab, want, health::DEADLINE)?;
    progress(started, "lab is up");
    println!(
        "lab {name}: {count} node(s); kubeconfig: {}",
        lab.admin_kubeconfig.display()
    );
    for node in &lab.nodes {
        println!(
            "  {:<8} {:<14} status page http://127.0.0.1:{}/",
            node.name, node.address, node.page_port
        );
    }
    Ok(())
}

/// The cluster DNS Service as shipped; its address is the nodes' default `dns.cluster_ip`.
const KUBE_DNS_YAML: &str = include_str!("../../../packaging/kube-dns.yaml");

fn node_config(
    node: &str,
    dir: &Path,
    state_dir: &Path,
    kubeconfig: &Path,
    overlay_interface: &str,
) -> String {
    format!(
        "# skein on lab node {node}\n[node]\nname = \"{node}\"\n\n[cluster]\nkubeconfig = \"{kc}\"\n\n[cni]\nsocket = \"{d}/cni.sock\"\nconf_dir = \"{d}/net.d\"\nbin_dir = \"{d}/bin\"\n\n[overlay]\nmode = \"userspace\"\ninterface = \"{overlay_interface}\"\n\n[dns]\n# Names outside the cluster go to the lab's own upstream, never to the machine's resolvers.\nupstreams = [\"{upstream}\"]\n\n[store]\npath = \"{s}/state.db\"\n\n[dashboard]\nlisten = \"127.0.0.1:9610\"\n\n[log]\n# Each watch event and sync in the node's log, to tell a late node's cause from its log.\nlevel = \"info,skein_cluster=debug,skein_daemon=debug\"\n",
        kc = kubeconfig.display(),
        d = dir.display(),
        s = state_dir.display(),
        upstream = lab::DNS_UPSTREAM,
    )
}

/// Polls `check` every 200 ms until it says true, fails, or `deadline` passes.
fn wait_until(
    deadline: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    wait::poll(deadline, Duration::from_millis(200), || {
        check().map(|done| done.then_some(()))
    })
    .map_err(|e| match e {
        WaitError::Failed(e) => e,
        timed_out => anyhow::anyhow!("{timed_out}"),
    })
}

async fn admin_client(lab: &Lab) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&lab.admin_kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// The last lines of a log, for an error that names what went wrong without a second look.
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

async fn wait_for_api(lab: &mut Lab, started: Instant) -> anyhow::Result<kube::Client> {
    let client = admin_client(lab).await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last_note = Instant::now();
    let mut agent_restarted = false;
    loop {
        for p in ["kine", "apiserver", "agent"] {
            let process = &lab.processes[p];
            if !process.pid.is_some_and(lab::alive) {
                let tail = log_tail(&process.log);
                // The agent only forwards and sends heartbeats: once, it is started again
                // (saying why it stopped) rather than failing the whole lab.
                if p == "agent" && !agent_restarted {
                    agent_restarted = true;
                    progress(
                        started,
                        &format!("the lab agent exited; starting it again. Its log ended:\n{tail}"),
                    );
                    lab.spawn("agent")?;
                    lab.save()?;
                    continue;
                }
                bail!(
                    "{p} exited while the lab was starting; its log ({}) ends:\n{tail}",
                    process.log.display()
                );
            }
        }
        let req = http::Request::get("/readyz").body(Vec::new())?;
        if let Ok(text) = client.request_text(req).await
            && text.trim() == "ok"
        {
            progress(started, "kube-apiserver is ready");
            return Ok(client);
        }
        if Instant::now() > deadline {
            bail!(
                "kube-apiserver did not become ready; its log: {}",
                lab.processes["apiserver"].log.display()
            );
        }
        if last_note.elapsed() > Duration::from_secs(10) {
            progress(started, "waiting for kube-apiserver");
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn down(name: Option<&str>) {
    let grace = Duration::from_secs(3);
    // Ask nicely first, all at once, so skein records clean stops; then make sure.
    let mut pids: Vec<u32> = Vec::new();
    let labs: Vec<String> = match name {
        Some(n) => vec![n.to_string()],
        None => std::fs::read_dir(lab::LABS_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect(),
    };
    for lab_name in &labs {
        if let Ok(lab) = Lab::load(lab_name) {
            pids.extend(lab.processes.values().filter_map(|p| p.pid));
        }
    }
    pids.extend(lab::tagged_processes(name));
    let prefix = name.map_or("skl-".to_string(), lab::netns_prefix);
    let namespaces = lab::netns_with_prefix(&prefix);
    for ns in &namespaces {
        let in_ns = lab::ip(&["netns", "pids", ns]).unwrap_or_default();
        pids.extend(in_ns.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|p| *p != std::process::id() && lab::alive(*p));
    let threads: Vec<_> = pids
        .into_iter()
        .map(|pid| std::thread::spawn(move || lab::terminate(pid, grace)))
        .collect();
    for t in threads {
        let _ = t.join();
    }
    for ns in &namespaces {
        if let Err(e) = lab::ip(&["netns", "del", ns]) {
            eprintln!("skein-lab: {e}");
        }
    }
    // The pods' resolv.conf files, by the same prefix (also of namespaces already gone).
    for entry in std::fs::read_dir(pods::ETC_NETNS)
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    for lab_name in labs {
        let _ = std::fs::remove_dir_all(Lab::dir_of(&lab_name));
        let _ = std::fs::remove_dir_all(Path::new(lab::STATE_DIR).join(&lab_name));
        // A device killed outright leaves its control socket behind.
        let prefix = interface_prefix(&lab_name);
        let prefix = prefix.as_str();
        for entry in std::fs::read_dir("/var/run/wireguard")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) && name.ends_with(".sock") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    match name {
        Some(n) => eprintln!("lab {n} is down"),
        None => eprintln!("every lab is down"),
    }
}

/// What every interface name of lab `lab` starts with (the nodes' WireGuard devices among them):
/// `down` removes leftover control sockets by it.
fn interface_prefix(lab: &str) -> String {
    lab::overlay_interface(lab, 0)
        .trim_end_matches('0')
        .to_string()
}

fn status(name: &str, json: bool) -> anyhow::Result<()> {
    let lab = Lab::load(name)?;
    let mut nodes = Vec::new();
    for node in &lab.nodes {
        let process = &lab.processes[&node.name];
        let running = process.pid.is_some_and(lab::alive);
        let page = format!("http://127.0.0.1:{}/", node.page_port);
        let status = running
            .then(|| skein_lab::page::status(health::page_addr(node)))
            .flatten();
        nodes.push(serde_json::json!({
            "name": node.name,
            "netns": node.netns,
            "address": node.address,
            "overlay_interface": node.overlay_interface,
            "config": node.config,
            "page": page,
            "page_port": node.page_port,
            "running": running,
            "stopped": process.stopped,
            "overall": status.as_ref().map(|s| s["overall"].clone()),
            "problems": if running { health::node_problems(status.as_ref()) } else { Vec::new() },
        }));
    }
    // Where each pod the lab runs lives, so nobody outside the lab rebuilds its names.
    let pods: Vec<serde_json::Value> = pods::records(&lab)
        .into_values()
        .map(|r| {
            serde_json::json!({
                "uid": r.uid,
                "namespace": r.namespace,
                "name": r.name,
                "node": r.node,
                "netns": r.netns,
                "ips": r.ips,
            })
        })
        .collect();
    let processes: BTreeMap<&str, bool> = lab
        .processes
        .iter()
        .map(|(n, p)| (n.as_str(), p.pid.is_some_and(lab::alive)))
        .collect();
    if json {
        let out = serde_json::json!({
            "name": lab.name,
            "dir": lab.dir,
            "kubeconfig": lab.admin_kubeconfig,
            "api": format!("https://127.0.0.1:{}", lab.api_port),
            "netns_prefix": lab::netns_prefix(&lab.name),
            "interface_prefix": interface_prefix(&lab.name),
            "underlay_netns": lab.underlay_netns,
            "control_plane_netns": lab.control_plane_netns,
            "nodes": nodes,
            "pods": pods,
            "processes": processes,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "lab {}  kubeconfig {}",
        lab.name,
        lab.admin_kubeconfig.display()
    );
    println!(
        "{:<10} {:<14} {:<10} {:<10} STATUS PAGE",
        "NODE", "ADDRESS", "SKEIN", "HEALTH"
    );
    for n in &nodes {
        let skein = if n["stopped"] == true {
            "stopped"
        } else if n["running"] == true {
            "running"
        } else {
            "exited"
        };
        let health = n["overall"].as_str().unwrap_or("-");
        println!(
            "{:<10} {:<14} {:<10} {:<10} {}",
            n["name"].as_str().unwrap_or(""),
            n["address"].as_str().unwrap_or(""),
            skein,
            health,
            n["page"].as_str().unwrap_or("")
        );
        for problem in n["problems"].as_array().into_iter().flatten() {
            println!("           {}", problem.as_str().unwrap_or(""));
        }
    }
    let down: Vec<&str> = processes
        .iter()
        .filter(|(n, up)| !**up && !lab.nodes.iter().any(|x| x.name == **n))
        .map(|(n, _)| *n)
        .collect();
    if down.is_empty() {
        println!("control plane and agent: running");
    } else {
        println!("not running: {}", down.join(", "));
    }
    Ok(())
}

fn print_table(items: &[kube::api::DynamicObject]) {
    println!("{:<20} {:<32} {:<8} EXTRA", "NAMESPACE", "NAME", "AGE");
    for item in items {
        let age = item
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| {
                let secs = jiff::Timestamp::now().duration_since(t.0).as_secs();
                format!("{secs}s")
            })
            .unwrap_or_default();
        let extra = match item.types.as_ref().map(|t| t.kind.as_str()) {
            _ if item
                .data
                .get("spec")
                .and_then(|s| s.get("podCIDRs"))
                .is_some() =>
            {
                format!("podCIDRs={}", item.data["spec"]["podCIDRs"])
            }
            _ => item
                .data
                .get("status")
                .and_then(|s| s.get("phase"))
                .map(|p| format!("phase={p}"))
                .unwrap_or_default(),
        };
        println!(
            "{:<20} {:<32} {:<8} {}",
            item.metadata.namespace.as_deref().unwrap_or("-"),
            item.metadata.name.as_deref().unwrap_or(""),
            age,
            extra
        );
    }
}

/// The lab's resident process: port forwards into the namespaces and the kubelet heartbeats.
fn agent(name: &str) -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_ansi(false).init();
    let lab = Lab::load(name)?;
    runtime()?.block_on(async move {
        let api = forward::Dialer::new(&lab.control_plane_netns)?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", lab.api_port)).await?;
        tokio::spawn(forward::forward(
            listener,
            api,
            SocketAddr::from((CONTROL_PLANE_IP, API_PORT)),
        ));
        for node in &lab.nodes {
            let dialer = forward::Dialer::new(&node.netns)?;
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", node.page_port)).await?;
            tokio::spawn(forward::forward(
                listener,
                dialer,
                SocketAddr::from(([127, 0, 0, 1], 9610)),
            ));
        }
        tracing::info!(
            "forwarding the API to 127.0.0.1:{} and the nodes' pages",
            lab.api_port
        );
        let client = admin_client(&lab).await?;
        tokio::spawn(pods::run(client.clone(), lab.name.clone()));
        tokio::spawn(routes::run(client.clone(), lab.name.clone()));
        kubelet::run(client, lab.name.clone()).await;
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests;
