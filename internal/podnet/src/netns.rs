//! Work inside another network namespace, on a thread of its own that entered it: `setns`
//! changes the calling thread, so the daemon's threads never move.

use std::os::fd::OwnedFd;

use rtnetlink::Handle;

use crate::PodNetError;

/// Runs `work` with a netlink handle inside the network namespace `netns`, on a thread of its
/// own: `setns` changes the calling thread, so the daemon's threads never move.
pub async fn in_netns<T, F, Fut>(netns: OwnedFd, work: F) -> Result<T, PodNetError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, PodNetError>>,
{
    on_own_thread(Some(netns), work).await
}

/// Runs `work` with a netlink handle on a thread of its own, inside `netns` when given.
pub(crate) async fn on_own_thread<T, F, Fut>(
    netns: Option<OwnedFd>,
    work: F,
) -> Result<T, PodNetError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, PodNetError>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("skein-netns".into())
        .spawn(move || {
            let result = (|| {
                if let Some(netns) = &netns {
                    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |e| PodNetError::Io {
                            action: "entering the pod's network namespace".into(),
                            source: e.into(),
                        },
                    )?;
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| PodNetError::Io {
                        action: "starting a runtime".into(),
                        source,
                    })?;
                runtime.block_on(async move {
                    let (connection, handle, _) =
                        rtnetlink::new_connection().map_err(|source| PodNetError::Io {
                            action: "opening a netlink socket in the pod's namespace".into(),
                            source,
                        })?;
                    tokio::spawn(connection);
                    work(handle).await
                })
            })();
            let _ = tx.send(result);
        })
        .map_err(|source| PodNetError::Io {
            action: "starting a thread".into(),
            source,
        })?;
    rx.await
        .map_err(|_| PodNetError::Other("the namespace thread died".into()))?
}
