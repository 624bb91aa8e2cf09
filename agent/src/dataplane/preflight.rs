//! Checks that turn a confusing kernel error later into a clear one now: the bpffs mount,
//! the cgroup v2 root, and the program types ferry loads.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::programs::ProgramType;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Why the machine cannot run the data plane, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "{path} is not on a bpf filesystem (it is on filesystem type {magic:#x}); \
         mount one with `mount -t bpf bpf /sys/fs/bpf` or pass --bpffs under a bpffs mount"
    )]
    NotBpffs { path: PathBuf, magic: i64 },
    #[error(
        "cgroup root {path} does not exist; create it (`mkdir {path}`) or pass --cgroup-root \
         with a directory of the cgroup v2 hierarchy"
    )]
    CgroupMissing { path: PathBuf },
    #[error(
        "cgroup root {path} is not a cgroup v2 directory (filesystem type {magic:#x}); \
         pass --cgroup-root inside the cgroup2 mount (see `mount -t cgroup2`)"
    )]
    NotCgroup2 { path: PathBuf, magic: i64 },
    #[error(
        "this kernel cannot load {program_type:?} programs; ferry needs a kernel built with \
         CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF (Linux 5.7 or newer)"
    )]
    ProgramTypeMissing { program_type: ProgramType },
    #[error("probing support for {program_type:?} programs failed: {source}")]
    Probe {
        program_type: ProgramType,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("statfs {path}: {source}")]
    Statfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The program types the agent loads.
const PROGRAM_TYPES: [ProgramType; 1] = [ProgramType::CgroupSockAddr];

/// Checks that `path`, or its nearest existing ancestor, lives on a bpf filesystem.
pub fn check_bpffs(path: &Path) -> Result<(), PreflightError> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    let magic = fs_magic(existing)?;
    if magic != BPF_FS_MAGIC {
        return Err(PreflightError::NotBpffs {
            path: existing.to_path_buf(),
            magic,
        });
    }
    Ok(())
}

/// Checks that `path` is a directory of the cgroup v2 hierarchy.
pub fn check_cgroup_root(path: &Path) -> Result<(), PreflightError> {
    if !path.is_dir() {
        return Err(PreflightError::CgroupMissing {
            path: path.to_path_buf(),
        });
    }
    let magic = fs_magic(path)?;
    if magic != CGROUP2_SUPER_MAGIC {
        return Err(PreflightError::NotCgroup2 {
            path: path.to_path_buf(),
            magic,
        });
    }
    Ok(())
}

/// Asks the kernel whether it can load every program type the agent uses.
pub fn check_program_types() -> Result<(), PreflightError> {
    for program_type in PROGRAM_TYPES {
        match aya::sys::is_program_supported(program_type) {
            Ok(true) => {}
            Ok(false) => return Err(PreflightError::ProgramTypeMissing { program_type }),
            Err(source) => {
                return Err(PreflightError::Probe {
                    program_type,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The mount point of the first cgroup2 filesystem, from `/proc/self/mounts`.
pub fn cgroup2_mount() -> io::Result<Option<PathBuf>> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    Ok(mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(target))
    }))
}

fn fs_magic(path: &Path) -> Result<i64, PreflightError> {
    let statfs_error = |source| PreflightError::Statfs {
        path: path.to_path_buf(),
        source,
    };
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| statfs_error(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: c_path is NUL-terminated and buf is large enough for a statfs.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(statfs_error(io::Error::last_os_error()));
    }
    // SAFETY: statfs returned 0, so it filled buf.
    let buf = unsafe { buf.assume_init() };
    Ok(buf.f_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_bpffs() {
        let dir = std::env::temp_dir();
        let err = check_bpffs(&dir.join("ferry-no-such-dir")).unwrap_err();
        assert!(matches!(err, PreflightError::NotBpffs { .. }), "{err}");
        assert!(err.to_string().contains("mount -t bpf bpf /sys/fs/bpf"));
    }

    #[test]
    fn a_missing_cgroup_root_names_the_path_and_the_fix() {
        let err = check_cgroup_root(Path::new("/nonexistent/ferry-cgroup")).unwrap_err();
        assert!(matches!(err, PreflightError::CgroupMissing { .. }));
        let text = err.to_string();
        assert!(text.contains("/nonexistent/ferry-cgroup"), "{text}");
        assert!(text.contains("--cgroup-root"), "{text}");
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroup() {
        let err = check_cgroup_root(&std::env::temp_dir()).unwrap_err();
        assert!(matches!(err, PreflightError::NotCgroup2 { .. }), "{err}");
    }
}
