//! The agent's typed control API: the root agent answers a few typed requests on a Unix socket
//! (0660, group `cloudy-web`), so the unprivileged dashboard and the CLI can ask for a scan, a
//! selection, a join or the node's state. A request is one JSON line, the reply one JSON line;
//! nothing in a request is ever run as a command.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::catalog::publish::Sharing;
use crate::catalog::Record;
use crate::os::system::System;
use crate::probe::ratings::{Book, Ratings};
use crate::probe::select::{self, Ranked};
use crate::probe::{Prober, Scores};
use crate::registry::use_service;
use cloudy_model::names::is_kind as kind_ok;
use cloudy_model::summary::Summary;

pub mod cli;

pub const SOCKET: &str = "/run/cloudy/control.sock";
/// The dashboard's user; the socket's group.
pub const WEB_USER: &str = "cloudy-web";
const MAX_REQUEST: usize = 16 * 1024;
const MAX_REPLY: usize = 32 << 20;
/// A scan of a large catalog under the bandwidth cap takes a while; everything else is quick.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// At most this many connections at once; an idle one (no request yet) makes room for a new
/// one after `EVICT_AFTER`.
const MAX_CLIENTS: usize = 64;
/// A client sends its request as soon as it connects (`call`); one that has not within this
/// gives up its slot when another client needs it.
const EVICT_AFTER: Duration = Duration::from_millis(250);
/// A request must arrive within this of the connection; else an error reply and the slot back.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// The reply must be taken within this (32 MiB at most, over a local socket).
const REPLY_DEADLINE: Duration = Duration::from_secs(10);
/// Members whose probe summaries are fetched after a scan.
const MAX_VIEWS: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Probe the providers of `kind` (all when None) now.
    Scan { kind: Option<String> },
    /// The best provider of `kind` for this node, and the ranking behind it.
    Select { kind: String },
    /// Join `provider` (`node:port`) of `kind`, or the best one when None.
    Join {
        kind: String,
        provider: Option<String>,
    },
    /// Everything the dashboard shows.
    State {},
    /// This node's user rates `provider` (as `join` names one) of `kind`: 1-5 stars, an
    /// optional comment; signed by our node key and fetched by the members.
    Rate {
        kind: String,
        provider: String,
        stars: u8,
        #[serde(default)]
        comment: String,
    },
    /// A new invitation (see `mesh::invite`): valid `expires_s` seconds for `uses` nodes, only
    /// a node named `name` if given.
    Invite {
        name: Option<String>,
        expires_s: u64,
        uses: u32,
    },
    /// The outstanding invitations (hashes only: a token is shown once, when made).
    Invitations {},
    /// Revokes invitation `id`.
    Revoke { id: String },
    /// The Community map: every member's node info; with `node`, that node's 24-h trail.
    Community { node: Option<String> },
    /// Where the dashboard's proxy reaches a local service's own web UI (`/ui/<service>/`).
    Ui { service: String },
    /// Setup mode (a node in no community yet, `daemon::setup`): names the node.
    SetupName { name: String },
    /// Setup mode: creates community `community`, with a new key; this node is its first
    /// member.
    SetupCreate { community: String },
    /// Setup mode: joins the community an invitation token opens.
    SetupJoin { token: String },
    /// The pending nodes of our community heard on the LAN (`catalog::pending`).
    Pending {},
    /// Approves the pending nodes with these fingerprints (1 to 64, `ABCD-EFGH-IJKL-MNOP`).
    Approve { fingerprints: Vec<String> },
    /// Replaces the community key on every member reachable now, first removing the members
    /// named (names or node ids) from the community (`mesh::rekey`).
    Rekey {
        #[serde(default)]
        remove: Vec<String>,
    },
    /// Updates (`crate::update`): the state, a check now, or check-and-install now.
    Update { action: UpdateAction },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateAction {
    Status,
    /// Fetch and verify now (in the background: poll `Status`).
    Check,
    /// Check, install what is held at once and reboot (in the background).
    Now,
}

/// The local services whose own web UI the dashboard passes through, by the name in its path.
pub const UI_SERVICES: [&str; 2] = ["syncthing", "tahoe"];

/// A local service's web UI as the agent knows it: never an address a request named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiTarget {
    pub addr: std::net::SocketAddr,
    /// Sent as `X-API-Key` (Syncthing's): the dashboard's login stands for the service's.
    pub api_key: Option<String>,
    /// How to get at the files (the shared folder's path), for the dashboard's page.
    pub note: String,
}

/// An invitation lives at most this long; longer is a standing key by another name.
pub const MAX_INVITE_S: u64 = 30 * 86400;
/// Uses of one invitation at most: one leaked token admits a bounded number of nodes.
pub const MAX_INVITE_USES: u32 = 100;

impl Request {
    /// A request line as it came off the socket (at most `MAX_REQUEST` bytes, maybe without
    /// its newline), parsed strictly and checked: the request to act on, or the error reply.
    /// Touches nothing: the fuzzer (`agent/fuzz`, target `control`) calls it on any bytes.
    pub fn parse_line(line: &[u8]) -> Result<Request, Reply> {
        let req: Request =
            serde_json::from_slice(line).map_err(|e| error(format!("malformed request: {e}")))?;
        req.check().map_err(error)?;
        Ok(req)
    }

    /// What no request may carry, whoever sent it: a kind that is not a service type.
    pub fn check(&self) -> Result<(), String> {
        let kind = match self {
            Request::Scan { kind } => kind.as_deref(),
            Request::Select { kind } | Request::Join { kind, .. } => Some(kind.as_str()),
            Request::State {} | Request::Invitations {} => None,
            Request::Invite {
                name,
                expires_s,
                uses,
            } => {
                if let Some(n) = name {
                    cloudy_model::names::check_hostname(n)
                        .map_err(|p| format!("name {n:?}: {p}"))?;
                }
                if !(60..=MAX_INVITE_S).contains(expires_s) {
                    return Err(format!(
                        "expires: between 1 minute and {} days",
                        MAX_INVITE_S / 86400
                    ));
                }
                if !(1..=MAX_INVITE_USES).contains(uses) {
                    return Err(format!("uses: between 1 and {MAX_INVITE_USES}"));
                }
                None
            }
            Request::Revoke { id } => {
                if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("{id:?} is not an invitation id"));
                }
                None
            }
            Request::Rate {
                kind,
                stars,
                comment,
                ..
            } => {
                cloudy_model::rating::check_stars(*stars).map_err(|e| e.to_string())?;
                cloudy_model::rating::check_comment(comment).map_err(|e| e.to_string())?;
                Some(kind.as_str())
            }
            Request::Community { node } => {
                return match node {
                    Some(n) if !cloudy_model::names::is_node_id(n) => {
                        Err(format!("{n:?} is not a node id"))
                    }
                    _ => Ok(()),
                };
            }
            Request::Ui { service } => {
                if !UI_SERVICES.contains(&service.as_str()) {
                    return Err(format!("{service:?} has no web UI here"));
                }
                None
            }
            Request::SetupName { name: n } | Request::SetupCreate { community: n } => {
                let what = match self {
                    Request::SetupName { .. } => "node name",
                    _ => "community name",
                };
                cloudy_model::names::check_hostname(n).map_err(|p| {
                    format!("{what} {n:?}: {p}; use letters, digits and '-', e.g. \"kitchen\"")
                })?;
                None
            }
            // Never repeated in an error: the token is a secret.
            Request::SetupJoin { token } => {
                crate::mesh::invite::Token::parse(token).map_err(|e| {
                    format!("{e}; paste the whole token a member's Invite tab (or `cloudy-agent invite`) shows: cloudy1:...@host:port")
                })?;
                None
            }
            Request::Pending {} | Request::Update { .. } => None,
            Request::Rekey { remove } => {
                if remove.len() > 64 {
                    return Err("rekey: remove at most 64 members at once".into());
                }
                for r in remove {
                    if cloudy_model::names::check_hostname(r).is_err()
                        && !cloudy_model::names::is_node_id(r)
                    {
                        return Err(format!("{r:?} is neither a node name nor a node id"));
                    }
                }
                None
            }
            Request::Approve { fingerprints } => {
                use crate::catalog::pending::MAX_APPROVE;
                if fingerprints.is_empty() || fingerprints.len() > MAX_APPROVE {
                    return Err(format!(
                        "approve: name 1 to {MAX_APPROVE} fingerprints (each as the node's console shows it)"
                    ));
                }
                for f in fingerprints {
                    crate::mesh::pending::parse_fingerprint(f).map_err(|e| e.to_string())?;
                }
                None
            }
        };
        match kind {
            Some(k) if !kind_ok(k) => Err(format!("{k:?} is not a service type")),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Scanned {
        scores: Scores,
    },
    Selected {
        best: Option<Box<Ranked>>,
        ranked: Vec<Ranked>,
    },
    Joined {
        ok: bool,
        provider: Option<String>,
        message: String,
    },
    State(Box<State>),
    Rated {
        /// The provider's `node:port`.
        provider: String,
        message: String,
    },
    /// A new invitation: the token (shown once), its id, and the token as a seed snippet.
    Invited {
        token: String,
        id: String,
        snippet: String,
        expires: u64,
    },
    Invitations {
        list: Vec<crate::mesh::invite::Invitation>,
    },
    Revoked {
        found: bool,
    },
    Community(Box<crate::probe::community::CommunityView>),
    /// None: the service does not run on this node.
    Ui {
        target: Option<UiTarget>,
    },
    /// A node in setup mode answers `State` with this: it is in no community yet.
    Setup(Box<SetupView>),
    /// A setup action done. `community`: the node is now its member; `invitation`: the one
    /// made for the next node when the community was created here (shown once).
    SetupDone {
        message: String,
        community: Option<String>,
        invitation: Option<Box<Reply>>,
    },
    Pending {
        list: Vec<crate::catalog::pending::PendingNode>,
    },
    /// The new key's serial and how each member took it.
    Rekeyed {
        serial: u64,
        told: Vec<crate::mesh::rekey::Told>,
    },
    /// One outcome per fingerprint asked, in order.
    Approved {
        outcomes: Vec<crate::catalog::pending::Outcome>,
    },
    /// The update state; `started`: a check or an install began in the background.
    Update {
        report: Box<crate::update::Report>,
        started: bool,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub node: String,
    pub node_id: String,
    pub community: String,
    pub address: String,
    pub vpn: String,
    pub tincd: Option<u32>,
    pub seed_errors: Vec<String>,
    /// Secrets still on the boot medium (read-only, or a scrub that did not take): loud
    /// warnings for the node page.
    #[serde(default)]
    pub medium_warnings: Vec<String>,
    pub peers: Vec<Peer>,
    /// When the last scan finished, unix ms (0: never).
    pub scanned: u64,
    /// Service types in the catalog.
    pub types: Vec<String>,
    /// Every provider, ranked per type (types in order).
    pub providers: Vec<Ranked>,
    /// Other members' own probe summaries.
    pub views: Vec<View>,
    /// Users' comments, per provider (`node:port`), newest first.
    #[serde(default)]
    pub comments: std::collections::BTreeMap<String, Vec<cloudy_model::rating::Rating>>,
    /// The services this agent runs (`cloudy-agent status`'s list): name -> state.
    #[serde(default)]
    pub managed: std::collections::BTreeMap<String, crate::os::supervisor::Status>,
}

/// A node in setup mode, as its setup page shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SetupView {
    pub node: String,
    pub node_id: String,
    /// The seed names the node: the name is changed there, not in setup mode.
    pub name_from_seed: bool,
    /// The address others on the LAN reach this node on, when known.
    pub address: Option<String>,
    /// A community was created or joined and the node is starting in it (its mesh did not
    /// start yet): the forms are off meanwhile.
    #[serde(default)]
    pub starting: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub id: String,
    pub tinc_name: String,
    pub address: String,
    pub vpn: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub node: String,
    /// When it was fetched, unix ms.
    pub at: u64,
    pub scores: Vec<Summary>,
}

/// What answers requests inside the agent.
pub struct Agent {
    pub sys: System,
    pub share: Arc<Sharing>,
    pub prober: Arc<Prober>,
    pub seed_errors: Vec<String>,
    /// The boot medium still holding a secret (see `secrets::medium_warnings`), as boot found it.
    pub medium_warnings: Vec<String>,
    pub pidfile: PathBuf,
    pub views: Mutex<Vec<View>>,
    /// User ratings, ours and the members'.
    pub ratings: Arc<Book>,
    /// Our invitations (None: this node has no community to invite to).
    pub invites: Option<Arc<crate::mesh::invite::Invites>>,
    /// Our exchange port, for the addresses an invitation names.
    pub exchange_port: u16,
    /// Our node info and the members' (the Community map).
    pub community: Arc<crate::probe::community::Community>,
    /// Updates (None: this agent runs no update task).
    pub update: Option<Arc<crate::update::Updater>>,
}

impl Agent {
    pub fn records(&self) -> Vec<Record> {
        self.share
            .catalog
            .lock()
            .unwrap()
            .snapshot(0)
            .entries
            .into_iter()
            .map(|e| e.record)
            .collect()
    }

    /// Types with a provider (not ours) that has no score yet.
    pub fn unprobed_kinds(&self) -> Vec<String> {
        let scores = self.prober.scores.lock().unwrap().clone();
        let mut kinds: Vec<String> = self
            .records()
            .into_iter()
            .filter(|r| r.node_id != self.prober.me && scores.of(r).is_none())
            .map(|r| r.kind)
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    /// A scan, then our published summary and others' views brought up to date.
    pub async fn scan(&self, kind: Option<&str>) -> Scores {
        let scores = self.prober.scan(&self.records(), kind).await;
        *self.share.summary.lock().unwrap() =
            serde_json::to_string(&crate::probe::summary(&scores)).expect("summaries serialise");
        self.refresh_views().await;
        scores
    }

    pub async fn handle(&self, req: Request) -> Reply {
        // Checked again here: a request need not have come through `parse_line`.
        if let Err(e) = req.check() {
            return error(e);
        }
        match req {
            Request::Scan { kind } => Reply::Scanned {
                scores: self.scan(kind.as_deref()).await,
            },
            Request::Select { kind } => {
                let records = self.records();
                let mut scores = self.prober.scores.lock().unwrap().clone();
                let unprobed = records.iter().any(|r| {
                    r.kind == kind && r.node_id != self.prober.me && scores.of(r).is_none()
                });
                if unprobed {
                    scores = self.scan(Some(&kind)).await;
                }
                let ratings = self.ratings.snapshot();
                Reply::Selected {
                    best: select::choose(&kind, &records, &scores, &ratings, &self.prober.me)
                        .map(Box::new),
                    ranked: select::rank(Some(&kind), &records, &scores, &ratings, &self.prober.me),
                }
            }
            Request::Join { kind, provider } => {
                let records = self.records();
                let scores = self.prober.scores.lock().unwrap().clone();
                join(
                    &self.sys,
                    &kind,
                    provider.as_deref(),
                    &records,
                    &scores,
                    &self.ratings.snapshot(),
                    &self.prober.me,
                )
                .await
            }
            Request::State {} => Reply::State(Box::new(self.state())),
            Request::Invite {
                name,
                expires_s,
                uses,
            } => self.invite(name, expires_s, uses),
            Request::Invitations {} => match &self.invites {
                Some(i) => Reply::Invitations { list: i.list() },
                None => Reply::Invitations { list: vec![] },
            },
            Request::Revoke { id } => match self.invites.as_ref().map(|i| i.revoke(&id)) {
                Some(Ok(found)) => Reply::Revoked { found },
                Some(Err(e)) => error(e.to_string()),
                None => Reply::Revoked { found: false },
            },
            Request::Rate {
                kind,
                provider,
                stars,
                comment,
            } => self.rate(&kind, &provider, stars, &comment),
            Request::Community { node } => {
                let ms = self.share.members.lock().unwrap();
                Reply::Community(Box::new(match node {
                    Some(n) => self.community.view_of(&ms, &n),
                    None => self.community.view(&ms),
                }))
            }
            Request::Rekey { remove } => self.rekey(&remove).await,
            Request::Pending {} => Reply::Pending {
                list: self.share.pending.list(),
            },
            Request::Approve { fingerprints } => {
                let fps: Vec<String> = fingerprints
                    .iter()
                    .filter_map(|f| crate::mesh::pending::parse_fingerprint(f).ok())
                    .collect();
                Reply::Approved {
                    outcomes: crate::catalog::pending::approve(
                        &self.sys,
                        &self.share.pending,
                        (&self.share.community, &self.share.members),
                        self.exchange_port,
                        &fps,
                    )
                    .await,
                }
            }
            Request::Ui { service } => Reply::Ui {
                target: self.ui_target(&service),
            },
            Request::Update { action } => match &self.update {
                None => error("this node runs no update task".into()),
                Some(u) => {
                    let started = action != UpdateAction::Status;
                    if started {
                        let u = u.clone();
                        tokio::spawn(async move {
                            match action {
                                UpdateAction::Now => u.now().await,
                                _ => u.check().await,
                            };
                        });
                        // Let it take its lock first, so the report says it is busy.
                        tokio::task::yield_now().await;
                    }
                    Reply::Update {
                        report: Box::new(u.report().await),
                        started,
                    }
                }
            },
            Request::SetupName { .. } | Request::SetupCreate { .. } | Request::SetupJoin { .. } => {
                error(format!(
                    "this node is already a member of community {:?}: setup mode is over",
                    self.share.community
                ))
            }
        }
    }

    /// A new invitation naming our address (the one our member record gives) at our exchange
    /// port: where a new node on the LAN reaches us before it has the VPN.
    fn invite(&self, name: Option<String>, expires_s: u64, uses: u32) -> Reply {
        let Some(invites) = &self.invites else {
            return error("this node is in no community yet: create or join one first".into());
        };
        let me = self.share.members.lock().unwrap().me().clone();
        let addr = |ip: std::net::IpAddr| std::net::SocketAddr::new(ip, self.exchange_port);
        let addrs = vec![addr(me.address).to_string()];
        match invites.create(addrs, name, Duration::from_secs(expires_s), uses) {
            Ok(t) => {
                let id = t.id();
                let expires = invites
                    .list()
                    .iter()
                    .find(|i| i.id == id)
                    .map(|i| i.expires)
                    .unwrap_or(0);
                Reply::Invited {
                    snippet: t.seed_snippet(&invites.community),
                    token: t.to_string(),
                    id,
                    expires,
                }
            }
            Err(e) => error(e.to_string()),
        }
    }

    /// A new community key for every member reachable now (`mesh::rekey::roll`).
    async fn rekey(&self, remove: &[String]) -> Reply {
        let node = match crate::os::identity::NodeKey::load(&self.sys) {
            Ok(k) => k,
            Err(e) => return error(format!("our node key: {e}")),
        };
        let ids = {
            let ms = self.share.members.lock().unwrap();
            crate::mesh::rekey::resolve(&ms, remove)
        };
        let ids = match ids {
            Ok(i) => i,
            Err(e) => return error(e.to_string()),
        };
        let (serial, told) =
            crate::mesh::rekey::roll(&self.share.key, &self.share.members, &node, &ids).await;
        // Stored before we answer (the key ring's follower stores it too, a moment later).
        if let Err(e) = crate::mesh::rekey::save(&self.sys, &self.share.key) {
            return error(format!(
                "the new key is in use but could not be stored: {e}"
            ));
        }
        Reply::Rekeyed { serial, told }
    }

    /// A rating of a provider the user names as for `join` (`node:port`, node name, id).
    fn rate(&self, kind: &str, provider: &str, stars: u8, comment: &str) -> Reply {
        let records = self.records();
        let Some(r) = records
            .iter()
            .find(|r| r.kind == kind && select::provider_id(r) == provider)
            .cloned()
            .or_else(|| select::find_provider(kind, &records, provider))
        else {
            return error(format!(
                "no {kind} provider {provider:?} in the catalog (`cloudy-agent services --type {kind}`)"
            ));
        };
        let id = select::provider_id(&r);
        if r.node_id == self.prober.me {
            return error(format!(
                "{id} is this node itself: a node cannot rate itself"
            ));
        }
        match self.ratings.rate(&r.node_id, kind, stars, comment) {
            Ok(_) => {
                tracing::info!("rated {id} ({kind}): {stars}/5");
                Reply::Rated {
                    message: format!("rated {id} ({kind}) {stars}/5"),
                    provider: id,
                }
            }
            Err(e) => error(format!("rating {id}: {e}")),
        }
    }

    /// The service's web UI on this node, where its kind configured it: Syncthing's GUI on our
    /// VPN address, Tahoe's web port on loopback (the client's, else the storage node's).
    fn ui_target(&self, service: &str) -> Option<UiTarget> {
        use crate::kinds::{syncthing, tahoe};
        use std::net::{Ipv4Addr, SocketAddr};
        let open = |a: SocketAddr| {
            std::net::TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok()
        };
        match service {
            "syncthing" => {
                let vpn = self.share.members.lock().unwrap().me().vpn;
                let addr = SocketAddr::new(vpn.into(), syncthing::GUI_PORT);
                let st = syncthing::Syncthing::new(&self.sys);
                let key = std::fs::read_to_string(
                    crate::services::state_dir(&self.sys, syncthing::NAME).join("api-key"),
                )
                .ok()
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty());
                let folder = st.load_peers().folder.unwrap_or(st.default_folder());
                (key.is_some() && open(addr)).then(|| UiTarget {
                    addr,
                    api_key: key,
                    note: format!(
                        "The shared folder is {} on this node; Syncthing keeps it in step with \
                         the nodes it is shared with. Open it with `ls {}` over SSH, or put \
                         files in it there.",
                        folder.display(),
                        folder.display()
                    ),
                })
            }
            "tahoe" => [tahoe::CLIENT_WEB_PORT, tahoe::STORAGE_WEB_PORT]
                .into_iter()
                .map(|p| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p))
                .find(|a| open(*a))
                .map(|addr| UiTarget {
                    addr,
                    api_key: None,
                    note: "Tahoe-LAFS's own web UI: upload and fetch files by their capability."
                        .into(),
                }),
            _ => None,
        }
    }

    fn state(&self) -> State {
        let records = self.records();
        let scores = self.prober.scores.lock().unwrap().clone();
        let ratings = self.ratings.snapshot();
        let ranked = select::rank(None, &records, &scores, &ratings, &self.prober.me);
        let comments = ranked
            .iter()
            .map(|r| {
                (
                    r.provider.clone(),
                    ratings.comments(&r.record.node_id, &r.record.kind),
                )
            })
            .filter(|(_, c)| !c.is_empty())
            .collect();
        let mut types: Vec<String> = records.iter().map(|r| r.kind.clone()).collect();
        types.sort();
        types.dedup();
        let ms = self.share.members.lock().unwrap().clone();
        let me = ms.me().clone();
        let peers = ms
            .others()
            .map(|m| Peer {
                name: m.name.clone(),
                id: m.id.clone(),
                tinc_name: m.tinc_name(),
                address: m.address.to_string(),
                vpn: m.vpn.to_string(),
            })
            .collect();
        let tincd = std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|p| Path::new(&format!("/proc/{p}")).exists());
        State {
            node: me.name.clone(),
            node_id: me.id.clone(),
            community: self.share.community.clone(),
            address: me.address.to_string(),
            vpn: me.vpn.to_string(),
            tincd,
            seed_errors: self.seed_errors.clone(),
            medium_warnings: self.medium_warnings.clone(),
            peers,
            scanned: scores.scanned,
            types,
            providers: ranked,
            views: self.views.lock().unwrap().clone(),
            comments,
            managed: std::fs::read(self.sys.path(crate::services::STATE_FILE))
                .ok()
                .and_then(|b| {
                    serde_json::from_slice::<crate::registry::manager::StateFile>(&b).ok()
                })
                .map(|f| f.services)
                .unwrap_or_default(),
        }
    }

    /// Asks up to `MAX_VIEWS` members for their own probe summary (exchange port, community key).
    pub async fn refresh_views(&self) {
        let targets: Vec<(crate::mesh::members::Member, std::net::SocketAddr)> = {
            let ms = self.share.members.lock().unwrap();
            ms.others()
                .filter(|m| !m.address.is_unspecified())
                .take(MAX_VIEWS)
                .map(|m| {
                    (
                        m.clone(),
                        std::net::SocketAddr::new(m.address, m.exchange_port),
                    )
                })
                .collect()
        };
        let key = self.share.key.clone();
        let got = futures_util::future::join_all(targets.into_iter().map(|(m, addr)| {
            let key = key.clone();
            async move {
                let r = crate::mesh::exchange::fetch_scores(addr, &key, &m).await;
                (m.name, r)
            }
        }))
        .await;
        let now = crate::catalog::now_ms();
        let mut views: Vec<View> = got
            .into_iter()
            .filter_map(|(node, r)| match r {
                Ok(scores) => Some(View {
                    node,
                    at: now,
                    scores,
                }),
                Err(e) => {
                    tracing::debug!("scores of {node}: {e}");
                    None
                }
            })
            .collect();
        views.sort_by(|a, b| a.node.cmp(&b.node));
        *self.views.lock().unwrap() = views;
    }
}

fn error(message: String) -> Reply {
    Reply::Error { message }
}

/// The `cloudy-agent join` argument for a record type (`tahoe-introducer` -> `tahoe-lafs`).
pub fn joinable(kind: &str) -> Option<&'static str> {
    cloudy_model::kinds::find(kind)
        .and_then(|k| k.join)
        .map(|j| j.arg)
}

/// Joins a provider (the dashboard's Join, a control request): looked up once, here, by
/// `select::lookup` (the same rule as the CLI's), then handed as it is to the "use a service"
/// flow, so the port the user chose is the one joined.
pub async fn join(
    sys: &System,
    kind: &str,
    provider: Option<&str>,
    records: &[Record],
    scores: &Scores,
    ratings: &Ratings,
    me: &str,
) -> Reply {
    let pick = match select::lookup(kind, provider, records, scores, ratings, me) {
        Ok(p) => p,
        Err(e) => {
            let provider = match &e {
                select::LookupError::Itself { provider } => Some(provider.clone()),
                _ => provider.map(str::to_string),
            };
            return Reply::Joined {
                ok: false,
                provider,
                message: e.to_string(),
            };
        }
    };
    let note = pick.note();
    let chosen = pick.ranked;
    let with_note = |m: String| match &note {
        Some(n) => format!("{m} ({n})"),
        None => m,
    };
    let Some(arg) = joinable(kind) else {
        return Reply::Joined {
            ok: false,
            provider: Some(chosen.provider.clone()),
            message: with_note(format!(
                "joining {} ({kind}) is not available for this type",
                chosen.provider
            )),
        };
    };
    let (sys, record) = (sys.clone(), chosen.record.clone());
    let r = tokio::task::spawn_blocking(move || {
        let node = use_service::Node::read(&sys)?;
        use_service::join_provider(&sys, &node, arg, &record, None, Duration::from_secs(60))
    })
    .await;
    let (ok, message) = match r {
        Ok(Ok(lines)) => (
            true,
            // The service's own lines say how to use what was joined (a folder, a URL).
            std::iter::once(format!("joined {arg} of {} ({kind})", chosen.provider))
                .chain(lines)
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Ok(Err(e)) => (false, format!("joining {}: {e:#}", chosen.provider)),
        Err(e) => (false, format!("joining {}: {e}", chosen.provider)),
    };
    Reply::Joined {
        ok,
        provider: Some(chosen.provider),
        message: with_note(message),
    }
}

/// What answers the socket: the node's `Agent`; before the node is in a community, setup
/// mode's (`daemon::setup`), which hands over to the `Agent` once there is one.
pub trait Answer: Send + Sync + 'static {
    fn answer(&self, req: Request) -> futures_util::future::BoxFuture<'_, Reply>;
}

impl Answer for Agent {
    fn answer(&self, req: Request) -> futures_util::future::BoxFuture<'_, Reply> {
        Box::pin(self.handle(req))
    }
}

/// Serves the control socket until the agent stops.
pub async fn serve(agent: Arc<Agent>) -> std::io::Result<()> {
    let path = agent.sys.path(SOCKET);
    serve_with(path, agent).await
}

/// Serves the control socket at `path` with `agent`'s answers until the agent stops.
pub async fn serve_with(path: PathBuf, agent: Arc<dyn Answer>) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    restrict(&path);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let idle = Idle::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // No free slot: the oldest connection still without a request makes room (once it
        // has had EVICT_AFTER to send one); else this one waits for a request to finish, and
        // the ones after it wait in the listen queue. Nothing is dropped.
        let permit = loop {
            if let Ok(p) = slots.clone().try_acquire_owned() {
                break p;
            }
            if let Some((since, leave)) = idle.oldest() {
                tokio::time::sleep_until((since + EVICT_AFTER).into()).await;
                leave.notify_one();
            }
            if let Ok(Ok(p)) =
                tokio::time::timeout(EVICT_AFTER, slots.clone().acquire_owned()).await
            {
                break p;
            }
        };
        let agent = agent.clone();
        let idle = idle.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = Vec::new();
            let mut r = BufReader::new(r.take(MAX_REQUEST as u64));
            let (id, leave) = idle.add();
            let read = tokio::select! {
                r = tokio::time::timeout(REQUEST_DEADLINE, r.read_until(b'\n', &mut line)) => r,
                _ = leave.notified() => return,
            };
            idle.remove(id);
            let reply = match read {
                Ok(Ok(_)) => match Request::parse_line(&line) {
                    Ok(req) => agent.answer(req).await,
                    Err(reply) => reply,
                },
                Ok(Err(e)) => error(e.to_string()),
                Err(_) => error(format!(
                    "no request within {} s",
                    REQUEST_DEADLINE.as_secs()
                )),
            };
            let mut out = serde_json::to_vec(&reply).expect("replies serialise");
            out.push(b'\n');
            let _ = tokio::time::timeout(REPLY_DEADLINE, w.write_all(&out)).await;
            drop(permit);
        });
    }
}

/// Connections still waiting for their request, oldest first, each with what tells it to
/// leave.
#[derive(Clone, Default)]
struct Idle(Arc<Mutex<IdleList>>);

#[derive(Default)]
struct IdleList {
    next: u64,
    list: std::collections::VecDeque<(u64, std::time::Instant, Arc<tokio::sync::Notify>)>,
}

impl Idle {
    fn add(&self) -> (u64, Arc<tokio::sync::Notify>) {
        let mut l = self.0.lock().unwrap();
        l.next += 1;
        let (id, leave) = (l.next, Arc::new(tokio::sync::Notify::new()));
        l.list
            .push_back((id, std::time::Instant::now(), leave.clone()));
        (id, leave)
    }

    fn remove(&self, id: u64) {
        self.0.lock().unwrap().list.retain(|(i, ..)| *i != id);
    }

    /// The oldest idler, taken off the list (it is told to leave).
    fn oldest(&self) -> Option<(std::time::Instant, Arc<tokio::sync::Notify>)> {
        let (_, since, leave) = self.0.lock().unwrap().list.pop_front()?;
        Some((since, leave))
    }
}

/// 0660 root:cloudy-web when that group exists; else 0600 (only root may ask).
fn restrict(path: &Path) {
    use nix::unistd::{Gid, Uid};
    use std::os::unix::fs::PermissionsExt;
    match web_ids() {
        Some((_, gid)) => {
            let _ = nix::unistd::chown(path, Some(Uid::from_raw(0)), Some(Gid::from_raw(gid)));
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
        }
        None => {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
    }
}

/// Makes the dashboard's user (no home, no shell) as the service wrappers make theirs; None
/// (the dashboard then runs as the agent's user, with a warning) where that fails.
pub fn ensure_web_user() -> Option<(u32, u32)> {
    match crate::services::ensure_user(WEB_USER, Path::new("/nonexistent")) {
        Ok(ids) => Some(ids),
        Err(e) => {
            tracing::warn!("user {WEB_USER}: {e}");
            None
        }
    }
}

/// uid and gid of `cloudy-web`, if that user exists.
pub fn web_ids() -> Option<(u32, u32)> {
    let u = nix::unistd::User::from_name(WEB_USER).ok().flatten()?;
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the agent's control socket {0}: {1} (is `cloudy-agent run` running?)")]
    Connect(String, std::io::Error),
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket: no answer within {} s", CALL_TIMEOUT.as_secs())]
    Timeout,
    #[error("control socket: malformed reply: {0}")]
    Malformed(String),
}

/// Client side: one request, one reply.
pub async fn call(socket: &Path, req: &Request) -> Result<Reply, CallError> {
    let s = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| CallError::Connect(socket.display().to_string(), e))?;
    tokio::time::timeout(CALL_TIMEOUT, async {
        let (r, mut w) = s.into_split();
        let mut line = serde_json::to_vec(req).expect("requests serialise");
        line.push(b'\n');
        w.write_all(&line).await?;
        let mut buf = Vec::new();
        BufReader::new(r.take(MAX_REPLY as u64))
            .read_until(b'\n', &mut buf)
            .await?;
        serde_json::from_slice(&buf).map_err(|e| CallError::Malformed(e.to_string()))
    })
    .await
    .map_err(|_| CallError::Timeout)?
}

/// Starts the probe's periodic scans (the first soon after boot) and the control socket.
pub fn start(agent: Arc<Agent>) {
    start_socket(&agent.sys, agent.clone());
    start_probe(agent);
}

/// The control socket, answered by `answer`.
pub fn start_socket(sys: &System, answer: Arc<dyn Answer>) {
    // Before the socket is made: it is given to the user's group.
    ensure_web_user();
    let path = sys.path(SOCKET);
    tokio::spawn(async move {
        if let Err(e) = serve_with(path.clone(), answer).await {
            tracing::error!("control socket {}: {e}", path.display());
        }
    });
}

/// The probe's scans: the first soon, then periodic.
pub fn start_probe(agent: Arc<Agent>) {
    tokio::spawn(async move {
        let first = std::env::var("CLOUDY_PROBE_FIRST_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(crate::probe::FIRST_SCAN);
        tokio::time::sleep(first).await;
        let mut next_full = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if now >= next_full {
                agent.scan(None).await;
                next_full = now + crate::probe::jittered(crate::probe::PERIOD);
            } else {
                // A provider that appeared since the last scan gets a score within a minute.
                for kind in agent.unprobed_kinds() {
                    agent.scan(Some(&kind)).await;
                }
            }
            let wait = next_full.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep(wait.min(crate::probe::NEW_PROVIDERS)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_typed_and_strict() {
        let r: Request = serde_json::from_str(r#"{"op":"scan","kind":"syncthing"}"#).unwrap();
        assert_eq!(
            r,
            Request::Scan {
                kind: Some("syncthing".into())
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"op":"join","kind":"syncthing","provider":"n2:22000"}"#)
                .unwrap();
        assert!(matches!(r, Request::Join { .. }));
        assert!(serde_json::from_str::<Request>(r#"{"op":"shell","cmd":"id"}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"state","cmd":"id"}"#).is_err(),
            "unknown fields refused"
        );
        assert!(!kind_ok("../x") && !kind_ok("a b") && kind_ok("tahoe-storage"));
        // As the socket reads them: a bad kind is refused before anything acts on it.
        assert!(Request::parse_line(b"{\"op\":\"state\"}\n").is_ok());
        for bad in [
            r#"{"op":"scan","kind":"../x"}"#,
            r#"{"op":"join","kind":"a b","provider":null}"#,
            r#"{"op":"shell","cmd":"id"}"#,
        ] {
            assert!(
                matches!(
                    Request::parse_line(bad.as_bytes()),
                    Err(Reply::Error { .. })
                ),
                "{bad}"
            );
        }
    }

    /// A rate request as the socket reads it: stars 1-5, a comment bounded and without
    /// control characters, refused before anything signs it.
    #[test]
    fn rate_requests_are_checked() {
        let ok = r#"{"op":"rate","kind":"syncthing","provider":"n2:22000","stars":4,"comment":"<b>ok</b>"}"#;
        assert!(matches!(
            Request::parse_line(ok.as_bytes()),
            Ok(Request::Rate { stars: 4, .. })
        ));
        let long = format!(
            r#"{{"op":"rate","kind":"syncthing","provider":"n2","stars":4,"comment":"{}"}}"#,
            "x".repeat(10 * 1024)
        );
        for bad in [
            r#"{"op":"rate","kind":"syncthing","provider":"n2","stars":0}"#,
            r#"{"op":"rate","kind":"syncthing","provider":"n2","stars":6}"#,
            r#"{"op":"rate","kind":"syncthing","provider":"n2","stars":300}"#,
            r#"{"op":"rate","kind":"../x","provider":"n2","stars":3}"#,
            r#"{"op":"rate","kind":"syncthing","provider":"n2","stars":3,"comment":"a\nb"}"#,
            r#"{"op":"rate","kind":"syncthing","provider":"n2","stars":3,"rater":"x"}"#,
            long.as_str(),
        ] {
            assert!(
                matches!(
                    Request::parse_line(bad.as_bytes()),
                    Err(Reply::Error { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn approve_requests_are_bounded_and_checked() {
        let ok = r#"{"op":"approve","fingerprints":["abcd-efgh-ijkl-mnop","ABCDEFGHIJKLMNOP"]}"#;
        assert!(Request::parse_line(ok.as_bytes()).is_ok());
        assert!(Request::parse_line(br#"{"op":"pending"}"#).is_ok());
        let many = format!(
            r#"{{"op":"approve","fingerprints":[{}]}}"#,
            vec!["\"ABCD-EFGH-IJKL-MNOP\""; 65].join(",")
        );
        for bad in [
            r#"{"op":"approve","fingerprints":[]}"#.to_string(),
            r#"{"op":"approve","fingerprints":["ABCD-EFGH-IJKL-MNO1"]}"#.to_string(),
            r#"{"op":"approve","fingerprints":["ABCD-EFGH-IJKL-MNOP"],"key":"x"}"#.to_string(),
            r#"{"op":"pending","x":1}"#.to_string(),
            many,
        ] {
            match Request::parse_line(bad.as_bytes()) {
                Err(Reply::Error { message }) => assert!(!message.is_empty()),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn rekey_requests_are_checked() {
        for ok in [
            r#"{"op":"rekey"}"#,
            r#"{"op":"rekey","remove":["n3","0123456789abcdef0123456789abcdef"]}"#,
        ] {
            assert!(Request::parse_line(ok.as_bytes()).is_ok(), "{ok}");
        }
        let many = format!(
            r#"{{"op":"rekey","remove":[{}]}}"#,
            vec!["\"n3\""; 65].join(",")
        );
        for bad in [
            r#"{"op":"rekey","remove":["not a name!"]}"#.to_string(),
            r#"{"op":"rekey","key":"mine"}"#.to_string(),
            many,
        ] {
            assert!(
                matches!(
                    Request::parse_line(bad.as_bytes()),
                    Err(Reply::Error { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn invite_requests_are_bounded() {
        let ok = r#"{"op":"invite","name":"b","expires_s":86400,"uses":1}"#;
        assert!(Request::parse_line(ok.as_bytes()).is_ok());
        for bad in [
            r#"{"op":"invite","name":"../b","expires_s":86400,"uses":1}"#,
            r#"{"op":"invite","name":null,"expires_s":86400,"uses":0}"#,
            r#"{"op":"invite","name":null,"expires_s":99999999,"uses":1}"#,
            r#"{"op":"invite","name":null,"expires_s":86400,"uses":1,"key":"x"}"#,
            r#"{"op":"revoke","id":"../../etc"}"#,
        ] {
            assert!(
                matches!(
                    Request::parse_line(bad.as_bytes()),
                    Err(Reply::Error { .. })
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn join_names_the_provider_and_says_what_is_missing() {
        use crate::catalog::tests::record;
        let sys = System::new("/nonexistent");
        let r = record('b', "web", 8080);
        let rs = vec![r.clone()];
        match join(
            &sys,
            "web",
            Some("n1:8080"),
            &rs,
            &Scores::default(),
            &Ratings::default(),
            "x",
        )
        .await
        {
            Reply::Joined {
                ok,
                provider,
                message,
            } => {
                assert!(!ok);
                assert_eq!(provider.as_deref(), Some("n1:8080"));
                assert!(message.contains("not available for this type"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(joinable("tahoe-introducer"), Some("tahoe-lafs"));
        assert_eq!(joinable("syncthing"), Some("syncthing"));
        match join(
            &sys,
            "web",
            None,
            &rs,
            &Scores::default(),
            &Ratings::default(),
            "x",
        )
        .await
        {
            Reply::Joined { message, .. } => assert!(message.contains("scan first")),
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod idle_tests {
    use super::*;
    use std::time::Instant;

    /// An agent of one node over a tempdir root, its control socket served.
    async fn served() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let me = crate::mesh::members::tests::member('a', "n1");
        let members = Arc::new(Mutex::new(crate::mesh::members::Members::new(me)));
        let share = Sharing::new(
            sys.clone(),
            crate::mesh::exchange::CommunityKey::derive("c", "0123456789abcdef"),
            "c".into(),
            members,
            vec![],
        );
        let prober = Arc::new(Prober::new(
            sys.clone(),
            "a".repeat(32),
            crate::probe::Options::default(),
        ));
        let agent = Arc::new(Agent {
            sys: sys.clone(),
            share,
            prober,
            seed_errors: vec![],
            medium_warnings: vec![],
            pidfile: dir.path().join("tincd.pid"),
            views: Mutex::new(vec![]),
            ratings: Arc::new(Book::open(
                sys.clone(),
                "a".repeat(32),
                crate::mesh::members::tests::key_of('a'),
            )),
            invites: None,
            exchange_port: 6655,
            community: crate::probe::community::Community::new(),
            update: None,
        });
        tokio::spawn(serve(agent));
        let path = sys.path(SOCKET);
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (dir, path)
    }

    /// The hardening issue's defect 10: 64 connections that never send a request held every
    /// slot, and `status`/`scan` got nothing until one of them left.
    #[tokio::test(flavor = "current_thread")]
    async fn idle_clients_do_not_starve_a_request() {
        let (_dir, path) = served().await;
        let mut idle = Vec::new();
        for _ in 0..MAX_CLIENTS + 6 {
            idle.push(tokio::net::UnixStream::connect(&path).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        let r =
            tokio::time::timeout(Duration::from_secs(20), call(&path, &Request::State {})).await;
        let took = t.elapsed();
        match r {
            Ok(Ok(Reply::State(s))) => assert_eq!(s.node, "n1"),
            other => panic!("after {took:?}: {other:?}"),
        }
        eprintln!(
            "control: a request among {} idlers answered in {took:?}",
            idle.len()
        );
        assert!(took < Duration::from_secs(3), "the request waited {took:?}");
    }

    /// Fewer idlers than slots: each is still let go after REQUEST_DEADLINE, with a reply that
    /// says why.
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_client_is_let_go_after_the_deadline() {
        let (_dir, path) = served().await;
        let s = tokio::net::UnixStream::connect(&path).await.unwrap();
        let t = Instant::now();
        let mut got = String::new();
        let r = tokio::time::timeout(
            REQUEST_DEADLINE + Duration::from_secs(5),
            BufReader::new(s).read_line(&mut got),
        )
        .await;
        assert!(matches!(r, Ok(Ok(_))), "{r:?}");
        assert!(got.contains("no request within"), "{got}");
        assert!(t.elapsed() >= REQUEST_DEADLINE - Duration::from_millis(100));
    }
}
