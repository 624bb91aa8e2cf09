//! Stacks and their generations: every deploy makes generation N+1; a generation serves
//! only after it was marked healthy; a flip moves serving to it and retires the one before,
//! which a rollback can serve again.
//!
//! Keys: `stacks/<stack>` holds a [`Stack`]; `generations/<stack>/<N, 10 digits>` holds a
//! [`Generation`], zero-padded so key order is generation order. Every change is one
//! compare-and-put transaction on the records it reads, so two deploys or a deploy and a
//! flip racing each other cannot interleave: one of them retries or fails, never both win.

use std::{collections::BTreeMap, sync::Arc};

use ferry_api::servicefile::Service;
pub use ferry_api::types::{Generation, Phase, Stack};
use serde::{Deserialize, Serialize};

use crate::store::{Compare, KeyValue, Op, Store, StoreError, TxnOutcome};

/// Errors from stack bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{name:?} is not a valid stack name: use 1 to 63 lower-case letters, digits and '-'")]
    BadName { name: String },
    #[error("no stack named {name:?}; deploy it first")]
    UnknownStack { name: String },
    #[error("stack {stack:?} has no generation {number}")]
    UnknownGeneration { stack: String, number: u64 },
    #[error("generation {number} of {stack:?} is {phase}, so it cannot {action}")]
    WrongPhase {
        stack: String,
        number: u64,
        phase: String,
        action: &'static str,
    },
    #[error("stack {stack:?} has no earlier generation to roll back to")]
    NothingToRollBack { stack: String },
    #[error("the record at {key} is unreadable: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// How often a change retries after losing a race.
const ATTEMPTS: usize = 16;

/// Stack bookkeeping over a store.
pub struct Stacks<S: Store> {
    store: Arc<S>,
}

use ferry_api::keys::{generation as generation_key, stack as stack_key};

fn phase_name(phase: &Phase) -> String {
    match phase {
        Phase::Deploying => "deploying".into(),
        Phase::Healthy => "healthy".into(),
        Phase::Failed { reason } => format!("failed ({reason})"),
        Phase::Serving => "serving".into(),
        Phase::Retired => "retired".into(),
    }
}

fn decode<T: for<'de> Deserialize<'de>>(kv: &KeyValue) -> Result<T, StackError> {
    serde_json::from_slice(&kv.value).map_err(|source| StackError::Corrupt {
        key: kv.key.clone(),
        source,
    })
}

pub(crate) fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StackError> {
    serde_json::to_vec(value).map_err(|source| StackError::Corrupt {
        key: key.into(),
        source,
    })
}

fn contended() -> StackError {
    StackError::Store(StoreError::Contended {
        what: "a stack change",
    })
}

impl<S: Store> Stacks<S> {
    /// Stack bookkeeping on `store`.
    pub fn new(store: Arc<S>) -> Self {
        Self { store }
    }

    /// Checks a stack name.
    pub fn check_name(&self, name: &str) -> Result<(), StackError> {
        check_name(name)
    }

    /// A stack's pointers.
    pub fn stack(&self, name: &str) -> Result<Stack, StackError> {
        self.read_stack(name)?
            .map(|(stack, _)| stack)
            .ok_or_else(|| StackError::UnknownStack { name: name.into() })
    }

    /// Every stack.
    pub fn list(&self) -> Result<Vec<Stack>, StackError> {
        let (records, _) = self.store.list(ferry_api::keys::STACKS)?;
        records.iter().map(decode).collect()
    }

    /// One generation.
    pub fn generation(&self, stack: &str, number: u64) -> Result<Generation, StackError> {
        self.read_generation(stack, number).map(|(g, _)| g)
    }

    /// Every generation of a stack, oldest first.
    pub fn generations(&self, stack: &str) -> Result<Vec<Generation>, StackError> {
        let (records, _) = self.store.list(&ferry_api::keys::generations_of(stack))?;
        records.iter().map(decode).collect()
    }

    /// Makes generation N+1 of `stack` (creating the stack on its first deploy).
    pub fn create_generation(
        &self,
        stack: &str,
        services: BTreeMap<String, Service>,
        source_digest: &str,
    ) -> Result<Generation, StackError> {
        self.create_generation_with(stack, services, source_digest, |_| {
            Ok::<_, StackError>(Vec::new())
        })
    }

    /// [`create_generation`](Self::create_generation), with the writes `extra` makes for the
    /// new generation committed in the same transaction (its placement, for one).
    pub fn create_generation_with<E: From<StackError>>(
        &self,
        stack: &str,
        services: BTreeMap<String, Service>,
        source_digest: &str,
        extra: impl Fn(&Generation) -> Result<Vec<Op>, E>,
    ) -> Result<Generation, E> {
        check_name(stack)?;
        for _ in 0..ATTEMPTS {
            let (mut record, revision) = match self.read_stack(stack)? {
                Some(found) => found,
                None => (
                    Stack {
                        name: stack.into(),
                        latest: 0,
                        serving: None,
                        previous: None,
                    },
                    0,
                ),
            };
            record.latest += 1;
            let generation = Generation {
                stack: stack.into(),
                number: record.latest,
                services: services.clone(),
                source_digest: source_digest.into(),
                phase: Phase::Deploying,
            };
            let (sk, gk) = (stack_key(stack), generation_key(stack, generation.number));
            let mut ops = vec![
                Op::Put(sk.clone(), encode(&sk, &record)?),
                Op::Put(gk.clone(), encode(&gk, &generation)?),
            ];
            ops.extend(extra(&generation)?);
            let outcome = self
                .store
                .txn(&[Compare::ModRevision(sk.clone(), revision)], &ops)
                .map_err(StackError::from)?;
            if let TxnOutcome::Committed(_) = outcome {
                return Ok(generation);
            }
        }
        Err(contended().into())
    }

    /// Records the outcome of a generation's health checks: Healthy, or Failed with why.
    pub fn finish_deploy(
        &self,
        stack: &str,
        number: u64,
        outcome: Result<(), String>,
    ) -> Result<Generation, StackError> {
        let phase = match outcome {
            Ok(()) => Phase::Healthy,
            Err(reason) => Phase::Failed { reason },
        };
        self.change_phase(stack, number, "finish deploying", phase, &[])
    }

    /// Fails a deploying generation, committing `extra` (stopping its containers) with it.
    pub fn fail(
        &self,
        stack: &str,
        number: u64,
        reason: String,
        extra: &[Op],
    ) -> Result<Generation, StackError> {
        self.change_phase(stack, number, "fail", Phase::Failed { reason }, extra)
    }

    /// Deploys a retired generation again (a rollback): it goes back to Deploying, and
    /// `extra` (its containers wanted again, its old reports cleared) commits with it.
    pub fn redeploy(
        &self,
        stack: &str,
        number: u64,
        extra: &[Op],
    ) -> Result<Generation, StackError> {
        self.change_phase(stack, number, "be deployed again", Phase::Deploying, extra)
    }

    /// Commits the writes `change` makes for the stack as it is (a scale of its serving
    /// generation), provided the stack record did not change meanwhile: a deploy, flip,
    /// rollback or another change racing it makes it look again. Returns the stack it saw and `change`'s value.
    pub fn change_with<T, E: From<StackError>>(
        &self,
        stack: &str,
        change: impl Fn(&Stack) -> Result<(Vec<Op>, T), E>,
    ) -> Result<(Stack, T), E> {
        for _ in 0..ATTEMPTS {
            let (record, revision) = self
                .read_stack(stack)?
                .ok_or_else(|| StackError::UnknownStack { name: stack.into() })?;
            let (mut ops, value) = change(&record)?;
            // Written back unchanged: its new revision makes a second change that read the
            // same state (another scale) look again, so neither overwrites the other.
            let key = stack_key(stack);
            ops.push(Op::Put(key.clone(), encode(&key, &record)?));
            let outcome = self
                .store
                .txn(&[Compare::ModRevision(stack_key(stack), revision)], &ops)
                .map_err(StackError::from)?;
            if let TxnOutcome::Committed(_) = outcome {
                return Ok((record, value));
            }
        }
        Err(contended().into())
    }

    fn change_phase(
        &self,
        stack: &str,
        number: u64,
        action: &'static str,
        phase: Phase,
        extra: &[Op],
    ) -> Result<Generation, StackError> {
        let from_ok = |from: &Phase| match phase {
            Phase::Deploying => *from == Phase::Retired,
            _ => *from == Phase::Deploying,
        };
        for _ in 0..ATTEMPTS {
            let (mut generation, revision) = self.read_generation(stack, number)?;
            if !from_ok(&generation.phase) {
                return Err(wrong_phase(&generation, action));
            }
            generation.phase = phase.clone();
            let key = generation_key(stack, number);
            let mut ops = vec![Op::Put(key.clone(), encode(&key, &generation)?)];
            ops.extend_from_slice(extra);
            let outcome = self
                .store
                .txn(&[Compare::ModRevision(key.clone(), revision)], &ops)?;
            if let TxnOutcome::Committed(_) = outcome {
                return Ok(generation);
            }
        }
        Err(contended())
    }

    /// Serves generation `number`: it must be healthy (or retired). The one serving before
    /// is retired and remembered for rollback.
    pub fn flip(&self, stack: &str, number: u64) -> Result<Stack, StackError> {
        self.flip_from(stack, number, false, &[], |_| Ok(Vec::new()))
    }

    /// Serves a deploying generation whose every container passed its checks, in one
    /// transaction with `extra` and `retire(old)`'s writes for the generation it takes over
    /// from. If it already serves, `extra` is written alone.
    pub fn serve_deployed(
        &self,
        stack: &str,
        number: u64,
        extra: &[Op],
        retire: impl Fn(u64) -> Result<Vec<Op>, StackError>,
    ) -> Result<Stack, StackError> {
        self.flip_from(stack, number, true, extra, retire)
    }

    fn flip_from(
        &self,
        stack: &str,
        number: u64,
        deploying: bool,
        extra: &[Op],
        retire: impl Fn(u64) -> Result<Vec<Op>, StackError>,
    ) -> Result<Stack, StackError> {
        for _ in 0..ATTEMPTS {
            let (mut record, stack_revision) = self
                .read_stack(stack)?
                .ok_or_else(|| StackError::UnknownStack { name: stack.into() })?;
            let (mut target, target_revision) = self.read_generation(stack, number)?;
            match (&target.phase, deploying) {
                (Phase::Deploying, true) | (Phase::Healthy | Phase::Retired, false) => {}
                (Phase::Serving, _) => {
                    if !extra.is_empty() {
                        self.store.txn(&[], extra)?;
                    }
                    return Ok(record);
                }
                _ => return Err(wrong_phase(&target, "serve")),
            }
            let mut compares = vec![
                Compare::ModRevision(stack_key(stack), stack_revision),
                Compare::ModRevision(generation_key(stack, number), target_revision),
            ];
            let mut ops = extra.to_vec();
            if let Some(old) = record.serving {
                let (mut previous, previous_revision) = self.read_generation(stack, old)?;
                previous.phase = Phase::Retired;
                let key = generation_key(stack, old);
                compares.push(Compare::ModRevision(key.clone(), previous_revision));
                ops.push(Op::Put(key.clone(), encode(&key, &previous)?));
                ops.extend(retire(old)?);
            }
            target.phase = Phase::Serving;
            record.previous = record.serving;
            record.serving = Some(number);
            let (sk, gk) = (stack_key(stack), generation_key(stack, number));
            ops.push(Op::Put(gk.clone(), encode(&gk, &target)?));
            ops.push(Op::Put(sk.clone(), encode(&sk, &record)?));
            if let TxnOutcome::Committed(_) = self.store.txn(&compares, &ops)? {
                return Ok(record);
            }
        }
        Err(contended())
    }

    /// Starts serving the generation that served before the current one: it is deployed
    /// again (with `extra`'s writes) and takes over once its containers pass their checks.
    pub fn rollback(
        &self,
        stack: &str,
        extra: impl Fn(&Generation) -> Result<Vec<Op>, StackError>,
    ) -> Result<Generation, StackError> {
        let record = self.stack(stack)?;
        let previous = record
            .previous
            .ok_or_else(|| StackError::NothingToRollBack {
                stack: stack.into(),
            })?;
        let generation = self.generation(stack, previous)?;
        self.redeploy(stack, previous, &extra(&generation)?)
    }

    fn read_stack(&self, name: &str) -> Result<Option<(Stack, u64)>, StackError> {
        match self.store.get(&stack_key(name))? {
            Some(kv) => Ok(Some((decode(&kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    fn read_generation(&self, stack: &str, number: u64) -> Result<(Generation, u64), StackError> {
        let kv = self
            .store
            .get(&generation_key(stack, number))?
            .ok_or_else(|| StackError::UnknownGeneration {
                stack: stack.into(),
                number,
            })?;
        Ok((decode(&kv)?, kv.mod_revision))
    }
}

fn wrong_phase(generation: &Generation, action: &'static str) -> StackError {
    StackError::WrongPhase {
        stack: generation.stack.clone(),
        number: generation.number,
        phase: phase_name(&generation.phase),
        action,
    }
}

fn check_name(name: &str) -> Result<(), StackError> {
    if super::valid_name(name) {
        Ok(())
    } else {
        Err(StackError::BadName { name: name.into() })
    }
}
