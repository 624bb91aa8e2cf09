//! Central's typed state on top of the [`store`](crate::store): what lives under which
//! key, and the rules that keep it consistent.
//!
//! Key layout (values are JSON):
//! - `servers/<name>`: a [`Server`], with its ContainerNet subnet;
//! - `subnets/<index>`: the name of the server holding `10.66.<index>.0/24`, so a subnet is
//!   taken by creating a key that must not exist: two servers can never get the same one;
//! - `stacks/<stack>` and `generations/<stack>/<N>`: see [`stacks`](Stacks).

mod servers;
mod stacks;

pub use servers::{ContainerNet, Server, ServerError, Servers};
pub(crate) use stacks::encode;
pub use stacks::{Generation, Phase, Stack, StackError, Stacks};
