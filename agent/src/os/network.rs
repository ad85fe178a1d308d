//! The node's links through rtnetlink: bring them up, find the primary interface (the default
//! route's, unless the seed names one), apply a static address and route from the seed.
//! DHCP stays with the image's network stack.

use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::RouteAttribute;
use nix::errno::Errno;
use rtnetlink::{Handle, IpVersion};
use std::net::IpAddr;

use cloudy_model::seed;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("opening a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("no interface named {0}")]
    NoLink(String),
    #[error("{0}")]
    Seed(String),
}

/// The interface the node is reached on, and its address if it has one yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Primary {
    pub interface: String,
    pub address: Option<IpAddr>,
}

pub struct Net {
    handle: Handle,
}

impl Net {
    /// Needs a tokio runtime: the netlink connection runs as a task on it.
    pub fn connect() -> Result<Net, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Net { handle })
    }

    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(Some(l.header.index)),
            Ok(None) => Ok(None),
            // The kernel answers ENODEV for a name it does not know.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -(Errno::ENODEV as i32) => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn link_name(&self, index: u32) -> Result<Option<String>, NetError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let Some(l) = links.try_next().await? else {
            return Ok(None);
        };
        Ok(l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }))
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetError> {
        self.handle.link().set(index).up().execute().await?;
        Ok(())
    }

    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetError> {
        let mut out = Vec::new();
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(m) = s.try_next().await? {
            for a in &m.attributes {
                if let AddressAttribute::Address(ip) = a {
                    out.push((*ip, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Adds the address unless the link has it already (reboots and restarts change nothing).
    pub async fn ensure_address(
        &self,
        index: u32,
        ip: IpAddr,
        prefix: u8,
    ) -> Result<bool, NetError> {
        if self.addresses(index).await?.contains(&(ip, prefix)) {
            return Ok(false);
        }
        self.handle
            .address()
            .add(index, ip, prefix)
            .execute()
            .await?;
        Ok(true)
    }

    /// The interface of the default route: IPv4 first, else IPv6.
    pub async fn default_route_link(&self) -> Result<Option<u32>, NetError> {
        for v in [IpVersion::V4, IpVersion::V6] {
            let mut routes = self.handle.route().get(v).execute();
            while let Some(r) = routes.try_next().await? {
                if r.header.destination_prefix_length != 0 {
                    continue;
                }
                if let Some(oif) = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                }) {
                    return Ok(Some(oif));
                }
            }
        }
        Ok(None)
    }

    pub async fn add_default_route(&self, gateway: IpAddr) -> Result<(), NetError> {
        let r = match gateway {
            IpAddr::V4(g) => self.handle.route().add().v4().gateway(g).execute().await,
            IpAddr::V6(g) => self.handle.route().add().v6().gateway(g).execute().await,
        };
        match r {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -(Errno::EEXIST as i32) => {
                Ok(())
            }
            r => Ok(r?),
        }
    }

    /// Links other than loopback and `except`, in kernel order.
    pub async fn links(&self, except: &str) -> Result<Vec<(u32, String)>, NetError> {
        let mut out = Vec::new();
        let mut s = self.handle.link().get().execute();
        while let Some(l) = s.try_next().await? {
            let name = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let Some(n) = name.filter(|n| n != "lo" && n != except) {
                out.push((l.header.index, n));
            }
        }
        Ok(out)
    }

    /// Reconciles links with the seed and returns the primary interface, if one is known yet.
    /// `vpn` is the VPN interface's name, never a candidate.
    pub async fn apply(
        &self,
        want: Option<&seed::Network>,
        manage: bool,
        vpn: &str,
    ) -> Result<Option<Primary>, NetError> {
        if manage {
            if let Some(lo) = self.link_index("lo").await? {
                self.set_up(lo).await?;
            }
        }
        let forced = want.and_then(|n| n.interface.as_deref());
        let index = match forced {
            Some(name) => Some(
                self.link_index(name)
                    .await?
                    .ok_or_else(|| NetError::NoLink(name.into()))?,
            ),
            None => match self.default_route_link().await? {
                Some(i) => Some(i),
                // A static address with no route yet (no DHCP on this LAN) goes on the
                // first real link, as on a one-port board.
                None if want.is_some_and(|n| n.address.is_some()) => {
                    self.links(vpn).await?.first().map(|l| l.0)
                }
                None => None,
            },
        };
        let Some(index) = index else { return Ok(None) };
        if manage {
            self.set_up(index).await?;
            if let Some(n) = want {
                if let Some(a) = &n.address {
                    let (ip, prefix) =
                        cloudy_model::names::parse_cidr(a).map_err(NetError::Seed)?;
                    if self.ensure_address(index, ip, prefix).await? {
                        tracing::info!("network: added {a}");
                    }
                }
                if let Some(g) = &n.gateway {
                    let g: IpAddr = g
                        .parse()
                        .map_err(|e| NetError::Seed(format!("network.gateway: {e}")))?;
                    self.add_default_route(g).await?;
                }
            }
        }
        let interface = self.link_name(index).await?.unwrap_or_default();
        let address = pick_address(&self.addresses(index).await?);
        Ok(Some(Primary { interface, address }))
    }
}

/// The address others reach us on: a routable IPv4 first, else a global IPv6 (link-local
/// addresses need a scope id no member list can carry).
pub fn pick_address(addrs: &[(IpAddr, u8)]) -> Option<IpAddr> {
    let v4 = addrs.iter().find_map(|(a, _)| match a {
        IpAddr::V4(v) if !v.is_loopback() && !v.is_link_local() => Some(*a),
        _ => None,
    });
    v4.or_else(|| {
        addrs.iter().find_map(|(a, _)| match a {
            IpAddr::V6(v) if !v.is_loopback() && (v.segments()[0] & 0xffc0) != 0xfe80 => Some(*a),
            _ => None,
        })
    })
}

/// `cloudy-agent net up IFACE ADDR/PREFIX [--mac MAC]`, run by tinc-up: the VPN interface up,
/// with its address and a MAC that survives tincd restarts (so peers' ARP caches stay right).
pub async fn vpn_up(interface: &str, cidr: &str, mac: Option<&str>) -> Result<(), NetError> {
    let (ip, prefix) = cloudy_model::names::parse_cidr(cidr).map_err(NetError::Seed)?;
    let net = Net::connect()?;
    let index = net
        .link_index(interface)
        .await?
        .ok_or_else(|| NetError::NoLink(interface.into()))?;
    if let Some(mac) = mac {
        let bytes = parse_mac(mac)
            .ok_or_else(|| NetError::Seed(format!("{mac:?} is not a MAC address")))?;
        net.handle
            .link()
            .set(index)
            .address(bytes)
            .execute()
            .await?;
    }
    net.ensure_address(index, ip, prefix).await?;
    net.set_up(index).await?;
    Ok(())
}

/// A locally administered unicast MAC from the node id: stable for the node's life.
pub fn mac_for(node_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(node_id.as_bytes());
    let b = [(d[0] & 0xfc) | 0x02, d[1], d[2], d[3], d[4], d[5]];
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(s: &str) -> Option<Vec<u8>> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2))
        .collect::<Option<_>>()?;
    (v.len() == 6).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_routable_ipv4_then_global_ipv6() {
        let a = |s: &str| (s.parse::<IpAddr>().unwrap(), 24u8);
        assert_eq!(
            pick_address(&[a("fe80::1"), a("169.254.1.1"), a("192.168.1.5")]),
            Some(a("192.168.1.5").0)
        );
        assert_eq!(
            pick_address(&[a("fe80::1"), a("2001:db8::5")]),
            Some(a("2001:db8::5").0)
        );
        assert_eq!(pick_address(&[a("fe80::1")]), None);
    }

    #[test]
    fn mac_is_stable_local_unicast() {
        let m = mac_for("0123456789abcdef0123456789abcdef");
        assert_eq!(m, mac_for("0123456789abcdef0123456789abcdef"));
        let b = parse_mac(&m).unwrap();
        assert_eq!(b[0] & 0x03, 0x02, "locally administered, unicast: {m}");
        assert_eq!(parse_mac("02:00:00:00:00"), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_loopback_through_netlink() {
        let net = Net::connect().unwrap();
        let lo = net
            .link_index("lo")
            .await
            .unwrap()
            .expect("every namespace has lo");
        assert_eq!(net.link_name(lo).await.unwrap().as_deref(), Some("lo"));
        assert_eq!(net.link_index("nosuchlink0").await.unwrap(), None);
        let _ = net.default_route_link().await.unwrap();
    }
}
