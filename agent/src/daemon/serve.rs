//! The exchange server: answers members on the exchange port, each request kind through the
//! one signed request/answer path (`exchange::serve_all`): member lists, our records, our probe
//! summary, and requests to use one of our services.

use std::sync::Arc;
use std::time::Duration;

use crate::catalog::publish::Sharing;
use crate::mesh::{exchange, Mesh};
use crate::registry::manager::Manager;
use crate::services::UseRequest;

/// At most this many exchange connections served at once; more are dropped.
const MAX_SERVING: usize = 64;

pub async fn serve(
    mesh: Arc<Mesh>,
    share: Arc<Sharing>,
    manager: Arc<Manager>,
    listener: tokio::net::TcpListener,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SERVING));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("exchange: too many connections, dropping {peer}");
            continue;
        };
        let mesh = mesh.clone();
        let share = share.clone();
        let manager = manager.clone();
        tokio::spawn(async move {
            let m = mesh.clone();
            let summary = share.summary.lock().unwrap().clone();
            let m2 = mesh.clone();
            let ours = move || share.ours.lock().unwrap().clone();
            // A member asks to use one of our services: known members only, as they are in
            // our list (their VPN address is ours to know, not theirs to claim).
            let ask = move |a: exchange::ServiceAsk| {
                let from = {
                    let ms = m2.members.lock().unwrap();
                    if a.node_id == ms.me {
                        return Err("that is this node".to_string());
                    }
                    ms.members.get(&a.node_id).cloned()
                };
                let from = from.ok_or_else(|| format!("{} is not a member we know", a.node_id))?;
                tracing::info!("{} ({peer}) asks to use our {}", from.name, a.service);
                manager
                    .accept(
                        &a.service,
                        &UseRequest {
                            from,
                            fields: a.fields,
                        },
                    )
                    .map_err(|e| e.to_string())
            };
            let r = exchange::serve_all(
                stream,
                &mesh.key,
                move |theirs| {
                    let mut ms = m.members.lock().unwrap();
                    let merged = ms.merge(theirs);
                    for r in &merged.refused {
                        tracing::warn!("exchange from {peer}: refused {r}");
                    }
                    if merged.changed {
                        m.changed.notify_one();
                        m.wake.notify_one();
                    }
                    ms.list()
                },
                ours,
                ask,
                move || summary,
            )
            .await;
            match r {
                Ok(n) => tracing::debug!("exchange: swapped lists with {peer} ({n} members)"),
                Err(e) => tracing::warn!("exchange: refused {peer}: {e}"),
            }
            drop(permit);
        });
    }
}
