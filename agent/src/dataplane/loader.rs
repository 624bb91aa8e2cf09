//! Loading the embedded object, attaching `cgroup/connect4`, pinning, and adopting what a
//! previous agent pinned.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::MapError,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError,
        SchedClassifier,
        cgroup_sock_addr::CgroupSockAddrLink,
        links::{FdLink, PinnedLink},
    },
};
use aya_log::EbpfLogger;
use ferry_ebpf_abi::program_names;
use tokio::{io::unix::AsyncFd, task::JoinHandle};
use tracing::{info, warn};

use super::{
    layout::{self, LayoutError, Migration, map_dir},
    preflight::{self, PreflightError},
};

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

pub(super) fn link_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

/// Where the loaded tc programs are pinned for the ingress to attach.
pub(super) fn program_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("programs")
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
    #[error("move the maps pinned by an agent of another layout: {0}")]
    Layout(#[from] LayoutError),
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
    /// Checks the machine, loads the object, and attaches (or adopts) every program's link.
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
        let mut migration = Migration::prepare(&config.bpffs)?;
        let mut ebpf = loop {
            match EbpfLoader::new()
                .default_map_pin_directory(&map_dir)
                .load(OBJECT)
            {
                Ok(ebpf) => break ebpf,
                Err(EbpfError::MapError(MapError::IncompatiblePinnedMap { ref name, .. }))
                    if migration.drop_incompatible(name)? => {}
                Err(source) => {
                    return Err(LoadError::Object {
                        map_dir,
                        source: Box::new(source),
                    });
                }
            }
        };
        migration.convert(&mut ebpf)?;
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
        let link_dir = config.link_dir();
        warn_about_other_links(&link_dir, cgroup_id);
        let mut attachment = Attachment::Fresh;
        for (name, short) in PROGRAMS {
            let pin = link_dir.join(format!("{short}-{cgroup_id}"));
            let how = match *name {
                program_names::DNS_EGRESS => {
                    attach_skb(&mut ebpf, name, CgroupSkbAttachType::Egress, &cgroup, &pin)?
                }
                program_names::ISOLATION => {
                    attach_skb(&mut ebpf, name, CgroupSkbAttachType::Ingress, &cgroup, &pin)?
                }
                _ => attach_sock_addr(&mut ebpf, name, &cgroup, &pin)?,
            };
            if *name == program_names::CONNECT4 {
                attachment = how;
            }
            info!(cgroup = %config.cgroup_root.display(), pin = %pin.display(), ?how, "{short} attached");
        }
        pin_tc_programs(&mut ebpf, &config.bpffs);
        // Only now does no program use the older maps' pins.
        migration.finish()?;
        Ok(Self {
            _ebpf: ebpf,
            attachment,
            link_pin: link_dir.join(format!("connect4-{cgroup_id}")),
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

/// Every program, with the short name its link is pinned under (`<short>-<cgroup id>`).
const PROGRAMS: &[(&str, &str)] = &[
    (program_names::CONNECT4, "connect4"),
    (program_names::SENDMSG4, "sendmsg4"),
    (program_names::RECVMSG4, "recvmsg4"),
    (program_names::GETPEERNAME4, "getpeername4"),
    (program_names::DNS_EGRESS, "dns-egress"),
    (program_names::ISOLATION, "isolation"),
];

/// The tc programs of the L4 ingress. They attach to interfaces the agent finds later (the
/// container bridge appears with the first container), so they are loaded now and pinned
/// under [`program_dir`], where the ingress picks them up (`dataplane::tc`).
const TC_PROGRAMS: [&str; 3] = [
    program_names::L4_INGRESS,
    program_names::L4_REPLY,
    program_names::L4_REPLY_L3,
];

/// Loads and pins the tc programs, replacing an earlier agent's pins (links that run
/// those keep running them until the ingress swaps the new ones in). A program the kernel
/// refuses is logged and its pin removed: the ingress then relays the L4 ports in
/// userspace and says why.
fn pin_tc_programs(ebpf: &mut Ebpf, bpffs: &Path) {
    let dir = program_dir(bpffs);
    if let Err(e) = fs::create_dir_all(&dir) {
        warn!(dir = %dir.display(), "the L4 ingress stays in userspace: {e}");
        return;
    }
    for name in TC_PROGRAMS {
        let pin = dir.join(name);
        let _ = fs::remove_file(&pin);
        let loaded = load_program::<SchedClassifier>(ebpf, name).and_then(|program| {
            program.load().map_err(failed("load", name))?;
            program.pin(&pin).map_err(|source| LoadError::PinLink {
                path: pin.clone(),
                source,
            })
        });
        if let Err(e) = loaded {
            warn!("the L4 ingress stays in userspace: {e}");
        }
    }
}

/// Loads program `name` of the object as a `T`.
fn load_program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    T: 'a,
{
    let program: &mut T = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram { name })?
        .try_into()
        .map_err(failed("inspect", name))?;
    Ok(program)
}

/// Attaches a sock_addr program through the link pinned at `pin`, or a new pinned link.
/// Adopting swaps the program inside the link (`BPF_LINK_UPDATE`): never a moment without.
fn attach_sock_addr(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &fs::File,
    pin: &Path,
) -> Result<Attachment, LoadError> {
    let program: &mut CgroupSockAddr = load_program(ebpf, name)?;
    program.load().map_err(failed("load", name))?;
    if pin.exists() {
        let pinned = PinnedLink::from_pin(pin).map_err(pinned_link_error(pin))?;
        let link =
            CgroupSockAddrLink::try_from(FdLink::from(pinned)).map_err(pinned_link_error(pin))?;
        program
            .attach_to_link(link)
            .map_err(failed("swap into the pinned link", name))?;
        return Ok(Attachment::Adopted);
    }
    // A bpf_link attachment always coexists with other programs on the cgroup, and the
    // kernel refuses any flag on link creation: Single is aya's "no flags".
    let id = program
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(failed("attach", name))?;
    let link = program
        .take_link(id)
        .map_err(failed("take the link of", name))?;
    let link = FdLink::try_from(link).map_err(pinned_link_error(pin))?;
    pin_link(link, pin)?;
    Ok(Attachment::Fresh)
}

/// Attaches a cgroup_skb program with a new pinned link. aya cannot swap a program into a
/// cgroup_skb link, so a restart attaches the new program first, then moves its pin over the
/// old one, which detaches the old program: for a moment both run (both record the same
/// DNS peers; both apply the same isolation), which is harmless, and there is never a
/// moment with neither.
fn attach_skb(
    ebpf: &mut Ebpf,
    name: &'static str,
    direction: CgroupSkbAttachType,
    cgroup: &fs::File,
    pin: &Path,
) -> Result<Attachment, LoadError> {
    let program: &mut CgroupSkb = load_program(ebpf, name)?;
    program.load().map_err(failed("load", name))?;
    let id = program
        .attach(cgroup, direction, CgroupAttachMode::Single)
        .map_err(failed("attach", name))?;
    let link = program
        .take_link(id)
        .map_err(failed("take the link of", name))?;
    let link = FdLink::try_from(link).map_err(pinned_link_error(pin))?;
    if !pin.exists() {
        pin_link(link, pin)?;
        return Ok(Attachment::Fresh);
    }
    // bpffs refuses dots in names.
    let file_name = pin.file_name().map(|n| n.to_string_lossy().into_owned());
    let fresh = pin.with_file_name(format!("next-{}", file_name.unwrap_or_default()));
    // A leftover from a start that died between the two steps below.
    let _ = fs::remove_file(&fresh);
    pin_link(link, &fresh)?;
    fs::rename(&fresh, pin).map_err(|source| LoadError::PinDir {
        path: pin.to_path_buf(),
        source,
    })?;
    Ok(Attachment::Adopted)
}

/// The error for `action` failing on program `name`.
fn failed(action: &'static str, name: &'static str) -> impl FnOnce(ProgramError) -> LoadError {
    move |source| LoadError::Program {
        action,
        name,
        source,
    }
}

/// The error for a link that could not be had as the link pinned at `pin`.
fn pinned_link_error(pin: &Path) -> impl FnOnce(aya::programs::links::LinkError) -> LoadError + '_ {
    move |source| LoadError::PinnedLink {
        path: pin.to_path_buf(),
        source,
    }
}

/// Pins `link`; once pinned it lives until its pin is removed, whatever the agent does.
fn pin_link(link: FdLink, pin: &Path) -> Result<(), LoadError> {
    link.pin(pin).map_err(|source| LoadError::PinLink {
        path: pin.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Removes ferry's pins under `bpffs`: the programs detach and the maps are freed once no
/// one else holds them. This is the only way steering stops.
pub fn unpin(bpffs: &Path) -> io::Result<()> {
    layout::remove_pins(&link_dir(bpffs))?;
    layout::remove_pins(&program_dir(bpffs))?;
    layout::remove_pins(&super::tc::link_dir(bpffs))?;
    for dir in layout::all_map_dirs(bpffs)? {
        layout::remove_pins(&dir)?;
    }
    Ok(())
}

fn warn_about_other_links(link_dir: &Path, cgroup_id: u64) {
    let Ok(entries) = fs::read_dir(link_dir) else {
        return;
    };
    let ours = format!("-{cgroup_id}");
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.to_string_lossy().ends_with(&ours) {
            warn!(
                pin = %path.display(),
                "a link pinned for another cgroup root is still attached; \
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
