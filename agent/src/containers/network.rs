//! The per-server Docker network: a bridge with this server's ContainerNet subnet.

use std::{collections::HashMap, net::Ipv4Addr};

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};

use super::Engine;

/// A network that could not be made or does not fit.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "network {name} exists with subnet {found:?}, not {wanted}; remove it (docker network rm {name}) or fix the server's subnet"
    )]
    Mismatch {
        name: String,
        found: Option<String>,
        wanted: String,
    },
    #[error(
        "network {other} already uses {wanted}, which this server's network {name} needs; \
         remove it (docker network rm {other}) or start the agent with --docker-network {other}"
    )]
    Taken {
        name: String,
        other: String,
        wanted: String,
    },
    #[error(
        "making network {name} again with the mesh's MTU: {source}; remove it (docker network rm {name}) and the agent makes it anew"
    )]
    Remake {
        name: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("creating network {name}: {source}")]
    Engine {
        name: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// The bridge driver's option that sets the MTU of the bridge and of every container's
/// interface on it.
const MTU_OPTION: &str = "com.docker.network.driver.mtu";

/// Makes sure network `name` exists with `subnet/24`, gateway `.1` and, when given, `mtu`
/// (bytes); an existing one with another subnet is an error, never silently reused. One
/// with another MTU is made again while no container is attached; with containers it
/// stays (Docker cannot change a network's options) and the mesh sets the MTU of its
/// bridge and containers live (see `mesh::mtu`).
pub async fn ensure_network(
    engine: &Engine,
    name: &str,
    subnet: Ipv4Addr,
    mtu: Option<u32>,
) -> Result<(), NetworkError> {
    let wanted = format!("{subnet}/24");
    let docker = engine.docker();
    if let Ok(existing) = docker.inspect_network(name, None).await {
        let found = existing
            .ipam
            .and_then(|ipam| ipam.config)
            .and_then(|configs| configs.into_iter().find_map(|c| c.subnet));
        if found.as_deref() != Some(wanted.as_str()) {
            return Err(NetworkError::Mismatch {
                name: name.into(),
                found,
                wanted,
            });
        }
        let options = existing.options.unwrap_or_default();
        let stale = mtu.is_some_and(|m| options.get(MTU_OPTION) != Some(&m.to_string()));
        if !stale || !existing.containers.unwrap_or_default().is_empty() {
            return Ok(());
        }
        tracing::info!(
            network = name,
            ?mtu,
            "making the container network again with the mesh's MTU"
        );
        docker
            .remove_network(name)
            .await
            .map_err(|source| NetworkError::Remake {
                name: name.into(),
                source,
            })?;
    }
    let [a, b, c, _] = subnet.octets();
    let request = NetworkCreateRequest {
        name: name.into(),
        driver: Some("bridge".into()),
        ipam: Some(Ipam {
            config: Some(vec![IpamConfig {
                subnet: Some(wanted.clone()),
                gateway: Some(Ipv4Addr::new(a, b, c, 1).to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        labels: Some(HashMap::from([(
            "ferry.network".to_string(),
            "1".to_string(),
        )])),
        options: mtu.map(|m| HashMap::from([(MTU_OPTION.to_string(), m.to_string())])),
        ..Default::default()
    };
    let Err(source) = docker.create_network(request).await else {
        return Ok(());
    };
    // Docker's own "pool overlaps" names neither network: find the one holding the subnet.
    let holder = docker
        .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|n| {
            n.ipam
                .as_ref()
                .and_then(|i| i.config.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.subnet.as_deref() == Some(&wanted)))
        })
        .and_then(|n| n.name);
    Err(match holder {
        Some(other) => NetworkError::Taken {
            name: name.into(),
            other,
            wanted,
        },
        None => NetworkError::Engine {
            name: name.into(),
            source,
        },
    })
}
