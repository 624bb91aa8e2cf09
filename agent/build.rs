//! Embeds the eBPF object that `cargo xtask build-ebpf` produced.
//!
//! The agent must never ship without its kernel programs, nor with programs older than their
//! source, so a missing or stale object fails the build with the command that fixes it.

use std::{
    env, fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

fn main() {
    if let Err(message) = embed() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn embed() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest
        .parent()
        .ok_or("agent crate has no parent directory")?;
    println!("cargo::rerun-if-env-changed=FERRY_EBPF_OBJECT");
    let object = match env::var_os("FERRY_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => root.join("target/ebpf/bpfel-unknown-none/release/ferry-ebpf"),
    };
    println!("cargo::rerun-if-changed={}", object.display());
    let sources = [root.join("ebpf/programs"), root.join("ebpf/abi")];
    for dir in &sources {
        println!("cargo::rerun-if-changed={}", dir.display());
    }

    let built = fs::metadata(&object)
        .and_then(|m| m.modified())
        .map_err(|e| {
            format!(
                "the eBPF object {} is missing ({e}); run `./x build-ebpf` first",
                object.display()
            )
        })?;
    for dir in &sources {
        if let Some((path, changed)) = newest(dir)
            && changed > built
        {
            return Err(format!(
                "the eBPF object {} is older than {}; run `./x build-ebpf` again",
                object.display(),
                path.display()
            ));
        }
    }
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    fs::copy(&object, out.join("ferry-ebpf.o"))
        .map_err(|e| format!("copy {} into OUT_DIR: {e}", object.display()))?;
    Ok(())
}

/// The most recently modified file under `dir` (sources only; build output is elsewhere).
fn newest(dir: &Path) -> Option<(PathBuf, SystemTime)> {
    let mut best: Option<(PathBuf, SystemTime)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if let Ok(modified) = meta.modified()
                && best.as_ref().is_none_or(|(_, t)| modified > *t)
            {
                best = Some((path, modified));
            }
        }
    }
    best
}
