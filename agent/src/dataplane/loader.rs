//! Loading the embedded object, attaching `cgroup/connect4`, pinning, and adopting what a
//! previous agent pinned.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError,
        cgroup_sock_addr::CgroupSockAddrLink,
        links::{FdLink, PinnedLink},
    },
};
use aya_log::EbpfLogger;
use ferry_ebpf_abi::CONNECT4_PROGRAM;
use tokio::{io::unix::AsyncFd, task::JoinHandle};
use tracing::{info, warn};

use super::preflight::{self, PreflightError};

/// The kernel object built by `cargo xtask build-ebpf`, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ferry-ebpf.o"));

/// Where the data plane attaches and pins.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// The cgroup v2 directory whose processes (and descendants) are steered.
    pub cgroup_root: PathBuf,
    /// The bpffs directory for ferry's pins, e.g. `/sys/fs/bpf/ferry`.
    pub bpffs: PathBuf,
}

impl DataplaneConfig {
    fn map_dir(&self) -> PathBuf {
        map_dir(&self.bpffs)
    }

    fn link_dir(&self) -> PathBuf {
        link_dir(&self.bpffs)
    }
}

/// Directory of the pinned maps under the bpffs directory `bpffs`.
pub fn map_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("maps")
}

fn link_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

/// How the connect4 program came to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// No pinned link existed; a new one was created and pinned.
    Fresh,
    /// A pinned link from an earlier agent was found; its program was replaced in place.
    Adopted,
}

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("create pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("open cgroup {path}: {source}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("load the eBPF object (maps pinned under {map_dir}): {source}")]
    Object {
        map_dir: PathBuf,
        // Boxed: EbpfError is large and this error travels up every start path.
        #[source]
        source: Box<EbpfError>,
    },
    #[error("the eBPF object has no program {name}; rebuild with `./x build-ebpf`")]
    MissingProgram { name: &'static str },
    #[error("{action} program {name}: {source}")]
    Program {
        action: &'static str,
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("reopen pinned link {path}: {source}")]
    PinnedLink {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pin link at {path}: {source}")]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
}

/// The loaded, attached and pinned data plane. Dropping it leaves the pinned programs and
/// maps in the kernel: steering outlives the agent by design.
pub struct Dataplane {
    _ebpf: Ebpf,
    attachment: Attachment,
    link_pin: PathBuf,
    logger: Option<JoinHandle<()>>,
}

impl Dataplane {
    /// Checks the machine, loads the object, and attaches (or adopts) the connect4 link.
    ///
    /// Must run inside a tokio runtime: the kernel programs' log records are drained by a
    /// task.
    pub fn start(config: &DataplaneConfig) -> Result<Self, LoadError> {
        preflight::check_bpffs(&config.bpffs)?;
        preflight::check_cgroup_root(&config.cgroup_root)?;
        preflight::check_program_types()?;

        for dir in [config.map_dir(), config.link_dir()] {
            fs::create_dir_all(&dir).map_err(|source| LoadError::PinDir { path: dir, source })?;
        }
        let map_dir = config.map_dir();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&map_dir)
            .load(OBJECT)
            .map_err(|source| LoadError::Object {
                map_dir,
                source: Box::new(source),
            })?;
        let logger = start_logger(&mut ebpf);

        let cgroup =
            fs::File::open(&config.cgroup_root).map_err(|source| LoadError::OpenCgroup {
                path: config.cgroup_root.clone(),
                source,
            })?;
        let cgroup_id = cgroup
            .metadata()
            .map_err(|source| LoadError::OpenCgroup {
                path: config.cgroup_root.clone(),
                source,
            })?
            .ino();
        let link_pin = config.link_dir().join(format!("connect4-{cgroup_id}"));
        warn_about_other_links(&config.link_dir(), &link_pin);

        let name = CONNECT4_PROGRAM;
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram { name })?
            .try_into()
            .map_err(|source| LoadError::Program {
                action: "inspect",
                name,
                source,
            })?;
        program.load().map_err(|source| LoadError::Program {
            action: "load",
            name,
            source,
        })?;

        let attachment = if link_pin.exists() {
            let pinned =
                PinnedLink::from_pin(&link_pin).map_err(|source| LoadError::PinnedLink {
                    path: link_pin.clone(),
                    source,
                })?;
            let link = CgroupSockAddrLink::try_from(FdLink::from(pinned)).map_err(|source| {
                LoadError::PinnedLink {
                    path: link_pin.clone(),
                    source,
                }
            })?;
            program
                .attach_to_link(link)
                .map_err(|source| LoadError::Program {
                    action: "swap into the pinned link",
                    name,
                    source,
                })?;
            Attachment::Adopted
        } else {
            // A bpf_link attachment always coexists with other programs on the cgroup, and
            // the kernel refuses any flag on link creation: Single is aya's "no flags".
            let id = program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|source| LoadError::Program {
                    action: "attach",
                    name,
                    source,
                })?;
            let link = program.take_link(id).map_err(|source| LoadError::Program {
                action: "take the link of",
                name,
                source,
            })?;
            let fd_link = FdLink::try_from(link).map_err(|source| LoadError::PinnedLink {
                path: link_pin.clone(),
                source,
            })?;
            // Once pinned, the link lives until its pin is removed, whatever the agent does.
            fd_link
                .pin(&link_pin)
                .map_err(|source| LoadError::PinLink {
                    path: link_pin.clone(),
                    source,
                })?;
            Attachment::Fresh
        };
        info!(
            cgroup = %config.cgroup_root.display(),
            pin = %link_pin.display(),
            ?attachment,
            "connect4 attached"
        );
        Ok(Self {
            _ebpf: ebpf,
            attachment,
            link_pin,
            logger,
        })
    }

    /// Whether this start created the link or adopted a pinned one.
    pub fn attachment(&self) -> Attachment {
        self.attachment
    }

    /// The bpffs path of the pinned connect4 link.
    pub fn link_pin(&self) -> &Path {
        &self.link_pin
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Some(task) = self.logger.take() {
            task.abort();
        }
    }
}

/// Removes ferry's pins under `bpffs`: the programs detach and the maps are freed once no
/// one else holds them. This is the only way steering stops.
pub fn unpin(bpffs: &Path) -> io::Result<()> {
    for dir in [link_dir(bpffs), map_dir(bpffs)] {
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    fs::remove_file(entry?.path())?;
                }
                fs::remove_dir(&dir)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn warn_about_other_links(link_dir: &Path, ours: &Path) {
    let Ok(entries) = fs::read_dir(link_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != ours {
            warn!(
                pin = %path.display(),
                "a connect4 link pinned for another cgroup root is still attached; \
                 remove the pin if that root is no longer used"
            );
        }
    }
}

/// Forwards the kernel programs' aya-log records to `tracing`. The programs log only rare
/// events, so a missing logger costs diagnostics, never steering.
fn start_logger(ebpf: &mut Ebpf) -> Option<JoinHandle<()>> {
    let logger = match EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            warn!("kernel program logs unavailable: {e}");
            return None;
        }
    };
    // SAFETY: the logger owns the ring buffer's fd and never closes or replaces it while
    // registered; flush() only reads from it.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut logger = match registered {
        Ok(logger) => logger,
        Err(e) => {
            warn!("kernel program logs unavailable: {e}");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            match logger.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!("kernel program log reader stopped: {e}");
                    return;
                }
            }
        }
    }))
}
