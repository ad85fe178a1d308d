//! This node's own services: what each publishes and whether it is healthy right now. The
//! agent publishes the records of healthy services only, so a stopped or failing service is
//! withdrawn everywhere (Avahi file removed, Serf revision bumped).
//!
//! Today there are two kinds: built-in ones the agent runs itself (the tinc VPN) and services
//! declared in the seed's `[[services.publish]]`, run by something else and healthy while
//! their port accepts a connection. Service wrappers (Tahoe-LAFS, Syncthing, streaming) will
//! implement the same trait and add configure/start to it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::catalog::Record;
use crate::members::Members;
use crate::seed::Publish;

/// Who we are, as every record of ours says it.
#[derive(Debug, Clone)]
pub struct Context {
    pub node: String,
    pub node_id: String,
    pub ip: IpAddr,
    pub microcloud: String,
}

impl Context {
    /// Stands in for the node when a seed is checked before the node exists.
    pub fn probe() -> Context {
        Context {
            node: "node".into(),
            node_id: "0".repeat(32),
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            microcloud: "community".into(),
        }
    }

    fn record(&self, kind: &str, port: u16, description: &str) -> Record {
        Record {
            kind: kind.into(),
            description: description.into(),
            node: self.node.clone(),
            node_id: self.node_id.clone(),
            host: format!("{}.local", self.node),
            ip: self.ip,
            port,
            microcloud: self.microcloud.clone(),
            fields: BTreeMap::new(),
        }
    }
}

/// One service on this node. `healthy` may block briefly (a connect, a file read): callers
/// run it off the async thread.
pub trait Service: Send + Sync {
    fn record(&self, ctx: &Context) -> Record;
    fn healthy(&self) -> bool;
}

/// A service declared in the seed; healthy while something accepts TCP on its port.
pub struct Declared(pub Publish);

pub fn declared_record(p: &Publish, ctx: &Context) -> Record {
    let mut r = ctx.record(&p.kind, p.port, &p.description);
    r.fields = p.fields.clone();
    r
}

impl Service for Declared {
    fn record(&self, ctx: &Context) -> Record {
        declared_record(&self.0, ctx)
    }

    fn healthy(&self) -> bool {
        let local = |ip: IpAddr| {
            TcpStream::connect_timeout(
                &SocketAddr::new(ip, self.0.port),
                Duration::from_millis(300),
            )
            .is_ok()
        };
        local(Ipv4Addr::LOCALHOST.into()) || local(std::net::Ipv6Addr::LOCALHOST.into())
    }
}

/// The community VPN itself: healthy while our tincd runs.
pub struct TincVpn {
    pub port: u16,
    /// Our VPN address may move (a collision): read it when the record is made.
    pub members: Arc<Mutex<Members>>,
    pub pidfile: PathBuf,
}

impl Service for TincVpn {
    fn record(&self, ctx: &Context) -> Record {
        let mut r = ctx.record("tincvpn", self.port, "Community VPN (tinc)");
        let vpn = self.members.lock().unwrap().me().vpn;
        r.fields.insert("vpn".into(), vpn.to_string());
        r
    }

    fn healthy(&self) -> bool {
        std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    }
}

/// Records of the healthy ones, each valid (an invalid one is logged and left out).
pub fn healthy_records(services: &[Box<dyn Service>], ctx: &Context) -> Vec<Record> {
    services
        .iter()
        .filter(|s| s.healthy())
        .map(|s| s.record(ctx))
        .filter(|r| match r.validate() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("not publishing {} port {}: {e}", r.kind, r.port);
                false
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_service_is_healthy_while_its_port_listens() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let s: Vec<Box<dyn Service>> = vec![Box::new(Declared(Publish {
            kind: "web".into(),
            port,
            description: "<i>hi</i>".into(),
            fields: BTreeMap::new(),
        }))];
        let ctx = Context::probe();
        let rs = healthy_records(&s, &ctx);
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].description, "<i>hi</i>");
        drop(l);
        assert!(
            healthy_records(&s, &ctx).is_empty(),
            "withdrawn once closed"
        );
    }
}
