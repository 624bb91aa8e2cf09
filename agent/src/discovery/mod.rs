//! Service discovery on this server, from central's `records/`: each service's stable
//! service address steered (by the `connect4` program) to the containers of the serving
//! generation. Per-caller generations and the DNS server build on the same records.

mod addresses;

pub use addresses::run;
