//! Reading the kernel programs' per-CPU event counters.

use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, MapError, PerCpuArray};
use ferry_ebpf_abi::{Counter, map_names};

/// Errors from reading the counters map.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("open pinned map {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("read counter {counter:?}: {source}")]
    Read {
        counter: Counter,
        #[source]
        source: MapError,
    },
}

/// The data plane's event counters, summed over CPUs.
pub struct Counters {
    map: PerCpuArray<MapData, u64>,
}

impl Counters {
    /// Opens the counters map pinned in `map_dir`.
    pub fn open(map_dir: &Path) -> Result<Self, CounterError> {
        let path = map_dir.join(map_names::COUNTERS);
        let open_error = |source| CounterError::Open {
            path: path.clone(),
            source,
        };
        let data = MapData::from_pin(&path).map_err(open_error)?;
        let map = PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(open_error)?;
        Ok(Self { map })
    }

    /// The total of `counter` over all CPUs.
    pub fn get(&self, counter: Counter) -> Result<u64, CounterError> {
        let values = self
            .map
            .get(&(counter as u32), 0)
            .map_err(|source| CounterError::Read { counter, source })?;
        Ok(values.iter().sum())
    }
}
