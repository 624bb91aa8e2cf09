//! Service discovery on this server, from central's `records/` and this server's own
//! containers: each service's stable service address steered (by `connect4`) to the
//! containers of the caller's generation, each container address tied to its stack for
//! the isolation between stacks, and the records and callers the DNS server answers from.

mod addresses;
mod callers;
mod follow;
mod isolation;
mod records;

pub use callers::{Callers, LocalCaller};
pub use follow::run;
pub use isolation::keep as keep_isolation;
pub use records::{Directory, Found, Records};
