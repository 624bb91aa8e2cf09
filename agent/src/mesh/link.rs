//! rtnetlink verbs: create links, bring them up, add addresses and routes.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures_util::TryStreamExt as _;
use rtnetlink::{Handle, LinkUnspec, LinkWireguard, RouteMessageBuilder};
use tokio::task::JoinHandle;

/// A failed rtnetlink request, naming what it was for.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("open an rtnetlink socket: {0}")]
    Connect(#[source] io::Error),
    #[error("no network link named {name}")]
    NoSuchLink { name: String },
    #[error("{action} on link {name}: {source}")]
    Request {
        action: &'static str,
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// A network interface as [`Netlink::interfaces`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Whether it is up.
    pub up: bool,
    /// Whether it is a loopback device.
    pub loopback: bool,
    /// Its IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// Its MTU, bytes (0 if the kernel did not say).
    pub mtu: u32,
    /// The index of the bridge it is a port of, if any.
    pub master: Option<u32>,
    /// For one end of a veth pair: the other end, as (namespace id relative to this
    /// namespace, index there).
    pub peer: Option<(i32, u32)>,
}

/// An rtnetlink connection in the network namespace of the thread that opened it.
pub struct Netlink {
    handle: Handle,
    connection: JoinHandle<()>,
}

const EEXIST: i32 = libc::EEXIST;

impl Netlink {
    /// Opens a connection; must run inside a tokio runtime.
    pub fn connect() -> Result<Self, LinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Connect)?;
        Ok(Self {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    /// The index of the link called `name`.
    pub async fn index(&self, name: &str) -> Result<u32, LinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(LinkError::NoSuchLink { name: name.into() }),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                Err(LinkError::NoSuchLink { name: name.into() })
            }
            Err(source) => Err(request("look up", name, source)),
        }
    }

    /// Every interface of the namespace with its IPv4 addresses.
    pub async fn interfaces(&self) -> Result<Vec<Interface>, LinkError> {
        use rtnetlink::packet_route::{
            address::AddressAttribute,
            link::{LinkAttribute, LinkFlags, LinkLayerType},
        };
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(|source| request("list", "every link", source))?
        {
            let mut interface = Interface {
                index: link.header.index,
                name: String::new(),
                up: link.header.flags.contains(LinkFlags::Up),
                loopback: link.header.link_layer_type == LinkLayerType::Loopback,
                ipv4: Vec::new(),
                mtu: 0,
                master: None,
                peer: None,
            };
            let (mut peer_index, mut peer_netns) = (None, None);
            for attribute in link.attributes {
                match attribute {
                    LinkAttribute::IfName(name) => interface.name = name,
                    LinkAttribute::Mtu(mtu) => interface.mtu = mtu,
                    LinkAttribute::Controller(index) => interface.master = Some(index),
                    LinkAttribute::Link(index) => peer_index = Some(index),
                    LinkAttribute::LinkNetNsId(id) => peer_netns = Some(id),
                    _ => {}
                }
            }
            // A link in another namespace is a veth's other end (IFLA_LINK alone can also
            // name a lower device here, as a VLAN's does).
            interface.peer = peer_netns.zip(peer_index);
            out.push(interface);
        }
        let mut addresses = self.handle.address().get().execute();
        while let Some(address) = addresses
            .try_next()
            .await
            .map_err(|source| request("list addresses", "every link", source))?
        {
            let Some(interface) = out.iter_mut().find(|i| i.index == address.header.index) else {
                continue;
            };
            for attribute in &address.attributes {
                if let AddressAttribute::Local(std::net::IpAddr::V4(a))
                | AddressAttribute::Address(std::net::IpAddr::V4(a)) = attribute
                    && !interface.ipv4.contains(a)
                {
                    interface.ipv4.push(*a);
                }
            }
        }
        Ok(out)
    }

    /// Creates a WireGuard link called `name` unless it exists; returns its index.
    pub async fn add_wireguard(&self, name: &str) -> Result<u32, LinkError> {
        let result = self
            .handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await;
        tolerate_exists(result).map_err(|source| request("create wireguard link", name, source))?;
        self.index(name).await
    }

    /// Brings the link up.
    pub async fn set_up(&self, name: &str) -> Result<(), LinkError> {
        let index = self.index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|source| request("set up", name, source))
    }

    /// Adds `addr/prefix` to the link; an address already present is fine.
    pub async fn add_address(
        &self,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), LinkError> {
        let index = self.index(name).await?;
        let result = self
            .handle
            .address()
            .add(index, addr.into(), prefix)
            .execute()
            .await;
        tolerate_exists(result).map_err(|source| request("add address", name, source))
    }

    /// Routes `dest/prefix` through the link; a route already present is fine.
    pub async fn add_route(&self, name: &str, dest: Ipv4Addr, prefix: u8) -> Result<(), LinkError> {
        let index = self.index(name).await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest, prefix)
            .output_interface(index)
            .build();
        let result = self.handle.route().add(route).execute().await;
        tolerate_exists(result).map_err(|source| request("add route", name, source))
    }

    /// Sets the MTU (bytes) of the link with index `index`. (A link in another namespace
    /// cannot be named from here: the kernel answers IFLA_TARGET_NETNSID on a set with
    /// ENODEV, so its namespace is entered instead; see `containers::mtu`.)
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(|source| request("set mtu", &format!("index {index}"), source))
    }

    /// The index of the link the kernel would send a packet to `dest` through.
    pub async fn route_to(&self, dest: IpAddr) -> Result<Option<u32>, LinkError> {
        use rtnetlink::packet_route::route::RouteAttribute;
        let message = match dest {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .build(),
        };
        let mut routes = self.handle.route().get(message).execute();
        match routes.try_next().await {
            Ok(Some(route)) => Ok(route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            })),
            Ok(None) => Ok(None),
            // No route to it at all (ENETUNREACH, EHOSTUNREACH).
            Err(rtnetlink::Error::NetlinkError(e))
                if matches!(-e.raw_code(), libc::ENETUNREACH | libc::EHOSTUNREACH) =>
            {
                Ok(None)
            }
            Err(source) => Err(request("look up the route", &dest.to_string(), source)),
        }
    }

    /// The IPv4 routes through the link, as (destination, prefix length), in the main table.
    pub async fn routes_through(&self, name: &str) -> Result<Vec<(Ipv4Addr, u8)>, LinkError> {
        use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
        let index = self.index(name).await?;
        let mut out = Vec::new();
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(route) = routes
            .try_next()
            .await
            .map_err(|source| request("list routes", name, source))?
        {
            let through = route
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
            let dest = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(*a),
                _ => None,
            });
            let main = route.header.table == RouteHeader::RT_TABLE_MAIN;
            if let (true, true, Some(dest)) = (main, through, dest) {
                out.push((dest, route.header.destination_prefix_length));
            }
        }
        Ok(out)
    }

    /// Removes the route to `dest/prefix` through the link; one already gone is fine.
    pub async fn delete_route(
        &self,
        name: &str,
        dest: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), LinkError> {
        let index = self.index(name).await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest, prefix)
            .output_interface(index)
            .build();
        match self.handle.route().del(route).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            result => result.map_err(|source| request("delete route", name, source)),
        }
    }

    /// Deletes the link.
    pub async fn delete(&self, name: &str) -> Result<(), LinkError> {
        let index = self.index(name).await?;
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|source| request("delete", name, source))
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

fn tolerate_exists(result: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match result {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -EEXIST => Ok(()),
        other => other,
    }
}

fn request(action: &'static str, name: &str, source: rtnetlink::Error) -> LinkError {
    LinkError::Request {
        action,
        name: name.into(),
        source,
    }
}
