//! The daemon's control socket, `control.sock` in the state directory (mode 0600 in a 0700
//! directory: root only), through which the command line asks the running daemon to act.
//!
//! ```text
//! skein  -> daemon  rotate-key\n
//! daemon -> skein   {"ok":"…what happened…"}\n  |  {"error":"…"}\n
//! ```
//!
//! A daemon started with `SKEIN_TEST_FAULTS=1` also takes `fault panic <part>`, which makes that
//! part's current run panic: the tests' way to show that a crashed part leaves nothing behind.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::overlay_part::RotateRequest;
use crate::{Part, PartError, PartResult};

/// A test's request to make a part panic, answered with a line for the caller.
#[derive(Debug)]
pub struct Fault {
    pub part: String,
    pub reply: oneshot::Sender<Result<String, String>>,
}

pub const SOCKET_NAME: &str = "control.sock";

/// The control socket of the daemon whose state directory is `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// Serves the control socket until cancelled.
pub async fn serve(
    state_dir: PathBuf,
    rotations: mpsc::Sender<RotateRequest>,
    faults: Option<mpsc::Sender<Fault>>,
    part: Part,
) -> PartResult {
    let (handle, cancel) = (&part.handle, &part.cancel);
    let path = socket_path(&state_dir);
    // The store's lock guarantees no other daemon uses this directory: a socket here is stale.
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .map_err(PartError::io(format!("{}: cannot listen", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(PartError::io(path.display().to_string()))?;
    handle.ok(format!("listening on {}", path.display()));
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => return Err(PartError::io(path.display().to_string())(e)),
            },
        };
        let rotations = rotations.clone();
        let faults = faults.clone();
        part.spawn("control connection", async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read);
            if reader.read_line(&mut line).await.is_err() {
                return Ok::<(), String>(());
            }
            let answer = match line.trim() {
                "rotate-key" => {
                    let (tx, rx) = oneshot::channel();
                    if rotations.send(tx).await.is_err() {
                        Err("the overlay is not running".to_string())
                    } else {
                        rx.await
                            .unwrap_or_else(|_| Err("the overlay restarted; try again".into()))
                    }
                }
                other => match (other.strip_prefix("fault panic "), &faults) {
                    (Some(name), Some(faults)) => {
                        let (tx, rx) = oneshot::channel();
                        let fault = Fault {
                            part: name.trim().to_string(),
                            reply: tx,
                        };
                        match faults.send(fault).await {
                            Ok(()) => rx.await.unwrap_or_else(|_| Err("no answer".into())),
                            Err(_) => Err("the daemon is stopping".into()),
                        }
                    }
                    _ => Err(format!("unknown command {other:?}; known: rotate-key")),
                },
            };
            let json = match answer {
                Ok(m) => serde_json::json!({ "ok": m }),
                Err(e) => serde_json::json!({ "error": e }),
            };
            let _ = write.write_all(format!("{json}\n").as_bytes()).await;
            Ok(())
        });
    }
}

/// Sends `command` to the daemon with state directory `state_dir`; its answer, or why not.
pub fn request(state_dir: &Path, command: &str) -> Result<String, String> {
    let path = socket_path(state_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        format!(
            "cannot reach the daemon at {} ({e}); is skein running with this configuration?",
            path.display()
        )
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("{}: no answer: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|_| format!("the daemon answered {line:?}"))?;
    match (v["ok"].as_str(), v["error"].as_str()) {
        (Some(ok), _) => Ok(ok.to_string()),
        (_, Some(e)) => Err(e.to_string()),
        _ => Err(format!("the daemon answered {line:?}")),
    }
}
