//! Map layouts across upgrades. Pinned maps carry their layout's version in their directory
//! (`<bpffs>/maps-v<MAP_LAYOUT>`); an agent started over the pins of another layout moves
//! them to its own with no moment in which a program runs without its entries.
//!
//! The order is what makes the move gapless (Cilium's agent moves its maps the same way:
//! new maps filled before the programs that use them are swapped in, old pins removed after):
//! 1. before loading, every map of the older layout is pinned again under this layout's
//!    directory, so a map whose shape is unchanged is *carried*: the new programs share the
//!    kernel map with the old ones, entries, round-robin cursors and counters included;
//! 2. loading finds the maps whose shape changed: aya refuses to reuse a pin whose key size,
//!    value size, capacity or flags differ from the object's, so that carried pin is dropped
//!    and the load retried, which creates the map fresh;
//! 3. each changed map is filled from its older copy, converted entry by entry, before any
//!    program is swapped in (the loader attaches after [`Migration::convert`]);
//! 4. once every program is swapped in, [`Migration::finish`] removes the older pins; the
//!    kernel frees the older maps when the old programs let go of them.
//!
//! A crash at any step leaves the older pins in place and the next start runs the steps
//! again (every step is idempotent). A changed map this agent has no conversion for starts
//! empty and is named in a warning: the agent refills it from its own state (the records
//! snapshot, its containers, its DNS options) as it does at every start, but until then the
//! entries it held are missing.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, Map, MapData, MapError, MapInfo, PerCpuArray},
};
use ferry_ebpf_abi::{
    ANY_GENERATION, Backend, BackendKey, Caller, DnsListener, DnsOrigin, DnsPeer, MAP_LAYOUT,
    Service, ServiceKey, legacy::ServiceKeyV1, map_names,
};
use tracing::{info, warn};

/// The directory pinned by agents from before layouts were versioned: layouts 1 and 2.
const UNVERSIONED: &str = "maps";

/// The version assumed for [`UNVERSIONED`] pins when ordering sources: the newest it held.
const UNVERSIONED_LAYOUT: u32 = 2;

/// Directory of the pinned maps of this agent's layout under the bpffs directory `bpffs`.
pub fn map_dir(bpffs: &Path) -> PathBuf {
    bpffs.join(format!("{UNVERSIONED}-v{MAP_LAYOUT}"))
}

/// Every map directory under `bpffs`, this layout's included: what `unpin` removes.
pub(super) fn all_map_dirs(bpffs: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(map_dirs(bpffs)?.into_iter().map(|(_, dir)| dir).collect())
}

/// Why the pins of another layout could not be moved to this one.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("read pin directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("carry pinned map {from} to {to}: {source}")]
    Carry {
        from: PathBuf,
        to: PathBuf,
        // Boxed: MapError is large and this error travels up every start path.
        #[source]
        source: Box<MapError>,
    },
    #[error("drop carried pin {path}, whose shape changed: {source}")]
    Drop {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("convert map {name} from {from}: {source}")]
    Convert {
        name: &'static str,
        from: PathBuf,
        #[source]
        source: Box<MapError>,
    },
    #[error("remove older pin {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A move from the pins of another layout, begun by [`Migration::prepare`].
#[derive(Debug)]
pub(super) struct Migration {
    current: PathBuf,
    /// Every other layout's directory with its layout, newest first: the first is the
    /// source whose maps are carried or converted; all are removed at the end.
    older: Vec<(u32, PathBuf)>,
    /// Carried pins dropped because aya found their shape changed.
    dropped: Vec<String>,
}

impl Migration {
    /// Step 1: finds other layouts' pins under `bpffs` and carries the newest one's maps
    /// into this layout's directory (which must exist) wherever it has no pin yet.
    pub(super) fn prepare(bpffs: &Path) -> Result<Self, LayoutError> {
        let current = map_dir(bpffs);
        let mut older: Vec<(u32, PathBuf)> = map_dirs(bpffs)
            .map_err(|source| LayoutError::ReadDir {
                path: bpffs.to_path_buf(),
                source,
            })?
            .into_iter()
            .filter(|(_, dir)| *dir != current)
            .collect();
        older.sort_by_key(|(layout, _)| std::cmp::Reverse(*layout));
        if let Some((_, from_dir)) = older.first() {
            for name in map_names::ALL {
                let (from, to) = (from_dir.join(name), current.join(name));
                if !from.exists() || to.exists() {
                    continue;
                }
                let carry = |source| LayoutError::Carry {
                    from: from.clone(),
                    to: to.clone(),
                    source: Box::new(source),
                };
                let map = MapData::from_pin(&from).map_err(carry)?;
                map.pin(&to)
                    .map_err(|error| carry(MapError::PinError { name: None, error }))?;
            }
        }
        Ok(Self {
            current,
            older,
            dropped: Vec::new(),
        })
    }

    /// The layout whose maps are carried or converted, and its directory.
    fn source(&self) -> Option<&(u32, PathBuf)> {
        self.older.first()
    }

    /// Step 2: the load refused the pin of map `name` as incompatible. Returns whether it
    /// was a carried pin, now dropped so that a retried load creates the map; a pin that
    /// was not carried (or was dropped already) is a real error for the caller to report.
    pub(super) fn drop_incompatible(&mut self, name: &str) -> Result<bool, LayoutError> {
        let carried = self
            .source()
            .is_some_and(|(_, dir)| dir.join(name).exists());
        if !carried || self.dropped.iter().any(|n| n == name) {
            return Ok(false);
        }
        let path = self.current.join(name);
        fs::remove_file(&path).map_err(|source| LayoutError::Drop { path, source })?;
        self.dropped.push(name.to_owned());
        Ok(true)
    }

    /// Step 3: fills every map the load created afresh from its older copy. Returns the
    /// maps that could not be converted (they start empty).
    pub(super) fn convert(&self, ebpf: &mut Ebpf) -> Result<Vec<&'static str>, LayoutError> {
        let Some((_, from_dir)) = self.source() else {
            return Ok(Vec::new());
        };
        let mut converted = Vec::new();
        let mut unconverted = Vec::new();
        for name in map_names::ALL {
            let from = from_dir.join(name);
            let (Ok(old), Ok(new)) = (
                MapInfo::from_pin(&from),
                MapInfo::from_pin(self.current.join(name)),
            ) else {
                continue;
            };
            if old.id() == new.id() {
                continue; // carried: one kernel map under both pins
            }
            let Some(map) = ebpf.map_mut(name) else {
                continue;
            };
            let failed = |source| LayoutError::Convert {
                name,
                from: from.clone(),
                source: Box::new(source),
            };
            let data = MapData::from_pin(&from).map_err(failed)?;
            match convert(name, &old, data, map).map_err(failed)? {
                Some(entries) => converted.push((name, entries)),
                None => unconverted.push(name),
            }
        }
        if !converted.is_empty() {
            info!(from = %from_dir.display(), ?converted, "maps of a changed shape converted");
        }
        if !unconverted.is_empty() {
            warn!(
                from = %from_dir.display(),
                maps = ?unconverted,
                "no conversion from these maps' older shape: they start empty and are refilled \
                 from the agent's state"
            );
        }
        Ok(unconverted)
    }

    /// Step 4, once every program is swapped in: removes the other layouts' pins.
    pub(super) fn finish(self) -> Result<(), LayoutError> {
        for (_, dir) in &self.older {
            remove_pins(dir).map_err(|source| LayoutError::Remove {
                path: dir.clone(),
                source,
            })?;
        }
        if let Some((layout, dir)) = self.source() {
            info!(
                from = %dir.display(),
                to = %self.current.display(),
                layout_from = layout,
                layout_to = MAP_LAYOUT,
                "pinned maps moved to this agent's layout; the older pins are removed"
            );
        }
        Ok(())
    }
}

/// Removes every pin in `dir` and the directory; a missing directory is already removed.
pub(super) fn remove_pins(dir: &Path) -> io::Result<()> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                fs::remove_file(entry?.path())?;
            }
            fs::remove_dir(dir)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The map directories under `bpffs` with their layout version: `maps` (layouts 1 and 2)
/// and `maps-v<N>`.
fn map_dirs(bpffs: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let entries = match fs::read_dir(bpffs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let layout = if name == UNVERSIONED {
            Some(UNVERSIONED_LAYOUT)
        } else {
            name.strip_prefix(UNVERSIONED)
                .and_then(|rest| rest.strip_prefix("-v"))
                .and_then(|n| n.parse().ok())
        };
        if let Some(layout) = layout {
            dirs.push((layout, entry.path()));
        }
    }
    Ok(dirs)
}

/// Copies the entries of `old` (described by `info`) into `new`, converting them from the
/// older shape. Returns the number of entries, or `None` for a shape with no conversion.
fn convert(
    name: &str,
    info: &MapInfo,
    old: MapData,
    new: &mut Map,
) -> Result<Option<usize>, MapError> {
    let old = Map::from_map_data(old)?;
    let sizes =
        |k: usize, v: usize| info.key_size() as usize == k && info.value_size() as usize == v;
    let same = |k: usize, v: usize| sizes(k, v).then_some(());
    Ok(match name {
        // Layout 1: one entry per address, for every caller; today's fallback entry.
        map_names::SERVICES if sizes(size_of::<ServiceKeyV1>(), size_of::<Service>()) => {
            Some(rekey::<_, _, Service>(old, new, |k: ServiceKeyV1| {
                ServiceKey {
                    addr: k.addr,
                    port: k.port,
                    _pad: 0,
                    generation: ANY_GENERATION,
                }
            })?)
        }
        map_names::SERVICES => same(size_of::<ServiceKey>(), size_of::<Service>())
            .map(|()| rekey::<_, _, Service>(old, new, |k: ServiceKey| k))
            .transpose()?,
        map_names::BACKENDS => same(size_of::<BackendKey>(), size_of::<Backend>())
            .map(|()| rekey::<_, _, Backend>(old, new, |k: BackendKey| k))
            .transpose()?,
        map_names::CALLERS => same(size_of::<u64>(), size_of::<Caller>())
            .map(|()| rekey::<_, _, Caller>(old, new, |k: u64| k))
            .transpose()?,
        map_names::DNS_ORIGINS => same(size_of::<u64>(), size_of::<DnsOrigin>())
            .map(|()| rekey::<_, _, DnsOrigin>(old, new, |k: u64| k))
            .transpose()?,
        map_names::DNS_PEERS => same(size_of::<DnsPeer>(), size_of::<u64>())
            .map(|()| rekey::<_, _, u64>(old, new, |k: DnsPeer| k))
            .transpose()?,
        map_names::DNS_LISTENER => same(size_of::<u32>(), size_of::<DnsListener>())
            .map(|()| copy_array::<DnsListener>(old, new))
            .transpose()?,
        map_names::ADDRESS_STACKS => same(size_of::<u32>(), size_of::<u32>())
            .map(|()| rekey::<_, _, u32>(old, new, |k: u32| k))
            .transpose()?,
        // Counters only ever gain indexes at the end: the ones both have keep their counts.
        map_names::COUNTERS => same(size_of::<u32>(), size_of::<u64>())
            .map(|()| copy_counters(old, new))
            .transpose()?,
        _ => None,
    })
}

/// Inserts every entry of hash map `old` into `new` under the key `key` makes of it.
fn rekey<K0: Pod, K: Pod, V: Pod>(
    old: Map,
    new: &mut Map,
    key: impl Fn(K0) -> K,
) -> Result<usize, MapError> {
    let old: HashMap<MapData, K0, V> = HashMap::try_from(old)?;
    let mut new: HashMap<&mut MapData, K, V> = HashMap::try_from(new)?;
    let mut entries = 0;
    for entry in old.iter() {
        let (k, v) = entry?;
        new.insert(&key(k), &v, 0)?;
        entries += 1;
    }
    Ok(entries)
}

/// Copies array `old` into `new`, index by index, as far as both reach.
fn copy_array<V: Pod>(old: Map, new: &mut Map) -> Result<usize, MapError> {
    let old: Array<MapData, V> = Array::try_from(old)?;
    let mut new: Array<&mut MapData, V> = Array::try_from(new)?;
    let len = old.len().min(new.len());
    for index in 0..len {
        new.set(index, &old.get(&index, 0)?, 0)?;
    }
    Ok(len as usize)
}

/// Copies per-CPU counters `old` into `new`, index by index, as far as both reach.
fn copy_counters(old: Map, new: &mut Map) -> Result<usize, MapError> {
    let old: PerCpuArray<MapData, u64> = PerCpuArray::try_from(old)?;
    let mut new: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(new)?;
    let len = old.len().min(new.len());
    for index in 0..len {
        new.set(index, old.get(&index, 0)?, 0)?;
    }
    Ok(len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_directories_are_told_apart_by_the_layout_in_their_name() -> io::Result<()> {
        let bpffs = tempfile::tempdir()?;
        for name in [
            "maps", "maps-v3", "maps-v10", "links", "mapsx", "maps-vx", "maps-v",
        ] {
            fs::create_dir(bpffs.path().join(name))?;
        }
        let mut found = map_dirs(bpffs.path())?;
        found.sort();
        let expected: Vec<_> = [(2, "maps"), (3, "maps-v3"), (10, "maps-v10")]
            .into_iter()
            .map(|(layout, name)| (layout, bpffs.path().join(name)))
            .collect();
        assert_eq!(found, expected);
        assert_eq!(
            map_dir(bpffs.path()),
            bpffs.path().join(format!("maps-v{MAP_LAYOUT}"))
        );
        Ok(())
    }
}
