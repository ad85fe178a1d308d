//! Setup mode (issue 15): a node whose seed names no community keeps running and serves its
//! dashboard (the same HTTPS listener, certificate and login) and its control socket, where
//! the dashboard's setup page names the node, creates a community or joins one with an
//! invitation. What it chose is kept (`os::stored`), and the node starts in the community at
//! once: `run` hands the community to boot, which starts the mesh and runs the node as it
//! would have at boot, with this socket and dashboard (the `Front`) answering as the member
//! from then on. The next boot starts as a member.

use anyhow::Result;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use super::options::Options;
use crate::control::{Agent, Answer, Reply, Request, SetupView};
use crate::os::issue::{self, Screen};
use crate::os::stored::{self, Stored};
use crate::os::system::System;
use cloudy_model::seed::{Community, Seed};

/// How long a create or join waits for the node to start in the community (tinc keys are made
/// on the way) before it answers that the community is kept and the node is still starting.
/// (The unit tests, which never start a node, wait a moment only.)
const START_WITHIN: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(100)
};
/// A pasted token is tried twice (2 s apart): the person waits at the page, and a refusal or
/// an inviter that is off is better said at once than after boot's minute of retries.
const REDEEM_TRIES: u32 = 2;
/// The invitation made for the next node when a community is created here.
const FIRST_INVITE_S: u64 = 24 * 3600;

/// The node as setup mode starts it.
pub struct Node {
    pub name: String,
    pub node_id: String,
    /// The seed names the node: it is renamed there, not here.
    pub name_from_seed: bool,
    pub address: Option<IpAddr>,
    /// The login screen's line on the seed.
    pub seed_line: String,
}

/// The community setup mode created or joined, for boot to start the node in.
pub struct Joined {
    pub community: Community,
    pub key: String,
    pub name: String,
    pub front: Arc<Front>,
}

struct Joining {
    community: Community,
    key: String,
    name: String,
}

/// The control socket's answers while the node is in setup mode, and the member's `Agent`'s
/// once it is one (`install`).
pub struct Front {
    sys: System,
    node: watch::Sender<Option<Arc<Agent>>>,
    at: Mutex<Node>,
    joined: mpsc::Sender<Joining>,
    /// One setup action at a time (two tabs pressing Create at once make one community).
    busy: tokio::sync::Mutex<()>,
    /// The community handed to boot, while the node is starting in it.
    starting: Mutex<Option<String>>,
    /// The login screen while in setup mode, rewritten on a rename and stopped on install.
    screen: Mutex<(Screen, Option<tokio::task::JoinHandle<()>>)>,
}

impl Front {
    /// The member's agent answers from now on; setup mode's login screen stops.
    pub fn install(&self, agent: Arc<Agent>) {
        if let Some(h) = self.screen.lock().unwrap().1.take() {
            h.abort();
        }
        self.node.send_replace(Some(agent));
    }

    fn member(&self) -> Option<Arc<Agent>> {
        self.node.borrow().clone()
    }

    fn show_screen(&self) {
        let mut s = self.screen.lock().unwrap();
        if let Some(h) = s.1.take() {
            h.abort();
        }
        s.1 = Some(tokio::spawn(issue::keep(self.sys.clone(), s.0.clone())));
    }

    fn view(&self) -> SetupView {
        let at = self.at.lock().unwrap();
        SetupView {
            node: at.name.clone(),
            node_id: at.node_id.clone(),
            name_from_seed: at.name_from_seed,
            address: at.address.map(|a| a.to_string()),
            starting: self.starting.lock().unwrap().clone(),
        }
    }

    async fn handle(&self, req: Request) -> Reply {
        if let Some(agent) = self.member() {
            return agent.handle(req).await;
        }
        if let Err(e) = req.check() {
            return error(e);
        }
        let starting = self.starting.lock().unwrap().clone();
        if let (
            Some(c),
            Request::SetupName { .. } | Request::SetupCreate { .. } | Request::SetupJoin { .. },
        ) = (&starting, &req)
        {
            return error(format!(
                "community {c:?} is kept and this node is still starting in it: see `cloudy-agent status` and the agent's log"
            ));
        }
        match req {
            Request::State {} => Reply::Setup(Box::new(self.view())),
            Request::Invitations {} => Reply::Invitations { list: vec![] },
            Request::SetupName { name } => self.rename(&name).await,
            Request::SetupCreate { community } => self.create(&community).await,
            Request::SetupJoin { token } => self.join(&token).await,
            _ => {
                let (name, port) = {
                    let s = self.screen.lock().unwrap();
                    (s.0.name.clone(), s.0.https_port)
                };
                error(format!(
                    "this node is in no community yet: {}",
                    issue::setup_line(&name, port)
                ))
            }
        }
    }

    async fn rename(&self, name: &str) -> Reply {
        let _one = self.busy.lock().await;
        if let Some(a) = self.member() {
            return a
                .handle(Request::SetupName {
                    name: name.to_string(),
                })
                .await;
        }
        if self.at.lock().unwrap().name_from_seed {
            return error(
                "the seed names this node: change [node] name in the seed (cloudy.toml) instead"
                    .into(),
            );
        }
        if let Err(e) = crate::os::identity::apply_hostname(&self.sys, name) {
            return error(format!("renaming the node: {e}"));
        }
        if let Err(e) = stored::set_node_name(&self.sys, name) {
            return error(format!(
                "keeping the name in {}: {e}",
                self.sys.path(stored::NODE_NAME_FILE).display()
            ));
        }
        tracing::info!("setup: the node is named {name:?}");
        self.at.lock().unwrap().name = name.to_string();
        self.screen.lock().unwrap().0.name = name.to_string();
        self.show_screen();
        Reply::SetupDone {
            message: format!("This node is now named {name:?}."),
            community: None,
            invitation: None,
        }
    }

    async fn create(&self, community: &str) -> Reply {
        let _one = self.busy.lock().await;
        if let Some(a) = self.member() {
            return a
                .handle(Request::SetupCreate {
                    community: community.to_string(),
                })
                .await;
        }
        use base64::Engine as _;
        // 256 bits from the kernel's CSPRNG (getrandom), as every other key of the node.
        let key = base64::engine::general_purpose::STANDARD
            .encode(crate::os::identity::random_bytes::<32>());
        let stored = Stored {
            name: community.to_string(),
            peers: Vec::new(),
        };
        let agent = match self.become_member(stored, key).await {
            Ok(a) => a,
            Err(e) => return error(e),
        };
        tracing::info!("setup: created community {community:?}");
        let invitation = match agent
            .handle(Request::Invite {
                name: None,
                expires_s: FIRST_INVITE_S,
                uses: 1,
            })
            .await
        {
            r @ Reply::Invited { .. } => Some(Box::new(r)),
            other => {
                tracing::warn!("setup: no first invitation: {other:?}");
                None
            }
        };
        Reply::SetupDone {
            message: format!("Community {community:?} created: this node is its first member."),
            community: Some(community.to_string()),
            invitation,
        }
    }

    async fn join(&self, token: &str) -> Reply {
        let _one = self.busy.lock().await;
        if let Some(a) = self.member() {
            return a
                .handle(Request::SetupJoin {
                    token: token.to_string(),
                })
                .await;
        }
        let token = match crate::mesh::invite::Token::parse(token) {
            Ok(t) => t,
            Err(e) => return error(e.to_string()),
        };
        let name = self.at.lock().unwrap().name.clone();
        let got = match redeem(&token, &name, REDEEM_TRIES).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("setup: invitation not redeemed: {e:#}");
                return error(format!("Not joined: {e:#}."));
            }
        };
        let community = got.community.clone();
        // The inviter's address is where this node first meets the community (a LAN without
        // multicast, or a member across a router); the member list takes over from there.
        let stored = Stored {
            name: got.community,
            peers: token.addrs.clone(),
        };
        if let Err(e) = self.become_member(stored, got.key).await {
            return error(e);
        }
        tracing::info!("setup: joined community {community:?}");
        Reply::SetupDone {
            message: format!(
                "Joined community {community:?}: this node is a member now. The VPN and the \
                 other members' services follow within seconds."
            ),
            community: Some(community),
            invitation: None,
        }
    }

    /// Keeps the community and its key, hands it to boot and waits until the node runs in it.
    async fn become_member(&self, c: Stored, key: String) -> Result<Arc<Agent>, String> {
        stored::set_community(&self.sys, &c, &key).map_err(|e| {
            format!("the community could not be kept ({e}): nothing changed; try again")
        })?;
        let name = self.at.lock().unwrap().name.clone();
        let mut installed = self.node.subscribe();
        let joining = Joining {
            community: Community {
                name: c.name.clone(),
                peers: c.peers,
                ..Default::default()
            },
            key,
            name,
        };
        if self.joined.send(joining).await.is_err() {
            return Err("the agent is stopping: the community is kept for the next boot".into());
        }
        *self.starting.lock().unwrap() = Some(c.name.clone());
        let waited = tokio::time::timeout(START_WITHIN, async {
            installed
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|a| a.clone())
        })
        .await;
        match waited {
            Ok(Some(a)) => Ok(a),
            _ => Err(format!(
                "community {:?} is kept, but the node did not start in it within {} s: see \
                 `cloudy-agent status` and the agent's log; it starts in it at the next boot",
                c.name,
                START_WITHIN.as_secs()
            )),
        }
    }
}

impl Answer for Front {
    fn answer(&self, req: Request) -> futures_util::future::BoxFuture<'_, Reply> {
        Box::pin(self.handle(req))
    }
}

fn error(message: String) -> Reply {
    Reply::Error { message }
}

/// Setup mode: the control socket, the dashboard and the login screen, until the dashboard
/// creates or joins a community (its `Joined`) or SIGTERM (None).
pub async fn run(sys: &System, opts: &Options, seed: &Seed, at: Node) -> Result<Option<Joined>> {
    let ports = super::front::ports(seed);
    let mut names = vec![at.name.clone(), format!("{}.local", at.name)];
    names.extend(at.address.map(|a| a.to_string()));
    let certificate = super::front::dashboard_certificate(sys, &names, ports.https);
    let line = issue::setup_line(&at.name, ports.https);
    let screen = Screen {
        name: at.name.clone(),
        https_port: ports.https,
        certificate: certificate
            .as_ref()
            .map(|c| c.fingerprint.clone())
            .map_err(Clone::clone),
        seed: at.seed_line.clone(),
        setup: true,
    };
    let (tx, mut rx) = mpsc::channel(1);
    let front = Arc::new(Front {
        sys: sys.clone(),
        node: watch::Sender::new(None),
        at: Mutex::new(at),
        joined: tx,
        busy: tokio::sync::Mutex::new(()),
        starting: Mutex::new(None),
        screen: Mutex::new((screen, None)),
    });
    front.show_screen();
    crate::control::start_socket(sys, front.clone());
    crate::dashboard::supervise(sys.clone(), opts.agent_exe.clone(), ports, certificate);
    // The console's operator must see it whatever the log level; stdout reaches the journal.
    if let Some(console) = crate::os::identity::console_path(sys) {
        let _ = crate::os::identity::show_on_console(&console, &format!("\ncloudy: {line}\n\n"));
    }
    println!("cloudy: {line}");
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        j = rx.recv() => Ok(j.map(|j| Joined {
            community: j.community,
            key: j.key,
            name: j.name,
            front: front.clone(),
        })),
        _ = term.recv() => Ok(None),
        _ = int.recv() => Ok(None),
    }
}

/// Redeems `token` at the inviting member for node `name`, trying `tries` times in all while
/// it may not be up yet. A refusal (used, expired, unknown, another name) is final. The error
/// says why, never the token. Boot (a seed's token) and setup mode (a pasted one) both use it.
pub(super) async fn redeem(
    token: &crate::mesh::invite::Token,
    name: &str,
    tries: u32,
) -> Result<crate::mesh::exchange::Redeemed> {
    use crate::mesh::exchange::{self, ExchangeError};
    let mut wait = Duration::from_secs(2);
    let mut tried = 0;
    loop {
        tried += 1;
        match exchange::redeem(token, name).await {
            Ok(r) => return Ok(r),
            Err(e @ ExchangeError::Refused(_)) => {
                return Err(anyhow::anyhow!("the inviting member {e}"));
            }
            Err(e) if tried >= tries => {
                return Err(anyhow::anyhow!(
                    "no inviting member answered at {} ({e}): is it up and on this LAN?",
                    token.addrs.join(", ")
                ))
            }
            Err(e) => tracing::warn!("redeeming the invitation: {e}; trying again"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn front(sys: &System, from_seed: bool) -> (Arc<Front>, mpsc::Receiver<Joining>) {
        let (tx, rx) = mpsc::channel(1);
        let screen = Screen {
            name: "cloudy".into(),
            https_port: 8443,
            certificate: Ok("AB:CD".into()),
            seed: "seed: applied".into(),
            setup: true,
        };
        let f = Front {
            sys: sys.clone(),
            node: watch::Sender::new(None),
            at: Mutex::new(Node {
                name: "cloudy".into(),
                node_id: "0".repeat(32),
                name_from_seed: from_seed,
                address: None,
                seed_line: "seed: applied".into(),
            }),
            joined: tx,
            busy: tokio::sync::Mutex::new(()),
            starting: Mutex::new(None),
            screen: Mutex::new((screen, None)),
        };
        (Arc::new(f), rx)
    }

    /// In setup mode the socket answers `State` with the setup view, turns away what needs a
    /// community with the way to set the node up, and a rename is applied and kept.
    #[tokio::test]
    async fn setup_mode_answers_state_refuses_the_rest_and_renames() {
        let d = tempfile::tempdir().unwrap();
        let sys = System::new(d.path());
        let (f, _rx) = front(&sys, false);
        assert!(matches!(f.handle(Request::State {}).await, Reply::Setup(v) if v.node == "cloudy"));
        match f.handle(Request::Scan { kind: None }).await {
            Reply::Error { message } => assert!(
                message.contains("setup mode: open https://cloudy.local:8443/"),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
        match f
            .handle(Request::SetupName {
                name: "alpha".into(),
            })
            .await
        {
            Reply::SetupDone {
                community: None, ..
            } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(stored::node_name(&sys).unwrap().as_deref(), Some("alpha"));
        assert_eq!(
            std::fs::read_to_string(sys.path("/etc/hostname")).unwrap(),
            "alpha\n"
        );
        assert!(matches!(f.handle(Request::State {}).await, Reply::Setup(v) if v.node == "alpha"));
        // A bad name is refused before anything is written.
        assert!(matches!(
            f.handle(Request::SetupName {
                name: "no spaces".into()
            })
            .await,
            Reply::Error { .. }
        ));
        assert_eq!(stored::node_name(&sys).unwrap().as_deref(), Some("alpha"));
    }

    /// A seed that names the node keeps its name; a community handed to boot is kept, and
    /// while the node starts in it no second one can be made.
    #[tokio::test]
    async fn a_seed_name_stays_and_one_community_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let sys = System::new(d.path());
        let (f, mut rx) = front(&sys, true);
        match f
            .handle(Request::SetupName {
                name: "alpha".into(),
            })
            .await
        {
            Reply::Error { message } => assert!(message.contains("[node] name"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(stored::node_name(&sys).unwrap(), None);
        // Boot takes the community but the node never starts in it (no agent installed): the
        // create gives up after START_WITHIN.
        let creating = tokio::spawn({
            let f = f.clone();
            async move {
                f.handle(Request::SetupCreate {
                    community: "kitchen".into(),
                })
                .await
            }
        });
        let handed = rx.recv().await.unwrap();
        assert_eq!(handed.community.name, "kitchen");
        assert!(handed.key.len() >= 40, "a 256-bit key, base64");
        assert_eq!(
            crate::os::secrets::community_key(&sys, None).unwrap(),
            Some(handed.key.clone())
        );
        assert_eq!(stored::community(&sys).unwrap().unwrap().name, "kitchen");
        match creating.await.unwrap() {
            Reply::Error { message } => assert!(message.contains("is kept"), "{message}"),
            other => panic!("{other:?}"),
        }
        match f
            .handle(Request::SetupCreate {
                community: "other".into(),
            })
            .await
        {
            Reply::Error { message } => {
                assert!(message.contains("still starting"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            f.handle(Request::State {}).await,
            Reply::Setup(v) if v.starting.as_deref() == Some("kitchen")
        ));
        assert_eq!(stored::community(&sys).unwrap().unwrap().name, "kitchen");
    }
}
