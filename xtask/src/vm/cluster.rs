//! The cluster stage: two guests booted side by side, each a server of one ferry cluster
//! with its own kernel WireGuard, Docker Engine and agent (the first also serves central),
//! joined by a wire between their network cards and nothing else. The guest program
//! (`ferry-vm-cluster`, one role per guest) does the checking; here the guests are made,
//! booted together and their verdicts added up.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};

use super::{
    MODULES, initramfs,
    kernel::Kernel,
    passed_of,
    qemu::{self, Accel, Link, Machine},
};

/// The servers, in the order their roles are named to the guest program.
const SERVERS: [&str; 2] = ["one", "two"];
/// Each guest's memory: its root's writes, Docker's layers and containers live in it.
const MEMORY_MIB: u32 = 3072;
/// Each guest's CPUs: one. With two, under TCG, the guest kernel's live patching of its
/// own code (static keys flipped with int3, as when runc makes a cgroup) raced and
/// oopsed ("int3: 0000", a panic in kmem_cache_alloc) once in three runs; and two guests
/// of one vCPU each already fill this machine's two cores.
const CPUS: u32 = 1;

/// Boots the two servers of the cluster and waits for both; how many checks they passed.
pub fn run(
    work: &Path,
    kernel: &Kernel,
    accel: Accel,
    built: &Path,
    timeout: Duration,
) -> Result<usize> {
    let dir = work.join("cluster");
    let _ = std::fs::remove_dir_all(&dir);
    // The guests' bulletin board: central's address and tokens, and where each one is.
    let board = dir.join("board");
    std::fs::create_dir_all(&board).with_context(|| format!("creating {}", board.display()))?;
    let binary = |name: &str| built.join(name).to_string_lossy().into_owned();
    let env = [
        ("FERRY_AGENT_BIN", binary("ferry-agent")),
        ("FERRY_CENTRAL_BIN", binary("ferry-central")),
        ("FERRY_CLI_BIN", binary("ferry")),
    ];
    let program = built.join("ferry-vm-cluster");
    let guest = initramfs::Guest {
        program: &program,
        args: &[],
        env: &env,
    };
    let image = initramfs::build(work, "initramfs-cluster", kernel, MODULES, &guest)?;
    let machines: Vec<Machine> = SERVERS
        .iter()
        .enumerate()
        .map(|(index, name)| machine(&dir, &board, index, name))
        .collect();
    let runs: Vec<Result<qemu::Run>> = std::thread::scope(|scope| {
        let handles: Vec<_> = SERVERS
            .iter()
            .zip(&machines)
            .map(|(name, machine)| {
                let (image, board) = (&image, &board);
                scope.spawn(move || {
                    let run = qemu::boot(kernel, image, accel, machine, timeout);
                    let ended = match &run {
                        Ok(run) if run.exit_code == Some(0) => None,
                        Ok(run) => {
                            Some(format!("its guest ended without success: {}", run.tail(3)))
                        }
                        Err(e) => Some(format!("its guest did not run: {e:#}")),
                    };
                    // A guest that died (a kernel panic, say) cannot say so itself; the
                    // other one stops waiting for it.
                    if let Some(why) = ended {
                        let note = board.join(format!("{name}-abandoned.json"));
                        let _ = std::fs::write(note, serde_json::to_vec(&why).unwrap_or_default());
                    }
                    run
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a guest's thread panicked")))
            })
            .collect()
    });
    let mut passed = 0;
    for (name, run) in SERVERS.iter().zip(runs) {
        passed += passed_of(&format!("cluster server {name}"), &run?)?;
    }
    Ok(passed)
}

/// Server `name`'s machine: its card wired to the other server's, the board shared.
fn machine(dir: &Path, board: &Path, index: usize, name: &str) -> Machine {
    let other = SERVERS[(index + 1) % SERVERS.len()];
    let end = |server: &str| -> PathBuf { dir.join(format!("{server}.wire")) };
    Machine {
        label: format!("[{name}] "),
        memory_mib: MEMORY_MIB,
        cpus: CPUS,
        cmdline: format!("ferry.args={name} ferry.shared=1"),
        link: Some(Link {
            local: end(name),
            remote: end(other),
            mac: format!("52:54:00:66:00:{:02x}", index + 1),
        }),
        shared: Some(board.to_path_buf()),
    }
}
