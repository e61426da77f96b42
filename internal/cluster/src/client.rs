//! Building the Kubernetes client, and keeping its client certificate current: when the
//! kubeconfig names certificate and key files (a kubelet's, as on k3s, which the kubelet or k3s
//! rotates), the client re-reads them when they change, so skein goes on with the new
//! certificate without a restart.
//!
//! How: the [`kube::Client`] handed out sends every request through the client built from the
//! files as they were last seen. At most once per [`CHECK_EVERY`] a request looks at the files'
//! metadata; when it changed, a new inner client (new TLS configuration, new connection pool) is
//! built and later requests use it. Requests already running (a watch) finish on the old one,
//! whose certificate is still valid: rotation happens well before expiry. A file caught half
//! written fails to load; the old client stays in use and the next check tries again.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use kube::client::Body;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{ClusterError, error_chain};

/// How often the certificate files are looked at, at most: rotation is rare and its old
/// certificate stays valid for a long while, so a second's delay costs nothing, and a burst of
/// requests costs no more than one look.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A client for `config`. Connecting happens on the first request, so this fails only on a
/// configuration the TLS stack cannot use. A client certificate read from files is re-read when
/// the files change.
pub fn client(config: kube::Config) -> Result<kube::Client, ClusterError> {
    match CertFiles::of(&config) {
        Some(files) => rotating(config, files, CHECK_EVERY),
        None => build(config),
    }
}

fn build(config: kube::Config) -> Result<kube::Client, ClusterError> {
    kube::Client::try_from(config).map_err(|source| ClusterError::Client { source })
}

pub(crate) fn rotating(
    config: kube::Config,
    files: CertFiles,
    check_every: Duration,
) -> Result<kube::Client, ClusterError> {
    // The stamp is taken before the files are read: a change in between is then seen as one
    // at the first check, never missed.
    let stamp = files.stamp();
    let default_namespace = config.default_namespace.clone();
    let inner = build(config.clone())?;
    let service = Rotating {
        shared: Arc::new(Shared {
            config,
            files,
            check_every,
            current: Mutex::new(Current {
                stamp,
                checked: Instant::now(),
                client: inner,
            }),
        }),
    };
    Ok(kube::Client::new(service, default_namespace))
}

/// The client certificate and key files a kubeconfig names. Inline data (`*-data`) takes
/// precedence in kube, as in kubectl; such a kubeconfig has nothing to re-read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    pub fn of(config: &kube::Config) -> Option<Self> {
        let auth = &config.auth_info;
        if auth.client_certificate_data.is_some() || auth.client_key_data.is_some() {
            return None;
        }
        Some(Self {
            cert: PathBuf::from(auth.client_certificate.as_ref()?),
            key: PathBuf::from(auth.client_key.as_ref()?),
        })
    }

    /// What the files look like now, through symlinks (the kubelet's
    /// `kubelet-client-current.pem` is one, re-pointed at each rotation).
    fn stamp(&self) -> Stamp {
        Stamp {
            cert: FileStamp::of(&self.cert),
            key: FileStamp::of(&self.key),
        }
    }
}

/// Enough of a file's metadata to tell that it was rewritten or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    device: u64,
}

impl FileStamp {
    /// `None` for a file that cannot be looked at now (mid-rename, say).
    fn of(path: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
            device: meta.dev(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    cert: Option<FileStamp>,
    key: Option<FileStamp>,
}

struct Shared {
    /// The configuration as loaded; building a client from it reads the certificate files anew.
    config: kube::Config,
    files: CertFiles,
    check_every: Duration,
    /// Held across a rebuild, so concurrent requests wait for one rebuild rather than race.
    current: Mutex<Current>,
}

struct Current {
    /// The files as they were when `client` was built from them.
    stamp: Stamp,
    checked: Instant,
    client: kube::Client,
}

impl Shared {
    /// The client for the next request: the current one, rebuilt first if the files changed.
    async fn client(self: &Arc<Self>) -> kube::Client {
        let mut current = self.current.lock().await;
        if current.checked.elapsed() < self.check_every {
            return current.client.clone();
        }
        current.checked = Instant::now();
        let files = self.files.clone();
        let Ok(stamp) = tokio::task::spawn_blocking(move || files.stamp()).await else {
            return current.client.clone();
        };
        if stamp == current.stamp {
            return current.client.clone();
        }
        let config = self.config.clone();
        match tokio::task::spawn_blocking(move || build(config)).await {
            Ok(Ok(client)) => {
                tracing::info!(
                    certificate = %self.files.cert.display(),
                    "reloaded the client certificate: its files changed"
                );
                current.stamp = stamp;
                current.client = client;
            }
            Ok(Err(error)) => {
                // Not recorded as seen: the next check tries again, when the rotation that is
                // under way has finished writing.
                tracing::warn!(
                    certificate = %self.files.cert.display(),
                    "the client certificate files changed but cannot be loaded; keeping the \
                     previous certificate: {}",
                    error_chain(&error)
                );
            }
            Err(join) => tracing::warn!("reloading the client certificate failed: {join}"),
        }
        current.client.clone()
    }
}

/// The tower service under the handed-out client: each request goes through the current inner
/// client. kube passes the inner client's errors through unchanged.
#[derive(Clone)]
struct Rotating {
    shared: Arc<Shared>,
}

impl tower_service::Service<http::Request<Body>> for Rotating {
    type Response = http::Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The inner client queues requests itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move { shared.client().await.send(request).await })
    }
}

#[cfg(test)]
mod tests;
