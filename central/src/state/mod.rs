//! Central's typed state on top of the [`store`](crate::store): what lives under which
//! key, and the rules that keep it consistent.
//!
//! Key layout (values are JSON):
//! - `servers/<name>`: a [`Server`], with its ContainerNet subnet;
//! - `subnets/<index>`: the name of the server holding `10.66.<index>.0/24`, so a subnet is
//!   taken by creating a key that must not exist: two servers can never get the same one;
//! - `stacks/<stack>` and `generations/<stack>/<N>`: see [`stacks`](Stacks);
//! - `variables/<stack>`: the stack's variables, see [`Variables`].

mod servers;
mod stacks;
mod variables;

/// Whether `name` may name a server or a stack: 1 to 63 lower-case letters, digits and
/// '-', not starting with '-' (names appear in keys, DNS names and Docker labels).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub use servers::{ContainerNet, Server, ServerError, Servers};
pub(crate) use stacks::encode;
pub use stacks::{Generation, Phase, Stack, StackError, Stacks};
pub use variables::{MAX_VALUE_BYTES, MAX_VARIABLES, VariableError, Variables};
