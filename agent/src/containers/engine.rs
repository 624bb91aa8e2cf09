//! The connection to one Docker Engine, with the API version negotiated down to what the
//! engine speaks (the distribution's dockerd is older than bollard's default).

use std::{path::Path, path::PathBuf};

use bollard::{API_DEFAULT_VERSION, Docker};

/// Seconds a single Engine API call may take before it fails.
const CALL_TIMEOUT_SECS: u64 = 120;

/// Why the Docker Engine cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "no Docker Engine socket at {socket}; start dockerd (or pass the socket it listens on)"
    )]
    NoSocket { socket: PathBuf },
    #[error(
        "the Docker Engine at {socket} does not answer: {source}; check that dockerd is \
         running and listening there"
    )]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: bollard::errors::Error,
    },
}

/// A Docker Engine that answered a ping.
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
    socket: PathBuf,
}

impl Engine {
    /// The host's process id of container `id`'s first process; None when it does not run.
    pub async fn main_pid(&self, id: &str) -> Result<Option<i64>, bollard::errors::Error> {
        let inspect = self.docker().inspect_container(id, None).await?;
        Ok(inspect.state.and_then(|s| s.pid).filter(|pid| *pid > 0))
    }

    /// Connects to the engine at the unix socket `socket`, negotiates the API version and
    /// pings it.
    pub async fn connect(socket: &Path) -> Result<Self, EngineError> {
        let unreachable = |source| EngineError::Unreachable {
            socket: socket.to_path_buf(),
            source,
        };
        let path = socket.to_string_lossy();
        let docker = Docker::connect_with_unix(&path, CALL_TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(|source| match source {
                bollard::errors::Error::SocketNotFoundError(_) => EngineError::NoSocket {
                    socket: socket.to_path_buf(),
                },
                source => unreachable(source),
            })?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        Ok(Self {
            docker,
            socket: socket.to_path_buf(),
        })
    }

    /// How the engine names cgroups (`docker info`'s `CgroupDriver`).
    pub async fn cgroup_driver(&self) -> Result<super::cgroup::Driver, EngineError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|source| EngineError::Unreachable {
                socket: self.socket.clone(),
                source,
            })?;
        Ok(super::cgroup::Driver::from_info(
            info.cgroup_driver.as_ref().map(|d| d.as_ref()),
        ))
    }

    /// The bollard client.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The socket this engine listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}
