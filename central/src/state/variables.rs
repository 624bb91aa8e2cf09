//! Stack variables: the values service.yml's `_env(NAME)` refers to, kept per stack at
//! `variables/<stack>` and resolved into each server's assignment at deploy, so a deploy
//! with a missing variable is refused before anything changes.

use std::{collections::BTreeMap, sync::Arc};

use ferry_api::servicefile::{EnvValue, Service, env_name};

use super::{StackError, read_json, update_json};
use crate::store::Store;

/// Most variables one stack may have.
pub const MAX_VARIABLES: usize = 256;
/// Longest value of one variable, in bytes.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;

/// Errors changing or using stack variables.
#[derive(Debug, thiserror::Error)]
pub enum VariableError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "service {service:?}: {key} is _env({name}), and stack {stack:?} has no variable {name}; \
         set it with `ferry env set --stack {stack} {name}=VALUE`, then deploy again"
    )]
    Missing {
        stack: String,
        service: String,
        key: String,
        name: String,
    },
}

/// Stack variables over a store.
pub struct Variables<S: Store> {
    store: Arc<S>,
}

fn key(stack: &str) -> String {
    ferry_api::keys::variables(stack)
}

impl<S: Store> Variables<S> {
    /// Stack variables on `store`.
    pub fn new(store: Arc<S>) -> Self {
        Self { store }
    }

    /// The npm registry and token a stack's builds use (its `NPM_REGISTRY` and `NPM_TOKEN`).
    pub fn npm(&self, stack: &str) -> Result<ferry_api::types::NpmRegistry, StackError> {
        use ferry_api::types::NpmRegistry;
        let vars = self.get(stack)?;
        Ok(NpmRegistry {
            registry: vars.get(NpmRegistry::REGISTRY_VARIABLE).cloned(),
            token: vars.get(NpmRegistry::TOKEN_VARIABLE).cloned(),
        })
    }

    /// A stack's variables.
    pub fn get(&self, stack: &str) -> Result<BTreeMap<String, String>, StackError> {
        Ok(read_json(self.store.as_ref(), &key(stack))?.0)
    }

    /// Sets `set` and removes `unset` in one change; checks everything first.
    pub fn change(
        &self,
        stack: &str,
        set: &BTreeMap<String, String>,
        unset: &[String],
    ) -> Result<BTreeMap<String, String>, VariableError> {
        for (name, value) in set {
            env_name(name).map_err(VariableError::Invalid)?;
            if value.len() > MAX_VALUE_BYTES {
                return Err(VariableError::Invalid(format!(
                    "{name} is {} bytes; a variable holds at most {MAX_VALUE_BYTES}",
                    value.len()
                )));
            }
        }
        update_json(
            self.store.as_ref(),
            &key(stack),
            "a variables change",
            |vars: &mut BTreeMap<String, String>| {
                for name in unset {
                    vars.remove(name);
                }
                vars.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                if vars.len() > MAX_VARIABLES {
                    return Err(VariableError::Invalid(format!(
                        "stack {stack:?} would have {} variables; the limit is {MAX_VARIABLES}",
                        vars.len()
                    )));
                }
                Ok(())
            },
        )
    }

    /// `services` with every `_env(NAME)` replaced by the stack's value of NAME.
    pub fn resolve(
        &self,
        stack: &str,
        services: &BTreeMap<String, Service>,
    ) -> Result<BTreeMap<String, Service>, VariableError> {
        let vars = self.get(stack)?;
        let mut resolved = services.clone();
        for (service, spec) in &mut resolved {
            for (env_key, value) in &mut spec.env_vars {
                if let EnvValue::Stack(name) = value {
                    let found = vars
                        .get(name.as_str())
                        .ok_or_else(|| VariableError::Missing {
                            stack: stack.into(),
                            service: service.clone(),
                            key: env_key.clone(),
                            name: name.clone(),
                        })?;
                    *value = EnvValue::Plain(found.clone());
                }
            }
        }
        Ok(resolved)
    }
}
