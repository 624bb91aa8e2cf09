//! Stacks and generations on the real store: a generation serves only once healthy, a
//! failed one never does, flips retire the old one, rollback serves it again.

use std::{collections::BTreeMap, sync::Arc};

use ferry_api::servicefile::{Service, parse};
use ferry_central::{
    state::{Phase, StackError, Stacks},
    store::sqlite::SqliteStore,
};

fn stacks(dir: &tempfile::TempDir) -> Stacks<SqliteStore> {
    Stacks::new(Arc::new(
        SqliteStore::open(&dir.path().join("central.db")).expect("store"),
    ))
}

fn services() -> BTreeMap<String, Service> {
    parse(
        "service.yml",
        "services:\n  web:\n    ports: [\"3000:80\"]\n  api:\n    image: node:20\n",
    )
    .expect("valid")
    .stack
    .services
}

#[test]
fn deploys_make_numbered_generations_and_only_healthy_ones_serve() -> Result<(), StackError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let stacks = stacks(&dir);
    let first = stacks.create_generation("shop", services(), "aaa")?;
    assert_eq!((first.number, &first.phase), (1, &Phase::Deploying));
    assert_eq!(
        first.services["web"].ports[0].http,
        Some(80),
        "the service spec is kept whole"
    );

    // Not healthy yet: it may not serve.
    let err = stacks.flip("shop", 1).unwrap_err();
    assert!(
        err.to_string()
            .contains("generation 1 of \"shop\" is deploying, so it cannot serve"),
        "{err}"
    );

    stacks.finish_deploy("shop", 1, Ok(()))?;
    let stack = stacks.flip("shop", 1)?;
    assert_eq!((stack.serving, stack.previous), (Some(1), None));

    // Generation 2 fails its checks: it never serves, 1 keeps serving.
    stacks.create_generation("shop", services(), "bbb")?;
    stacks.finish_deploy("shop", 2, Err("web-2 answered 500 on /healthz".into()))?;
    let err = stacks.flip("shop", 2).unwrap_err();
    assert!(
        err.to_string()
            .contains("failed (web-2 answered 500 on /healthz)"),
        "{err}"
    );
    assert_eq!(stacks.stack("shop")?.serving, Some(1));

    // Generation 3 is healthy and takes over; 1 is retired, then served again by rollback.
    stacks.create_generation("shop", services(), "ccc")?;
    stacks.finish_deploy("shop", 3, Ok(()))?;
    let stack = stacks.flip("shop", 3)?;
    assert_eq!((stack.serving, stack.previous), (Some(3), Some(1)));
    assert_eq!(stacks.generation("shop", 1)?.phase, Phase::Retired);
    // Rollback deploys 1 again; 3 serves until 1 is healthy.
    let again = stacks.rollback("shop", |_| Ok(Vec::new()))?;
    assert_eq!((again.number, &again.phase), (1, &Phase::Deploying));
    assert_eq!(stacks.stack("shop")?.serving, Some(3));
    let stack = stacks.serve_deployed("shop", 1, &[], |_| Ok(Vec::new()))?;
    assert_eq!((stack.serving, stack.previous), (Some(1), Some(3)));
    assert_eq!(stacks.generation("shop", 1)?.phase, Phase::Serving);
    assert_eq!(stacks.generation("shop", 3)?.phase, Phase::Retired);

    let phases: Vec<u64> = stacks
        .generations("shop")?
        .iter()
        .map(|g| g.number)
        .collect();
    assert_eq!(phases, [1, 2, 3]);
    Ok(())
}

#[test]
fn concurrent_deploys_get_distinct_generations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stacks = Arc::new(stacks(&dir));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let stacks = stacks.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| {
                        stacks
                            .create_generation("shop", services(), "x")
                            .map(|g| g.number)
                    })
                    .collect::<Result<Vec<u64>, _>>()
            })
        })
        .collect();
    let mut numbers: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread").expect("deploy"))
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=40).collect::<Vec<_>>());
    assert_eq!(stacks.stack("shop").expect("stack").latest, 40);
}

#[test]
fn bad_requests_change_nothing() -> Result<(), StackError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let stacks = stacks(&dir);
    assert!(matches!(
        stacks.create_generation("Shop!", services(), "x"),
        Err(StackError::BadName { .. })
    ));
    assert!(matches!(
        stacks.flip("ghost", 1),
        Err(StackError::UnknownStack { .. })
    ));
    stacks.create_generation("shop", services(), "x")?;
    assert!(matches!(
        stacks.flip("shop", 9),
        Err(StackError::UnknownGeneration { .. })
    ));
    assert!(matches!(
        stacks.rollback("shop", |_| Ok(Vec::new())),
        Err(StackError::NothingToRollBack { .. })
    ));
    stacks.finish_deploy("shop", 1, Ok(()))?;
    let err = stacks
        .finish_deploy("shop", 1, Err("late".into()))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("is healthy, so it cannot finish deploying"),
        "{err}"
    );
    assert_eq!(stacks.generation("shop", 1)?.phase, Phase::Healthy);
    assert_eq!(stacks.list()?.len(), 1);
    Ok(())
}
