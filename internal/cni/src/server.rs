//! The daemon's side of the socket: [`bind`] it, [`serve`] it, and implement [`Handler`] to do
//! the actual networking. Each request is counted by verb and result and its latency observed
//! ([`RequestMetrics`]).

use std::fs;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::Value;
use skein_metrics::{Counter, Family, Histogram, Metrics};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::env::{Command, PodIdentity, check_container_id, check_ifname};
use crate::types::{AddResult, Attachment, CniVersion, NetConf, VersionInfo};
use crate::wire::{self, PROTOCOL_VERSION, ReadError, Request, Response};
use crate::{CniError, PortMapping, code};

/// How long a connected plugin may take to send its request; it has it ready when it connects.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the daemon tries to hand over an answer to a plugin that stopped reading.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (out of descriptors, say) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

type VerbResult = [(&'static str, &'static str); 2];
type Verb = [(&'static str, &'static str); 1];
type Durations = Family<Verb, Histogram, fn() -> Histogram>;

/// The socket's metrics: `skein_cni_requests_total{verb,result}` (result `ok` or `error`; verb
/// `unknown` for a request that could not be read) and `skein_cni_request_duration_seconds{verb}`,
/// from a whole request read to its answer decided.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    requests: Family<VerbResult, Counter>,
    durations: Durations,
}

impl RequestMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            requests: metrics.metric(
                "skein_cni_requests",
                "CNI requests answered on the daemon's socket, by verb and result.",
                Family::default,
            ),
            durations: metrics.metric(
                "skein_cni_request_duration_seconds",
                "Time from a CNI request read to its answer, by verb.",
                || {
                    Durations::new_with_constructor(|| {
                        Histogram::new(skein_metrics::latency_buckets())
                    })
                },
            ),
        }
    }

    fn observe(&self, verb: &'static str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.requests
            .get_or_create(&[("verb", verb), ("result", result)])
            .inc();
        self.durations
            .get_or_create(&[("verb", verb)])
            .observe(took.as_secs_f64());
    }
}

/// `ADD`: attach the pod's interface.
#[derive(Debug)]
pub struct AddRequest {
    pub container_id: String,
    pub ifname: String,
    /// The pod's network namespace, opened by the plugin.
    pub netns: OwnedFd,
    /// `CNI_NETNS` as the runtime named it: for logs and the result's `sandbox`; the daemon may
    /// not be able to open it.
    pub netns_path: String,
    pub pod: PodIdentity,
    /// `runtimeConfig.portMappings`, checked: the hostPorts to forward to the pod.
    pub port_mappings: Vec<PortMapping>,
    /// The network configuration; its `cni_version` is the version the result is written in.
    pub config: NetConf,
}

/// `DEL`: release whatever the attachment holds. Must succeed when things are already gone.
#[derive(Debug)]
pub struct DelRequest {
    pub container_id: String,
    pub ifname: String,
    /// `None` when the runtime sent no namespace or it is already gone.
    pub netns: Option<OwnedFd>,
    pub netns_path: String,
    pub pod: PodIdentity,
    pub config: NetConf,
}

/// `CHECK`: is the attachment still as `ADD` left it?
#[derive(Debug)]
pub struct CheckRequest {
    pub container_id: String,
    pub ifname: String,
    pub netns: OwnedFd,
    pub netns_path: String,
    pub pod: PodIdentity,
    /// `prevResult` read back; the runtime must send it with `CHECK`, but may not.
    pub prev_result: Option<AddResult>,
    pub config: NetConf,
}

/// `GC`: release everything not held by one of `valid_attachments`.
#[derive(Debug)]
pub struct GcRequest {
    pub valid_attachments: Vec<Attachment>,
    pub config: NetConf,
}

/// The daemon's networking, as the CNI commands ask for it. Requests arrive concurrently (the
/// runtime serialises the commands of one container, not of different ones).
///
/// Implement the methods with `async fn`; their futures must be `Send`.
pub trait Handler: Send + Sync + 'static {
    fn add(&self, request: AddRequest) -> impl Future<Output = Result<AddResult, CniError>> + Send;
    fn del(&self, request: DelRequest) -> impl Future<Output = Result<(), CniError>> + Send;
    fn check(&self, request: CheckRequest) -> impl Future<Output = Result<(), CniError>> + Send;
    /// Can the daemon serve `ADD` now? Code 50 or 51 when not.
    fn status(&self) -> impl Future<Output = Result<(), CniError>> + Send;
    fn gc(&self, request: GcRequest) -> impl Future<Output = Result<(), CniError>> + Send;
}

/// Binds the daemon's socket at `path`: creates the parent directory, replaces a stale socket
/// left by a daemon that died, and refuses to take over one that another process still answers
/// on, or a path that is not a socket. The socket is made 0600 before it appears at `path` (it
/// is bound under a temporary name and renamed), so there is no moment when others may connect.
///
/// Must be called within a Tokio runtime.
pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
    let path = path.as_ref();
    let context = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("{what}: {e}"));
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        ));
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(|e| context(e, &format!("cannot create {}", parent.display())))?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another process already serves {}", path.display()),
                ));
            }
            // Stale: nobody answers. The rename below replaces it.
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not replacing it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(context(e, &format!("cannot inspect {}", path.display()))),
    }
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(name);
    staging_name.push(format!(".{}", std::process::id()));
    let staging = path.with_file_name(staging_name);
    // Left behind only by a crash of an earlier process that had this same pid.
    let _ = fs::remove_file(&staging);
    let listener = std::os::unix::net::UnixListener::bind(&staging)
        .map_err(|e| context(e, &format!("cannot bind {}", staging.display())))?;
    let placed = fs::set_permissions(&staging, fs::Permissions::from_mode(0o600))
        .and_then(|()| fs::rename(&staging, path));
    if let Err(e) = placed {
        let _ = fs::remove_file(&staging);
        return Err(context(
            e,
            &format!("cannot place socket at {}", path.display()),
        ));
    }
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// Serves CNI requests on `listener` until `cancel` fires, each connection in its own task,
/// counting them in `metrics`. On cancellation it stops accepting and returns once the requests
/// in flight are answered.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    metrics: RequestMetrics,
    cancel: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                log_join(joined);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, Arc::clone(&handler), metrics.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cni socket: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    while let Some(joined) = connections.join_next().await {
        log_join(joined);
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        tracing::error!(error = %e, "cni socket: connection task failed");
    }
}

async fn connection<H: Handler>(mut stream: UnixStream, handler: Arc<H>, metrics: RequestMetrics) {
    let read = tokio::time::timeout(REQUEST_TIMEOUT, wire::read_request(&stream)).await;
    let started = Instant::now();
    let mut verb = "unknown";
    let response = match read {
        Err(_) => {
            tracing::debug!("cni socket: no request within {REQUEST_TIMEOUT:?}; closing");
            return;
        }
        Ok(Err(ReadError::Incomplete)) => {
            tracing::debug!("cni socket: connection closed before a whole request arrived");
            return;
        }
        Ok(Err(e)) => error_response(CniVersion::LATEST.as_str(), &read_error(e)),
        Ok(Ok((line, fds))) => {
            verb = requested_verb(&line);
            AssertUnwindSafe(answer(&*handler, &line, fds))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    // The panic itself is already in the log, printed by the panic hook.
                    let error = CniError::Custom {
                        code: code::INTERNAL,
                        msg: "the skein daemon failed while serving this request (a bug; see \
                              the daemon's log)"
                            .into(),
                        details: String::new(),
                    };
                    error_response(&requested_version(&line), &error)
                })
        }
    };
    metrics.observe(verb, response.error.is_none(), started.elapsed());
    match tokio::time::timeout(ANSWER_TIMEOUT, wire::write_response(&mut stream, &response)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "cni socket: cannot send the answer"),
        Err(_) => tracing::debug!("cni socket: the plugin did not take its answer; dropping it"),
    }
}

fn read_error(e: ReadError) -> CniError {
    match e {
        ReadError::Io(e) => CniError::Io(format!("cannot read the plugin's request: {e}")),
        ReadError::Incomplete => CniError::Io("the plugin's request ended early".into()),
        ReadError::TooLarge => CniError::Decoding {
            what: "the plugin's request".into(),
            problem: format!("larger than {} bytes", wire::MAX_MESSAGE),
        },
        ReadError::TooManyFds => CniError::Decoding {
            what: "the plugin's request".into(),
            problem: "too many file descriptors came with it".into(),
        },
    }
}

/// The request's `cniVersion` when it is one skein speaks, for writing an error in it; else the
/// latest.
fn requested_version(line: &[u8]) -> String {
    serde_json::from_slice::<Value>(line)
        .ok()
        .and_then(|v| {
            let version = v.get("config")?.get("cniVersion")?.as_str()?;
            CniVersion::parse(version).ok()
        })
        .unwrap_or(CniVersion::LATEST)
        .as_str()
        .to_owned()
}

/// The request's command as a metric label (`unknown` when the line names none skein knows).
pub(crate) fn requested_verb(line: &[u8]) -> &'static str {
    serde_json::from_slice::<Value>(line)
        .ok()
        .and_then(|v| serde_json::from_value::<Command>(v.get("command")?.clone()).ok())
        .map_or("unknown", |c| match c {
            Command::Add => "add",
            Command::Del => "del",
            Command::Check => "check",
            Command::Status => "status",
            Command::Gc => "gc",
            Command::Version => "version",
        })
}

fn error_response(version: &str, error: &CniError) -> Response {
    Response {
        output: None,
        error: Some(error.to_object(version)),
    }
}

/// Decodes one request, hands it to the handler, and writes the outcome in the request's
/// `cniVersion`.
pub(crate) async fn answer<H: Handler>(handler: &H, line: &[u8], fds: Vec<OwnedFd>) -> Response {
    let version = requested_version(line);
    let request = match decode(line, fds) {
        Ok(request) => request,
        Err(error) => return error_response(&version, &error),
    };
    let command = request.command();
    let outcome = match request {
        Decoded::Add(request) => {
            let result_version = request.config.cni_version;
            handler.add(request).await.and_then(|result| {
                result.check().map_err(|problem| CniError::Custom {
                    code: code::INTERNAL,
                    msg: format!("the skein daemon produced an invalid result: {problem}"),
                    details: String::new(),
                })?;
                Ok(Some(result.to_json(result_version)))
            })
        }
        Decoded::Del(request) => handler.del(request).await.map(|()| None),
        Decoded::Check(request) => handler.check(request).await.map(|()| None),
        Decoded::Status => handler.status().await.map(|()| None),
        Decoded::Gc(request) => handler.gc(request).await.map(|()| None),
        Decoded::Version(info) => Ok(Some(
            serde_json::to_value(info).expect("version info serializes"),
        )),
    };
    match outcome {
        Ok(output) => Response {
            output,
            error: None,
        },
        Err(error) => {
            tracing::debug!(
                command = command.as_str(),
                code = error.code(),
                %error,
                "cni request failed"
            );
            error_response(&version, &error)
        }
    }
}

/// A request checked and turned into what the handler takes.
#[derive(Debug)]
enum Decoded {
    Add(AddRequest),
    Del(DelRequest),
    Check(CheckRequest),
    Status,
    Gc(GcRequest),
    Version(VersionInfo),
}

impl Decoded {
    fn command(&self) -> Command {
        match self {
            Self::Add(_) => Command::Add,
            Self::Del(_) => Command::Del,
            Self::Check(_) => Command::Check,
            Self::Status => Command::Status,
            Self::Gc(_) => Command::Gc,
            Self::Version(_) => Command::Version,
        }
    }
}

/// Checks a request as the plugin did (the daemon does not trust that the binary in the CNI
/// directory is its own), and pairs it with the descriptor that came with it.
fn decode(line: &[u8], fds: Vec<OwnedFd>) -> Result<Decoded, CniError> {
    let request: Request = serde_json::from_slice(line).map_err(|e| CniError::Decoding {
        what: "the plugin's request".into(),
        problem: e.to_string(),
    })?;
    if request.v != PROTOCOL_VERSION {
        return Err(CniError::Custom {
            code: code::PROTOCOL,
            msg: format!(
                "the skein plugin binary speaks socket protocol {} but the daemon speaks {}; \
                 restart the daemon so both come from the same package",
                request.v, PROTOCOL_VERSION
            ),
            details: String::new(),
        });
    }
    let config = NetConf::from_value(request.config)?;
    let mut fds = fds.into_iter();
    let netns = fds.next();
    if fds.next().is_some() {
        return Err(CniError::Decoding {
            what: "the plugin's request".into(),
            problem: "more than one file descriptor came with it".into(),
        });
    }
    if request.netns_fd && netns.is_none() {
        return Err(CniError::Io(
            "the network namespace's descriptor was lost on its way to the daemon".into(),
        ));
    }
    let attachment = || -> Result<(), CniError> {
        check_container_id(&request.container_id)
            .map_err(|problem| CniError::env("CNI_CONTAINERID", problem))?;
        check_ifname(&request.ifname).map_err(|problem| CniError::env("CNI_IFNAME", problem))
    };
    let required = |netns: Option<OwnedFd>| {
        netns.ok_or_else(|| {
            CniError::env(
                "CNI_NETNS",
                format!(
                    "no network namespace came with {}",
                    request.command.as_str()
                ),
            )
        })
    };
    match request.command {
        Command::Add => {
            attachment()?;
            let port_mappings = config.port_mappings()?;
            let netns = required(netns)?;
            Ok(Decoded::Add(AddRequest {
                container_id: request.container_id,
                ifname: request.ifname,
                netns,
                netns_path: request.netns,
                pod: request.pod,
                port_mappings,
                config,
            }))
        }
        Command::Check => {
            attachment()?;
            let netns = required(netns)?;
            let prev_result = config
                .prev_result
                .as_ref()
                .map(AddResult::from_json)
                .transpose()
                .map_err(|e| CniError::config("prevResult", format!("is not a CNI result: {e}")))?;
            Ok(Decoded::Check(CheckRequest {
                container_id: request.container_id,
                ifname: request.ifname,
                netns,
                netns_path: request.netns,
                pod: request.pod,
                prev_result,
                config,
            }))
        }
        Command::Del => {
            attachment()?;
            Ok(Decoded::Del(DelRequest {
                container_id: request.container_id,
                ifname: request.ifname,
                netns,
                netns_path: request.netns,
                pod: request.pod,
                config,
            }))
        }
        Command::Status => Ok(Decoded::Status),
        Command::Gc => {
            // Without the list every lease would look stale; refusing is the safe reading.
            let valid_attachments = config.valid_attachments.clone().ok_or_else(|| {
                CniError::config(
                    "cni.dev/valid-attachments",
                    "is missing; GC needs the list of attachments still in use",
                )
            })?;
            Ok(Decoded::Gc(GcRequest {
                valid_attachments,
                config,
            }))
        }
        // The plugin answers VERSION itself; a daemon asked anyway answers the same.
        Command::Version => Ok(Decoded::Version(VersionInfo::for_request(Some(
            config.cni_version.as_str(),
        )))),
    }
}
