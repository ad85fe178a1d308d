//! The services every node has without a kind of its own: the community VPN (healthy while
//! tincd runs) and the services a seed declares in `[[services.publish]]` (healthy while
//! something listens on their port).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{port_open, Context, Service};
use crate::catalog::Record;
use crate::mesh::members::Members;
use cloudy_model::seed::Publish;

/// A service declared in the seed; healthy while something accepts TCP on its port.
pub struct Declared(pub Publish);

pub fn declared_record(p: &Publish, ctx: &Context) -> Record {
    let mut r = ctx.record(&p.kind, p.port, &p.description);
    r.fields = p.fields.clone();
    r
}

impl Service for Declared {
    fn name(&self) -> &str {
        &self.0.kind
    }

    fn record(&self, ctx: &Context) -> Option<Record> {
        Some(declared_record(&self.0, ctx))
    }

    fn healthy(&self) -> bool {
        port_open(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.0.port))
            || port_open(SocketAddr::new(
                std::net::Ipv6Addr::LOCALHOST.into(),
                self.0.port,
            ))
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
    fn name(&self) -> &str {
        "tincvpn"
    }

    fn record(&self, ctx: &Context) -> Option<Record> {
        let mut r = ctx.record("tincvpn", self.port, "Community VPN (tinc)");
        let vpn = self.members.lock().unwrap().me().vpn;
        r.fields.insert("vpn".into(), vpn.to_string());
        Some(r)
    }

    fn healthy(&self) -> bool {
        std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
    }
}

/// Records of the healthy ones, each valid (an invalid one is logged and left out).
pub fn healthy_records(services: &[Arc<dyn Service>], ctx: &Context) -> Vec<Record> {
    services
        .iter()
        .filter(|s| s.healthy())
        .filter_map(|s| s.record(ctx))
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
    use std::collections::BTreeMap;

    #[test]
    fn declared_service_is_healthy_while_its_port_listens() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let s: Vec<Arc<dyn Service>> = vec![Arc::new(Declared(Publish {
            kind: "web".into(),
            port,
            description: "<i>hi</i>".into(),
            fields: BTreeMap::new(),
        }))];
        let ctx = crate::services::test_context();
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
