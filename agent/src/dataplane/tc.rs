//! Attaching the L4 ingress's tc programs (loaded and pinned by the loader) to network
//! interfaces through TCX links, pinned so they outlive the agent.
//!
//! Pin layout: `<bpffs>/tc-links/<program>-<interface>`. A restarted agent swaps its
//! fresh program into the pinned link (`BPF_LINK_UPDATE`, no moment without a program);
//! a pinned link whose interface was deleted and made again is attached nowhere, so it is
//! replaced by a new one.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttach, TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
    tc::SchedClassifierLink,
};

use super::{Attachment, loader::program_dir};

/// Why a tc program could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error(
        "open the pinned program {path}: {source}; the agent loads it at start, and logs why \
         when the kernel refuses it"
    )]
    Program {
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("attach {program} to {interface} (tcx ingress): {source}")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("pin link at {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the tc links are pinned under the bpffs directory `bpffs`.
pub(super) fn link_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("tc-links")
}

fn link_pin(bpffs: &Path, program: &str, interface: &str) -> PathBuf {
    link_dir(bpffs).join(format!("{program}-{interface}"))
}

/// Attaches tc program `program` (one of [`ferry_ebpf_abi::program_names`]'s L4 ones) at
/// the ingress of `interface` (whose index is `ifindex`), or swaps it into the link pinned
/// there by an earlier agent.
///
/// # Errors
/// [`TcError`] naming the program, interface or pin; the interface is then left as it was.
pub fn attach_ingress(
    bpffs: &Path,
    program: &'static str,
    interface: &str,
    ifindex: u32,
) -> Result<Attachment, TcError> {
    let path = program_dir(bpffs).join(program);
    let mut loaded =
        SchedClassifier::from_pin(&path).map_err(|source| TcError::Program { path, source })?;
    let pin = link_pin(bpffs, program, interface);
    let attach_error = |source| TcError::Attach {
        program,
        interface: interface.into(),
        source,
    };
    if pin.exists() {
        let pinned = PinnedLink::from_pin(&pin).map_err(|source| TcError::Link {
            path: pin.clone(),
            source,
        })?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|source| {
            TcError::Link {
                path: pin.clone(),
                source,
            }
        })?;
        loaded.attach_to_link(link).map_err(attach_error)?;
        if runs_at(&loaded, ifindex) {
            return Ok(Attachment::Adopted);
        }
        // The link's interface is gone (this one is a namesake made since): start over.
        remove(&pin)?;
    }
    let id = loaded
        .attach(
            ifindex,
            TcAttach::Tcx {
                attach_type: TcAttachType::Ingress,
                order: LinkOrder::default(),
            },
        )
        .map_err(attach_error)?;
    let link = loaded.take_link(id).map_err(attach_error)?;
    let link = FdLink::try_from(link).map_err(|source| TcError::Link {
        path: pin.clone(),
        source,
    })?;
    let dir = link_dir(bpffs);
    fs::create_dir_all(&dir).map_err(|source| TcError::Io {
        action: "create",
        path: dir,
        source,
    })?;
    link.pin(&pin)
        .map_err(|source| TcError::Pin { path: pin, source })?;
    Ok(Attachment::Fresh)
}

/// Whether `program` is among the programs running at interface `ifindex`'s tcx ingress.
fn runs_at(program: &SchedClassifier, ifindex: u32) -> bool {
    let Ok(id) = program.info().map(|info| info.id()) else {
        return false;
    };
    SchedClassifier::query_tcx(ifindex, TcAttachType::Ingress)
        .is_ok_and(|(_, programs)| programs.iter().any(|p| p.id() == id))
}

/// Detaches every tc program ferry attached (its pins removed), e.g. when the operator
/// chose the userspace relay.
pub fn detach_all(bpffs: &Path) -> Result<(), TcError> {
    let dir = link_dir(bpffs);
    match fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                remove(&entry.path())?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(TcError::Io {
            action: "read",
            path: dir,
            source,
        }),
    }
}

/// Detaches the program at `interface` unless it is one of `keep` (interface names):
/// interfaces that stopped being external ones.
pub fn detach_others(bpffs: &Path, program: &str, keep: &[String]) -> Result<(), TcError> {
    let Ok(entries) = fs::read_dir(link_dir(bpffs)) else {
        return Ok(());
    };
    let prefix = format!("{program}-");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(interface) = name.strip_prefix(&prefix)
            && !keep.iter().any(|k| k == interface)
        {
            remove(&entry.path())?;
        }
    }
    Ok(())
}

fn remove(pin: &Path) -> Result<(), TcError> {
    fs::remove_file(pin).map_err(|source| TcError::Io {
        action: "remove",
        path: pin.to_path_buf(),
        source,
    })
}
