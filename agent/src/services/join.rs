//! `cloudy-agent join <kind> [provider]`: the user's side of using a service another node
//! provides. Finds the provider in the catalog the running agent keeps, lets the service set
//! this node up (`Service::join`), then waits for the running agent to start the local side.

use anyhow::{anyhow, bail, Context as _, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::manager::StateFile;
use super::{Context, Joining, JOINABLE, STATE_FILE};
use crate::catalog::{Catalog, CATALOG_FILE};
use crate::members::{Members, MEMBERS_FILE};
use crate::supervise::State;
use crate::system::System;

/// The CLI: joins and prints what was done and how to use it.
pub fn run(
    sys: &System,
    kind: &str,
    provider: Option<&str>,
    folder: Option<PathBuf>,
    wait: Duration,
) -> Result<i32> {
    for l in join(sys, kind, provider, folder, wait)? {
        println!("{l}");
    }
    Ok(0)
}

/// Joins `provider` (or the chosen one) of `kind`; returns lines for the user: what was joined,
/// the local service running, how to use it. Blocking (it may wait `wait` for the running
/// agent); the dashboard calls it off its async thread.
pub fn join(
    sys: &System,
    kind: &str,
    provider: Option<&str>,
    folder: Option<PathBuf>,
    wait: Duration,
) -> Result<Vec<String>> {
    let &(_, provider_type, local) =
        JOINABLE
            .iter()
            .find(|(k, _, _)| *k == kind)
            .ok_or_else(|| {
                anyhow!(
                    "cannot join {kind:?}: choose one of {}",
                    JOINABLE.iter().map(|j| j.0).collect::<Vec<_>>().join(", ")
                )
            })?;
    let cmdline = if sys.is_live() {
        std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
    } else {
        String::new()
    };
    let seed = crate::seed::load(sys, &cmdline).seed;
    let community = seed
        .community
        .as_ref()
        .ok_or_else(|| anyhow!("this node has no [community] in its seed: nothing to join"))?;
    let key = crate::secrets::community_key(sys, community.key.as_deref())?
        .ok_or_else(|| anyhow!("no community key stored yet: has `cloudy-agent run` run?"))?;
    let members: Members = serde_json::from_str(
        &std::fs::read_to_string(sys.path(MEMBERS_FILE))
            .context("reading the member list (is `cloudy-agent run` running?)")?,
    )
    .context("parsing the member list")?;
    let ctx = Context::from_members(&members, &community.name);
    let catalog: Catalog = serde_json::from_str(
        &std::fs::read_to_string(sys.path(CATALOG_FILE))
            .context("reading the service catalog (is `cloudy-agent run` running?)")?,
    )
    .context("parsing the service catalog")?;
    let records: Vec<_> = catalog.entries.into_iter().map(|e| e.record).collect();
    let chosen = match provider {
        Some(p) => super::find_provider(provider_type, &records, p).ok_or_else(|| {
            anyhow!("no {provider_type} provider {p:?} in the catalog (`cloudy-agent services --type {provider_type}`)")
        })?,
        None => super::choose_provider(
            provider_type,
            &records,
            &ctx.node_id,
            &crate::probe::load_scores(sys),
        )
        .ok_or(
            super::ServiceError::NoProvider {
                kind: provider_type.into(),
            },
        )?,
    };
    if chosen.node_id == ctx.node_id {
        bail!("the {provider_type} provider chosen is this node itself: name another one");
    }
    let mut lines = vec![format!(
        "joining {kind} of {} ({}:{})",
        chosen.node, chosen.ip, chosen.port
    )];
    let svc = super::build(local, sys).expect("JOINABLE names buildable services");
    let joining = Joining {
        sys: sys.clone(),
        ctx,
        key: crate::join::JoinKey::derive(&community.name, &key),
        members,
        folder,
    };
    let joined = svc.join(&joining, &chosen)?;
    if let Some(name) = &joined.local_service {
        lines.push(wait_running(sys, name, wait)?);
    }
    lines.extend(joined.usage);
    Ok(lines)
}

/// Waits until the running agent reports `name` running (after this call started).
fn wait_running(sys: &System, name: &str, within: Duration) -> Result<String> {
    let t0 = Instant::now();
    let mut last = String::from("not started yet");
    while t0.elapsed() < within {
        let st: Option<StateFile> = std::fs::read(sys.path(STATE_FILE))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok());
        if let Some(s) = st.as_ref().and_then(|f| f.services.get(name)) {
            if s.state == State::Running {
                return Ok(format!("{name}: running (pid {})", s.pid));
            }
            last = format!(
                "{:?}{}",
                s.state,
                s.last_error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )
            .to_lowercase();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!(
        "{name} is not running after {} s ({last}); is `cloudy-agent run` running? `cloudy-agent status` shows more",
        within.as_secs()
    )
}
