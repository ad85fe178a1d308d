//! Using a service another node provides (`cloudy-agent join <kind> [provider]`, the
//! dashboard's Join, the control socket): the provider is looked up once (`select::lookup`),
//! the joining service sets this node up (`Service::join`), then the running agent starts the
//! local side and this flow waits for it.

use anyhow::{anyhow, bail, Context as _, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::manager::StateFile;
use crate::catalog::{Catalog, Record, CATALOG_FILE};
use crate::mesh::exchange::CommunityKey;
use crate::mesh::members::{Members, MEMBERS_FILE};
use crate::os::supervisor::State;
use crate::os::system::System;
use crate::probe::select;
use crate::services::{Context, Using, STATE_FILE};
use cloudy_model::kinds;

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

/// While a join runs, a file named `<pid>-<n>` here: an update's reboot waits until none is
/// left whose process lives (`update`, through `joining`).
pub const JOINING_DIR: &str = "/run/cloudy/joining";

struct Joining(PathBuf);

impl Joining {
    fn start(sys: &System) -> Option<Joining> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = sys.path(JOINING_DIR);
        std::fs::create_dir_all(&dir).ok()?;
        let p = dir.join(format!("{}-{n}", std::process::id()));
        std::fs::write(&p, b"").ok()?;
        Some(Joining(p))
    }
}

impl Drop for Joining {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A join that is running now (in any process), for what must not cut it short.
pub fn joining(sys: &System) -> Option<String> {
    std::fs::read_dir(sys.path(JOINING_DIR))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.split('-').next()?.parse::<u32>().ok()
        })
        .find(|pid| crate::os::files::alive(*pid))
        .map(|pid| format!("a join is running (pid {pid})"))
}

/// Joins `provider` (or the one `select::lookup` picks) of the kind `join <arg>` names;
/// returns lines for the user: what was joined, the local service running, how to use it.
/// Blocking (it may wait `wait` for the running agent); the dashboard calls it off its async
/// thread.
pub fn join(
    sys: &System,
    arg: &str,
    provider: Option<&str>,
    folder: Option<PathBuf>,
    wait: Duration,
) -> Result<Vec<String>> {
    let _joining = Joining::start(sys);
    let (kind, _) = kinds::by_join_arg(arg).ok_or_else(|| {
        anyhow!(
            "cannot join {arg:?}: choose one of {}",
            kinds::joinable_list()
        )
    })?;
    let node = Node::read(sys)?;
    let catalog: Catalog = serde_json::from_str(
        &std::fs::read_to_string(sys.path(CATALOG_FILE))
            .context("reading the service catalog (is `cloudy-agent run` running?)")?,
    )
    .context("parsing the service catalog")?;
    let records: Vec<_> = catalog.entries.into_iter().map(|e| e.record).collect();
    let pick = select::lookup(
        kind.name,
        provider,
        &records,
        &crate::probe::load_scores(sys),
        &crate::probe::ratings::Ratings::load(sys).unwrap_or_default(),
        &node.ctx.node_id,
    )?;
    let mut lines: Vec<String> = pick.note().into_iter().collect();
    lines.extend(join_provider(
        sys,
        &node,
        arg,
        &pick.ranked.record,
        folder,
        wait,
    )?);
    Ok(lines)
}

/// This node as a joining service sees it: who it is, the community key, the member list.
pub struct Node {
    ctx: Context,
    key: CommunityKey,
    /// Signs our service requests: a provider takes one only under our pinned node key.
    node_key: crate::os::identity::NodeKey,
    members: Members,
}

impl Node {
    pub fn read(sys: &System) -> Result<Node> {
        let seed = crate::os::stored::load_seed(sys).seed;
        let community = seed
            .community
            .as_ref()
            .ok_or_else(|| anyhow!("this node has no [community] in its seed: nothing to join"))?;
        let key = crate::os::secrets::community_key(sys, community.key.as_deref())?
            .ok_or_else(|| anyhow!("no community key stored yet: has `cloudy-agent run` run?"))?;
        let members: Members = serde_json::from_str(
            &std::fs::read_to_string(sys.path(MEMBERS_FILE))
                .context("reading the member list (is `cloudy-agent run` running?)")?,
        )
        .context("parsing the member list")?;
        let node_key = crate::os::identity::NodeKey::load(sys)
            .context("the node signing key (has `cloudy-agent run` run?)")?;
        Ok(Node {
            ctx: members.origin(&community.name),
            key: CommunityKey::derive(&community.name, &key),
            node_key,
            members,
        })
    }
}

/// Joins `chosen`, a provider already looked up (by `select::lookup`): the service that joins
/// (the kind's `local`) sets this node up, then the running agent starts it.
pub fn join_provider(
    sys: &System,
    node: &Node,
    arg: &str,
    chosen: &Record,
    folder: Option<PathBuf>,
    wait: Duration,
) -> Result<Vec<String>> {
    let (_, how) = kinds::by_join_arg(arg).ok_or_else(|| anyhow!("cannot join {arg:?}"))?;
    if chosen.node_id == node.ctx.node_id {
        bail!("the provider chosen is this node itself: name another one");
    }
    let mut lines = vec![format!(
        "joining {arg} of {} ({}:{})",
        chosen.node, chosen.ip, chosen.port
    )];
    let svc = super::build(how.local, sys)
        .ok_or_else(|| anyhow!("{} is in the kinds table but no kind builds it", how.local))?;
    let using = Using {
        sys: sys.clone(),
        ctx: node.ctx.clone(),
        key: node.key.clone(),
        node_key: node.node_key.clone(),
        members: node.members.clone(),
        folder,
    };
    let joined = svc.use_provider(&using, chosen)?;
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
