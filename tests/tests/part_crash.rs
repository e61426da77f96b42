//! A part that panics takes its tasks down with it: in a one-node lab whose daemon runs with the
//! test-only fault hook, the `cni` part is made to panic while its socket server runs; after the
//! restart exactly one listener serves the socket (the old part's is gone), the part is ok after
//! one restart, and ADDs succeed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use skein_e2e::lab::{self, Lab};

fn cni_part(lab: &Lab) -> serde_json::Value {
    lab.node_status("node-1")
        .map(|s| skein_e2e::part(&s, "cni").clone())
        .unwrap_or(serde_json::Value::Null)
}

/// Listening unix sockets of the CNI socket `path` in `netns` (from the namespace's
/// /proc/net/unix, which names the path a socket was bound at: the daemon binds a temporary
/// `.cni.sock.<pid>` beside it and renames it into place).
fn listeners(lab: &Lab, netns: &str, path: &str) -> usize {
    let (_, table) = lab.exec(netns, &["cat", "/proc/net/unix"]);
    let path = std::path::Path::new(path);
    let dir = path.parent().expect("dir").display().to_string();
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    table
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = listening.
            f.len() >= 8
                && f[3] == "00010000"
                && (f[7] == path.display().to_string()
                    || f[7].starts_with(&format!("{dir}/.{name}.")))
        })
        .count()
}

fn control(state_dir: &str, command: &str) -> serde_json::Value {
    let mut stream =
        UnixStream::connect(format!("{state_dir}/control.sock")).expect("control socket");
    stream
        .write_all(format!("{command}\n").as_bytes())
        .expect("send");
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("answer");
    serde_json::from_str(&line).expect("JSON answer")
}

#[test]
fn a_panicking_cni_part_leaves_no_task_behind_and_serves_again() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(1, &[]);
    // The node's daemon again, this time with the fault hook switched on.
    lab.must(&["stop", "node-1"]);
    let started = Command::new(skein_e2e::built_bin("skein-lab"))
        .args(["--name", &lab.name, "start", "node-1"])
        .env("SKEIN_TEST_FAULTS", "1")
        .status()
        .expect("skein-lab start");
    assert!(started.success());
    lab.wait("the CNI part to be ready", Duration::from_secs(60), || {
        (cni_part(&lab)["state"] == "ok").then_some(())
    });
    let status = lab.node_status("node-1").expect("status");
    let state_path = status["state_path"].as_str().expect("state path");
    let state_dir = std::path::Path::new(state_path)
        .parent()
        .expect("state dir")
        .display()
        .to_string();
    let conflist = lab.cni_config("node-1", "1.1.0");
    let socket = conflist["socket"]
        .as_str()
        .expect("socket in the conflist")
        .to_string();
    let netns = lab.netns("node-1");
    assert_eq!(
        listeners(&lab, &netns, &socket),
        1,
        "one server before the fault"
    );
    let restarts = cni_part(&lab)["restarts"].as_u64().unwrap_or(0);

    let answer = control(&state_dir, "fault panic cni");
    assert!(answer["ok"].is_string(), "{answer}");

    let p = lab.wait(
        "the CNI part to be back after its panic",
        Duration::from_secs(30),
        || {
            let p = cni_part(&lab);
            (p["restarts"].as_u64() == Some(restarts + 1) && p["state"] == "ok").then_some(p)
        },
    );
    assert!(
        p["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("fault injected"),
        "{p}"
    );
    assert_eq!(
        listeners(&lab, &netns, &socket),
        1,
        "the old part's server is gone, the new part's serves"
    );

    // ADDs succeed on the new part.
    for n in 1..=3 {
        let name = lab.extra_netns(&format!("c{n}"));
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .expect("ip")
                .success()
        );
        let (ok, result) = lab.cni(
            "node-1",
            "ADD",
            &format!("{n:064x}"),
            &format!("/run/netns/{name}"),
            "1.1.0",
        );
        assert!(ok, "ADD {n} after the restart: {result}");
        assert!(result["ips"][0]["address"].is_string(), "{result}");
    }
    // Still one restart: the new part did not fail to bind and loop.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cni_part(&lab)["restarts"].as_u64(), Some(restarts + 1));

    // Without the hook, the command does not exist.
    lab.must(&["stop", "node-1"]);
    lab.must(&["start", "node-1"]);
    lab.wait(
        "the daemon to answer again",
        Duration::from_secs(60),
        || (cni_part(&lab)["state"] == "ok").then_some(()),
    );
    let answer = control(&state_dir, "fault panic cni");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown command"),
        "{answer}"
    );
}
