//! A running container's interface MTU, changed in place. Docker sets it once, from the
//! network's option, when the container joins the network; when the mesh's MTU changes
//! later (the underlay's did), the agent sets the container's end of its veth pair (inside
//! the container's network namespace) and the host's end (the bridge port) to the new one.
//! Lowering sets the container's end first and raising the host's end first, so no frame
//! is ever bigger than the end that receives it accepts (a veth drops those).

use std::{fs::File, io, os::fd::AsRawFd as _, path::PathBuf};

use crate::mesh::link::{Interface, LinkError, Netlink};

use super::Engine;

/// Why a container's MTU could not be set.
#[derive(Debug, thiserror::Error)]
pub enum MtuError {
    #[error("inspecting container {id}: {source}")]
    Engine {
        id: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("container {id} is not running")]
    NotRunning { id: String },
    #[error("entering the network namespace {path}: {source}")]
    Namespace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("in container {id}'s network namespace: {source}")]
    Inside {
        id: String,
        #[source]
        source: Box<LinkError>,
    },
    #[error(transparent)]
    Host(#[from] Box<LinkError>),
}

/// Gives container `id`'s interfaces (but loopback) and their host ends `mtu` bytes where
/// they differ. Returns how many of the container's interfaces changed (0: it had the MTU
/// already).
pub async fn set(engine: &Engine, host: &Netlink, id: &str, mtu: u32) -> Result<usize, MtuError> {
    let pid = engine
        .main_pid(id)
        .await
        .map_err(|source| MtuError::Engine {
            id: id.into(),
            source,
        })?
        .ok_or_else(|| MtuError::NotRunning { id: id.into() })?;
    let namespace = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let inside: Vec<Interface> = in_namespace(&namespace, id, async move |netlink| {
        Ok(netlink
            .interfaces()
            .await?
            .into_iter()
            .filter(|i| !i.loopback && i.mtu != mtu)
            .collect())
    })
    .await?;
    if inside.is_empty() {
        return Ok(0);
    }
    let lowering: Vec<(u32, u32)> = inside
        .iter()
        .filter(|i| i.mtu > mtu)
        .map(|i| (i.index, mtu))
        .collect();
    let raising: Vec<(u32, u32)> = inside
        .iter()
        .filter(|i| i.mtu < mtu)
        .map(|i| (i.index, mtu))
        .collect();
    set_inside(&namespace, id, lowering).await?;
    // The host's end of each pair: IFLA_LINK of the container's end.
    for interface in &inside {
        if let Some((_, host_index)) = interface.peer {
            host.set_mtu(host_index, mtu).await.map_err(Box::new)?;
        }
    }
    set_inside(&namespace, id, raising).await?;
    Ok(inside.len())
}

async fn set_inside(
    namespace: &std::path::Path,
    id: &str,
    links: Vec<(u32, u32)>,
) -> Result<(), MtuError> {
    if links.is_empty() {
        return Ok(());
    }
    in_namespace(namespace, id, async move |netlink| {
        for (index, mtu) in links {
            netlink.set_mtu(index, mtu).await?;
        }
        Ok(())
    })
    .await
}

/// Runs `f` with an rtnetlink connection opened inside the network namespace at
/// `namespace`, on a thread of its own (setns(2) changes only the calling thread, which
/// ends with it).
async fn in_namespace<T: Send + 'static>(
    namespace: &std::path::Path,
    id: &str,
    f: impl AsyncFnOnce(&Netlink) -> Result<T, LinkError> + Send + 'static,
) -> Result<T, MtuError> {
    let entered = |source| MtuError::Namespace {
        path: namespace.to_path_buf(),
        source,
    };
    let file = File::open(namespace).map_err(entered)?;
    let id = id.to_string();
    let path = namespace.to_path_buf();
    let thread = std::thread::spawn(move || -> Result<T, MtuError> {
        // SAFETY: a plain syscall on an fd we hold open; it changes this thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(MtuError::Namespace {
                path,
                source: io::Error::last_os_error(),
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| MtuError::Namespace {
                path: path.clone(),
                source,
            })?;
        runtime
            .block_on(async {
                let netlink = Netlink::connect()?;
                f(&netlink).await
            })
            .map_err(|source| MtuError::Inside {
                id,
                source: Box::new(source),
            })
    });
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| entered(io::Error::other(e)))?
        .map_err(|_| entered(io::Error::other("the namespace thread panicked")))?
}
