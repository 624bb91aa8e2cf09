//! Server registration and ContainerNet subnets on the real store.

use std::{collections::BTreeSet, net::Ipv4Addr, sync::Arc};

use ferry_central::{
    state::{ContainerNet, ServerError, Servers},
    store::sqlite::SqliteStore,
};

fn servers(dir: &tempfile::TempDir) -> Servers<SqliteStore> {
    let store = SqliteStore::open(&dir.path().join("central.db")).expect("open store");
    Servers::new(Arc::new(store), ContainerNet::default())
}

#[test]
fn each_server_gets_its_own_subnet_and_a_removed_one_is_released() -> Result<(), ServerError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let servers = servers(&dir);
    let a = servers.register("alpha", "pubkey-a", ep(1))?;
    let b = servers.register("bravo", "pubkey-b", ep(2))?;
    let c = servers.register("charlie", "pubkey-c", ep(3))?;
    assert_eq!(servers.subnet_of(&a), (Ipv4Addr::new(10, 66, 1, 0), 24));
    assert_eq!((b.subnet_index, c.subnet_index), (2, 3));

    assert_eq!(servers.remove("bravo")?.subnet_index, 2);
    let d = servers.register("delta", "pubkey-d", ep(4))?;
    assert_eq!(d.subnet_index, 2, "the released subnet is reused");
    let names: Vec<String> = servers.list()?.into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["alpha", "charlie", "delta"]);

    // Registrations survive central restarting.
    drop(servers);
    let servers = self::servers(&dir);
    assert_eq!(servers.get("delta")?.subnet_index, 2);
    Ok(())
}

#[test]
fn concurrent_registrations_never_share_a_subnet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let servers = Arc::new(servers(&dir));
    let handles: Vec<_> = (0..6)
        .map(|t| {
            let servers = servers.clone();
            std::thread::spawn(move || {
                (0..15)
                    .map(|i| {
                        servers
                            .register(&format!("s{t}-{i}"), &format!("k{t}-{i}"), ep(t * 15 + i))
                            .map(|s| s.subnet_index)
                    })
                    .collect::<Result<Vec<u8>, _>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.join().expect("thread").expect("registration"));
    }
    let distinct: BTreeSet<u8> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 90, "{all:?}");
    assert_eq!(distinct, (1..=90).collect());
}

#[test]
fn bad_requests_are_refused_with_what_to_do() -> Result<(), ServerError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let servers = servers(&dir);
    servers.register("alpha", "k", ep(1))?;
    let err = servers.register("alpha", "k2", ep(2)).unwrap_err();
    assert!(
        err.to_string()
            .contains("already registered; remove it first"),
        "{err}"
    );
    let err = servers.register("Alpha Server", "k", ep(1)).unwrap_err();
    assert!(matches!(err, ServerError::BadName { .. }), "{err}");
    let err = servers.remove("ghost").unwrap_err();
    assert!(matches!(err, ServerError::Unknown { .. }), "{err}");
    assert_eq!(servers.list()?.len(), 1, "nothing changed");
    Ok(())
}

#[test]
fn the_network_runs_out_after_254_servers() -> Result<(), ServerError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let servers = servers(&dir);
    for i in 0..254 {
        servers.register(&format!("s{i}"), &format!("k{i}"), ep(i))?;
    }
    let err = servers.register("one-too-many", "k", ep(300)).unwrap_err();
    assert!(
        err.to_string()
            .contains("every subnet of the container network is taken"),
        "{err}"
    );
    Ok(())
}

/// Endpoint number `n`: every server has its own (central refuses a taken one).
fn ep(n: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([192, 0, 2, 1], 20_000 + n))
}

#[test]
fn a_server_cannot_take_another_servers_endpoint_or_key() -> Result<(), ServerError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let servers = servers(&dir);
    servers.register("alpha", "key-a", ep(1))?;
    let err = servers.register("bravo", "key-b", ep(1)).unwrap_err();
    assert!(
        matches!(&err, ServerError::EndpointTaken { by, .. } if by == "alpha")
            && err.to_string().contains("--endpoint"),
        "{err}"
    );
    let err = servers.register("bravo", "key-a", ep(2)).unwrap_err();
    assert!(
        matches!(&err, ServerError::KeyTaken { by } if by == "alpha"),
        "{err}"
    );
    assert_eq!(servers.list()?.len(), 1, "a refused join left a record");
    Ok(())
}

#[test]
fn a_rotation_takes_one_new_key_for_the_newest_request() -> Result<(), ServerError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let servers = servers(&dir);
    servers.register("alpha", "key-a", ep(1))?;
    servers.register("bravo", "key-b", ep(2))?;
    let asked = servers.request_rotation("alpha")?;
    assert_eq!((asked.key_requested, asked.key_generation), (1, 0));
    // An answer to another request, or another server's key, is refused.
    let err = servers.publish_key("alpha", "key-n", 0).unwrap_err();
    assert!(
        matches!(
            err,
            ServerError::StaleRotation {
                requested: 1,
                given: 0,
                ..
            }
        ),
        "{err}"
    );
    let err = servers.publish_key("alpha", "key-b", 1).unwrap_err();
    assert!(matches!(err, ServerError::KeyTaken { .. }), "{err}");
    let done = servers.publish_key("alpha", "key-n", 1)?;
    assert_eq!(
        (done.wireguard_public_key.as_str(), done.key_generation),
        ("key-n", 1)
    );
    assert_eq!(servers.get("alpha")?, done);
    assert_eq!(servers.request_rotation("alpha")?.key_requested, 2);
    let err = servers.request_rotation("charlie").unwrap_err();
    assert!(matches!(err, ServerError::Unknown { .. }), "{err}");
    Ok(())
}
