//! The plugin: what the `skein` binary does when a container runtime executes it with
//! `CNI_COMMAND` set. Checks its input, answers `VERSION` itself, hands everything else to the
//! daemon, and prints the answer.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;

use nix::sched::CloneFlags;
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use serde::Serialize;
use serde_json::Value;

use crate::env::{Command, Env, Invocation};
use crate::types::{CniVersion, NetConf, VersionInfo};
use crate::wire::{self, ExchangeError, PROTOCOL_VERSION, Request, Response};
use crate::{CniError, code};

/// The `skein` binary's entry point under a container runtime: reads the `CNI_*` environment and
/// stdin, prints the result or error on stdout, and exits 0 or 1 as the spec says.
pub fn plugin_main() -> ExitCode {
    let env = Env::from_process();
    let mut stdin = Vec::new();
    let (stdout, ok) = match io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run(&env, &stdin),
        Err(e) => {
            let error = CniError::Io(format!(
                "cannot read the network configuration from stdin: {e}"
            ));
            (render(&error.to_object(CniVersion::LATEST.as_str())), false)
        }
    };
    let mut out = io::stdout().lock();
    let printed = out.write_all(stdout.as_bytes()).and_then(|()| out.flush());
    if ok && printed.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One invocation without the process around it: the `CNI_*` variables and stdin in, what to
/// print on stdout and whether to exit 0 out. Errors are printed too (as the spec's error
/// object), so the string is empty only for a success without output.
pub fn run(env: &Env, stdin: &[u8]) -> (String, bool) {
    let version = requested_version(stdin);
    let command = match Command::from_env(env) {
        Ok(command) => command,
        Err(error) => return (render(&error.to_object(&version)), false),
    };
    if command == Command::Version {
        // VERSION needs no valid configuration: it is how a runtime finds out what to send.
        let requested = crate::types::decode_stdin(stdin).ok();
        let requested = requested
            .as_ref()
            .and_then(|v| v.get("cniVersion"))
            .and_then(Value::as_str);
        return (render(&VersionInfo::for_request(requested)), true);
    }
    match execute(command, env, stdin) {
        Ok(Response {
            error: Some(error), ..
        }) => (render(&error), false),
        Ok(Response {
            output: Some(output),
            ..
        }) => (render(&output), true),
        Ok(Response { .. }) => (String::new(), true),
        Err(error) => (render(&error.to_object(&version)), false),
    }
}

fn render(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("CNI output serializes");
    text.push('\n');
    text
}

/// stdin's `cniVersion` when skein speaks it, else the latest: the version errors are written in.
fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| CniVersion::parse(v.get("cniVersion")?.as_str()?).ok())
        .unwrap_or(CniVersion::LATEST)
        .as_str()
        .to_owned()
}

fn execute(command: Command, env: &Env, stdin: &[u8]) -> Result<Response, CniError> {
    let config = NetConf::parse(stdin)?;
    let call = Invocation::from_env(env, command)?;
    if command == Command::Add {
        // Checked here too, so a bad mapping is named even while the daemon is away.
        config.port_mappings()?;
    }
    let netns = match command {
        Command::Add | Command::Check => match open_netns(&call.netns)? {
            Netns::Open(fd) => Some(fd),
            Netns::Missing => {
                return Err(CniError::UnknownContainer(format!(
                    "the network namespace {} does not exist",
                    call.netns
                )));
            }
            Netns::NotANamespace => {
                return Err(CniError::env(
                    "CNI_NETNS",
                    format!("{} is not a namespace", call.netns),
                ));
            }
        },
        // DEL must succeed for a pod whose namespace is gone: nothing is left in it to remove.
        Command::Del => match open_netns(&call.netns)? {
            Netns::Open(fd) => Some(fd),
            Netns::Missing | Netns::NotANamespace => None,
        },
        Command::Status | Command::Gc | Command::Version => None,
    };
    let request = Request {
        v: PROTOCOL_VERSION,
        command,
        container_id: call.container_id.clone(),
        ifname: call.ifname.clone(),
        netns: call.netns.clone(),
        pod: call.pod.clone(),
        config: Value::Object(config.raw.clone()),
        netns_fd: netns.is_some(),
    };
    let socket = config.socket.display();
    match wire::exchange(&config.socket, &request, netns.as_ref().map(AsFd::as_fd)) {
        Ok(response) => Ok(response),
        Err(ExchangeError::Connect(e)) => {
            let down = matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            );
            match command {
                Command::Del => {
                    del_without_daemon(&call, netns, &format!("{socket}: {e}"))?;
                    Ok(Response::default())
                }
                Command::Status => Err(CniError::NotAvailable(format!(
                    "skein daemon is not running (cannot connect to {socket}: {e}); it cannot \
                     set up pods"
                ))),
                _ if down => Err(CniError::TryAgainLater(format!(
                    "skein daemon is not running (no one listens on {socket}); try again later"
                ))),
                _ => Err(CniError::Io(format!(
                    "cannot connect to the skein daemon on {socket}: {e}"
                ))),
            }
        }
        Err(ExchangeError::Transfer(e)) => Err(CniError::TryAgainLater(format!(
            "no answer from the skein daemon on {socket} ({e}); try again later"
        ))),
        Err(ExchangeError::Garbled(e)) => Err(CniError::Custom {
            code: code::PROTOCOL,
            msg: format!(
                "cannot read the skein daemon's answer on {socket} ({e}); plugin binary and \
                 daemon may come from different packages"
            ),
            details: String::new(),
        }),
    }
}

enum Netns {
    Open(OwnedFd),
    Missing,
    /// Something else is at the path, e.g. the empty file a namespace mount leaves behind when
    /// it is unmounted.
    NotANamespace,
}

fn open_netns(path: &str) -> Result<Netns, CniError> {
    if path.is_empty() {
        return Ok(Netns::Missing);
    }
    let io_error =
        |e: &dyn std::fmt::Display| CniError::Io(format!("cannot open CNI_NETNS {path}: {e}"));
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Netns::Missing),
        Err(e) => return Err(io_error(&e)),
    };
    let fs = fstatfs(&file).map_err(|e| io_error(&e))?;
    if fs.filesystem_type() != NSFS_MAGIC {
        return Ok(Netns::NotANamespace);
    }
    Ok(Netns::Open(file.into()))
}

/// `DEL` while the daemon is down: remove the pod's interface directly, so that a pod can be torn
/// down whatever state the daemon is in. The host end of a veth pair goes with it; the address
/// lease stays until the daemon's GC finds it unused.
fn del_without_daemon(
    call: &Invocation,
    netns: Option<OwnedFd>,
    why: &str,
) -> Result<(), CniError> {
    let Some(netns) = netns else {
        return Ok(());
    };
    match delete_link_in(&netns, &call.ifname) {
        Ok(deleted) => {
            // stderr reaches the runtime's log; stdout must stay empty for a DEL.
            if deleted {
                eprintln!(
                    "skein: daemon unreachable ({why}); removed {} in {} directly, its address \
                     is released by the daemon's next GC",
                    call.ifname, call.netns
                );
            }
            Ok(())
        }
        Err(e) => Err(CniError::Io(format!(
            "skein daemon unreachable ({why}), and removing {} in {} directly failed: {e}",
            call.ifname, call.netns
        ))),
    }
}

/// Deletes the link `ifname` inside `netns`; `Ok(false)` if there is none. Runs on a thread of
/// its own because entering a namespace moves the calling thread, and this one may be needed
/// afterwards; that thread ends right after.
fn delete_link_in(netns: &OwnedFd, ifname: &str) -> io::Result<bool> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(netns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                // Built after setns: the netlink socket belongs to the namespace of the thread
                // that opens it, and a current-thread runtime opens it on this one.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()?;
                runtime.block_on(delete_link(ifname))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the link-deleting thread panicked")))
    })
}

async fn delete_link(ifname: &str) -> io::Result<bool> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    // Deleting by name in one request: looking the index up first would race with the runtime.
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(ifname.to_owned()));
    match handle.link().del_with_message(message).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code().abs() == nix::errno::Errno::ENODEV as i32 =>
        {
            Ok(false)
        }
        Err(e) => Err(io::Error::other(e)),
    }
}
