//! Support for black-box tests: find the built `skein`, run daemons on temporary state with
//! a free port, wait for conditions with a deadline (never a bare sleep), and decide whether a
//! test that needs root or an external tool runs or skips. The polling loop, the status page
//! client and the free port are the lab's own (`skein_lab`), shared rather than copied.

pub mod lab;

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

pub use skein_lab::page::{http_get, part};
use skein_lab::wait::{WaitError, poll};

pub use skein_lab::skip::REQUIRE_ALL;

/// The `skein` binary of this build (target/<profile>/skein, next to the test's deps/ dir).
pub fn skein_bin() -> PathBuf {
    built_bin("skein")
}

/// A binary of this workspace, built next to the test executables (target/<profile>/).
pub fn built_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build --bins)",
        bin.display()
    );
    bin
}

pub use skein_lab::skip::{is_root, require};

/// The path of `program` on PATH, if it is there.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Polls `check` until it returns `Some`, or panics naming `what` after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_explained(what, deadline, String::new, check)
}

/// Like [`wait_for`], adding `context()` (logs, say) to the timeout's message. A panic inside
/// `check` is the check's own failure, not a timeout: it propagates with its message at once.
pub fn wait_explained<T>(
    what: &str,
    deadline: Duration,
    context: impl FnOnce() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    match poll(deadline, Duration::from_millis(25), || {
        Ok::<_, Infallible>(check())
    }) {
        Ok(v) => v,
        Err(WaitError::TimedOut(after)) => {
            panic!(
                "timed out after {after:?} waiting for {what}\n{}",
                context()
            )
        }
        Err(WaitError::Failed(never)) => match never {},
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    skein_lab::free_port().expect("free port")
}

/// A `skein run` on a temporary state directory and config, killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub addr: SocketAddr,
    child: Option<Child>,
}

/// A temporary directory for one test's daemons, with a config pointing into it.
#[derive(Debug)]
pub struct Sandbox {
    pub tmp: tempfile::TempDir,
    pub config: PathBuf,
    pub addr: SocketAddr,
}

impl Sandbox {
    /// A config with `node.name = node`, state under the sandbox, a free page port, and
    /// `extra` TOML appended (sections not already used above).
    pub fn new(node: &str, extra: &str) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("skein-test-")
            .tempdir()
            .expect("tmp");
        let port = free_port();
        let config = tmp.path().join("config.toml");
        let text = format!(
            "[node]\nname = \"{node}\"\n\n[store]\npath = \"{}\"\n\n[dashboard]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [cni]\nsocket = \"{dir}/cni.sock\"\nconf_dir = \"{dir}/net.d\"\nbin_dir = \"{dir}/bin\"\n\n{extra}",
            tmp.path().join("state").join("state.db").display(),
            dir = tmp.path().display()
        );
        std::fs::write(&config, text).expect("write config");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Self { tmp, config, addr }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    /// Starts `skein run` on this sandbox; stderr goes to `<sandbox>/daemon-N.log`.
    pub fn start(&self) -> Daemon {
        self.start_with(&[])
    }

    pub fn start_with(&self, env: &[(&str, &str)]) -> Daemon {
        let n = std::fs::read_dir(self.tmp.path()).map_or(0, |d| d.count());
        let log = self.tmp.path().join(format!("daemon-{n}.log"));
        let child = Command::new(skein_bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn skein run");
        Daemon {
            dir: self.tmp.path().to_path_buf(),
            config: self.config.clone(),
            addr: self.addr,
            child: Some(child),
        }
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until `/readyz` answers 200, failing early with the daemon's log if it exits.
    pub fn wait_ready(&mut self) {
        let addr = self.addr;
        wait_for("the daemon to be ready", Duration::from_secs(20), || {
            if let Some(status) = self.try_exit() {
                panic!(
                    "daemon exited with {status} before it was ready:\n{}",
                    self.logs()
                );
            }
            http_get(addr, "/readyz")
                .filter(|(code, _)| *code == 200)
                .map(drop)
        });
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = http_get(self.addr, "/api/v1/status").expect("status API answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("status is not JSON ({e}): {body}"))
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -s {signal} failed");
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().expect("try_wait")
    }

    /// Waits for the process to end, panicking after `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let status = wait_for("the daemon to exit", deadline, || self.try_exit());
        self.child = None;
        status
    }

    /// Everything the daemons of this sandbox logged so far.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
        {
            out.push_str(&format!(
                "--- {}\n{}",
                p.display(),
                std::fs::read_to_string(p).unwrap_or_default()
            ));
        }
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `skein` with `args` and `env`, returning (exit success, stdout, stderr).
pub fn skein(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(skein_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run skein");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Loads `url` in headless Chromium (Debian's), lets its scripts run, and returns the DOM.
pub fn rendered_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            // Without these Chromium calls home, and this machine has no network.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=390,844",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Debian's Python, which has Debian's `python3-prometheus-client` (a Python on PATH may not).
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// Whether [`prometheus_families`] can run here.
pub fn has_prometheus_parser() -> bool {
    Command::new(DEBIAN_PYTHON)
        .args(["-c", "import prometheus_client.parser"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `text` parsed by the Prometheus project's own Python parser
/// (`prometheus_client.parser.text_string_to_metric_families`): every family as
/// `{"name", "type", "samples": [{"name", "labels", "value"}]}`. Panics when it does not parse.
pub fn prometheus_families(text: &str) -> Vec<serde_json::Value> {
    const PARSE: &str = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = [{'name': f.name, 'type': f.type, 'documentation': f.documentation,\n\
                'samples': [{'name': s.name, 'labels': s.labels, 'value': s.value} for s in f.samples]}\n\
               for f in text_string_to_metric_families(sys.stdin.read())]\n\
        json.dump(out, sys.stdout)\n";
    let mut child = Command::new(DEBIAN_PYTHON)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run Debian's python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser's JSON")
}

#[cfg(test)]
mod tests;
