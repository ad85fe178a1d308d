//! `cloudy-agent scan` and `cloudy-agent select`: through the running agent when it answers,
//! else from the files it keeps.

use crate::catalog::Record;
use crate::os::system::System;
use crate::probe::select;
use crate::probe::{Prober, Scores};

use super::{call, CallError, Reply, Request, SOCKET};

/// `cloudy-agent scan`: asks the running agent (so its scores and history stay one), or probes
/// from the catalog file itself when no agent answers.
pub fn scan(sys: &System, kind: Option<&str>, json: bool) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let scores = rt.block_on(async {
        let req = Request::Scan {
            kind: kind.map(str::to_string),
        };
        match call(&sys.path(SOCKET), &req).await {
            Ok(Reply::Scanned { scores }) => Ok(scores),
            Ok(Reply::Error { message }) => Err(anyhow::anyhow!(message)),
            Ok(other) => Err(anyhow::anyhow!("unexpected reply {other:?}")),
            Err(CallError::Connect(..)) => local_scan(sys, kind).await,
            Err(e) => Err(e.into()),
        }
    })?;
    let shown: Vec<&crate::probe::Probe> = scores
        .probes
        .iter()
        .filter(|p| kind.is_none_or(|k| p.record.kind == k))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(0);
    }
    println!(
        "{:<18} {:>5} {:<20} {:<15} {:>5} {:>9} {:<5} {:>6}  DETAIL",
        "TYPE", "SCORE", "NODE", "IP", "PORT", "RTT", "CHECK", "AVAIL"
    );
    for p in shown {
        println!(
            "{:<18} {:>5} {:<20} {:<15} {:>5} {:>9} {:<5} {:>5.0}%  {}",
            p.record.kind,
            p.score,
            p.record.node,
            p.record.ip.to_string(),
            p.record.port,
            p.rtt_ms
                .map(|m| format!("{m:.1} ms"))
                .unwrap_or_else(|| "-".into()),
            match p.check.ok {
                Some(true) => "ok",
                Some(false) => "fail",
                None => "n/a",
            },
            p.availability * 100.0,
            p.check.detail
        );
    }
    Ok(0)
}

/// Why there is no catalog at `path` and what to do: it exists only while `cloudy-agent run`
/// runs with a community, and the usual reason is that no agent runs at all.
pub fn no_catalog(sys: &System, path: &std::path::Path) -> String {
    if std::os::unix::net::UnixStream::connect(sys.path(SOCKET)).is_ok() {
        format!(
            "the agent runs, but keeps no service catalog ({} is missing): this node has no community\n  fix: give it a seed with [community] (a name and the community's key); `cloudy-agent status` shows the seed in use",
            path.display()
        )
    } else {
        format!(
            "the Cloudy agent is not running (no service catalog at {}, no answer on {})\n  fix: start it with `systemctl start cloudy-agent`; `systemctl status cloudy-agent` and `journalctl -u cloudy-agent` say why it stopped",
            path.display(),
            sys.path(SOCKET).display()
        )
    }
}

/// The catalog file's records and this node's id, for a scan without the agent.
fn catalog_records(sys: &System) -> anyhow::Result<(Vec<Record>, String)> {
    let path = sys.path(crate::catalog::CATALOG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(no_catalog(sys, &path)),
        _ => anyhow::anyhow!("{}: {e}", path.display()),
    })?;
    let cat: crate::catalog::Catalog =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let me = std::fs::read_to_string(sys.path(crate::os::identity::NODE_ID_FILE))
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok((cat.entries.into_iter().map(|e| e.record).collect(), me))
}

async fn local_scan(sys: &System, kind: Option<&str>) -> anyhow::Result<Scores> {
    let (records, me) = catalog_records(sys)?;
    let prober = Prober::new(sys.clone(), me, crate::probe::Options::default());
    *prober.scores.lock().unwrap() = crate::probe::load_scores(sys);
    Ok(prober.scan(&records, kind).await)
}

/// `cloudy-agent rate <type> <provider> <stars>`: through the running agent only (it signs
/// with the node key and serves the rating to the members).
pub fn rate(
    sys: &System,
    kind: &str,
    provider: &str,
    stars: u8,
    comment: Option<&str>,
) -> anyhow::Result<i32> {
    let req = Request::Rate {
        kind: kind.into(),
        provider: provider.into(),
        stars,
        comment: comment.unwrap_or_default().into(),
    };
    // Checked here too, so a bad comment is said before the agent is asked.
    req.check().map_err(|e| anyhow::anyhow!(e))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(call(&sys.path(SOCKET), &req)) {
        Ok(Reply::Rated { message, .. }) => {
            println!("{message}");
            Ok(0)
        }
        Ok(Reply::Error { message }) => {
            eprintln!("{message}");
            Ok(1)
        }
        Ok(other) => Err(anyhow::anyhow!("unexpected reply {other:?}")),
        Err(CallError::Connect(..)) => Err(anyhow::anyhow!(
            "the Cloudy agent is not running (no answer on {}): a rating is signed and shared by the running agent",
            sys.path(SOCKET).display()
        )),
        Err(e) => Err(e.into()),
    }
}

/// `cloudy-agent select <type>`: the best provider for this node and why.
pub fn select(sys: &System, kind: &str, json: bool) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (best, ranked) = rt.block_on(async {
        let req = Request::Select {
            kind: kind.to_string(),
        };
        match call(&sys.path(SOCKET), &req).await {
            Ok(Reply::Selected { best, ranked }) => Ok((best.map(|b| *b), ranked)),
            Ok(Reply::Error { message }) => Err(anyhow::anyhow!(message)),
            Ok(other) => Err(anyhow::anyhow!("unexpected reply {other:?}")),
            Err(CallError::Connect(..)) => {
                let (records, me) = catalog_records(sys)?;
                let mut scores = crate::probe::load_scores(sys);
                let unprobed = records
                    .iter()
                    .any(|r| r.kind == kind && r.node_id != me && scores.of(r).is_none());
                if unprobed {
                    scores = local_scan(sys, Some(kind)).await?;
                }
                // A damaged ratings file is said, and the choice made on the probe alone.
                let ratings = crate::probe::ratings::Ratings::load(sys).unwrap_or_else(|e| {
                    eprintln!("warning: {e}");
                    Default::default()
                });
                Ok((
                    select::choose(kind, &records, &scores, &ratings, &me),
                    select::rank(Some(kind), &records, &scores, &ratings, &me),
                ))
            }
            Err(e) => Err(e.into()),
        }
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"best": best, "ranked": ranked}))?
        );
        return Ok(if best.is_some() { 0 } else { 1 });
    }
    match &best {
        Some(b) => {
            println!(
                "{kind}: {} ({} {}:{}) \"{}\"",
                b.provider, b.record.host, b.record.ip, b.record.port, b.record.description
            );
            println!("  why: {}", select::why(b));
            for r in ranked.iter().filter(|r| r.provider != b.provider) {
                println!("  other: {} — {}", r.provider, select::why(r));
            }
            Ok(0)
        }
        None => {
            eprintln!("no reachable {kind} provider known to this node");
            Ok(1)
        }
    }
}

/// What `cloudy-agent invite` does.
pub enum InviteOp {
    Make {
        name: Option<String>,
        expires: String,
        uses: u32,
        seed: bool,
    },
    List,
    Revoke(String),
}

/// `cloudy-agent invite`: through the running agent, which alone holds the invitations.
pub fn invite(sys: &System, op: InviteOp) -> anyhow::Result<i32> {
    let req = match &op {
        InviteOp::Make {
            name,
            expires,
            uses,
            ..
        } => Request::Invite {
            name: name.clone(),
            expires_s: crate::mesh::invite::parse_duration(expires)
                .map_err(|e| anyhow::anyhow!("--expires {e}"))?
                .as_secs(),
            uses: *uses,
        },
        InviteOp::List => Request::Invitations {},
        InviteOp::Revoke(id) => Request::Revoke { id: id.clone() },
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = rt
        .block_on(call(&sys.path(SOCKET), &req))
        .map_err(|e| match e {
            CallError::Connect(..) => anyhow::anyhow!(
                "the Cloudy agent is not running (no answer on {}): invitations are made by the running agent\n  fix: start it with `systemctl start cloudy-agent`",
                sys.path(SOCKET).display()
            ),
            e => e.into(),
        })?;
    match (reply, op) {
        (
            Reply::Invited {
                token,
                snippet,
                id,
                expires,
            },
            InviteOp::Make { seed, .. },
        ) => {
            if seed {
                print!("{snippet}");
            } else {
                println!("{token}");
            }
            eprintln!("invitation {id}, valid until {expires} (unix time); `cloudy-agent invite --revoke {id}` withdraws it");
        }
        (Reply::Invitations { list }, _) => {
            println!("{:<16} {:>10} {:>4}  NAME", "ID", "EXPIRES", "USES");
            for i in list {
                println!(
                    "{:<16} {:>10} {:>4}  {}",
                    i.id,
                    i.expires,
                    i.uses_left,
                    i.name.as_deref().unwrap_or("-")
                );
            }
        }
        (Reply::Revoked { found }, InviteOp::Revoke(id)) => {
            if !found {
                anyhow::bail!("no invitation {id} here (`cloudy-agent invite --list` shows them)");
            }
            println!("revoked {id}");
        }
        (Reply::Error { message }, _) => anyhow::bail!(message),
        (other, _) => anyhow::bail!("unexpected reply {other:?}"),
    }
    Ok(0)
}

/// What the running agent says on its control socket, for `status`: a member, setup mode
/// (where only setup's requests and `State` are answered), or not running.
pub fn agent_line(sys: &System) -> String {
    let socket = sys.path(SOCKET);
    if !socket.exists() {
        return "not running (no control socket)".into();
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return "(cannot ask: no runtime)".into();
    };
    let asked = rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(3),
            call(&socket, &Request::State {}),
        )
        .await
    });
    match asked {
        Ok(Ok(Reply::State(s))) => format!("running, a member of {}", s.community),
        Ok(Ok(Reply::Setup(_))) => {
            "running, in setup mode (its dashboard creates or joins a community)".into()
        }
        Ok(Ok(other)) => format!("running, answered {other:?}"),
        Ok(Err(e)) => format!("not answering on {}: {e}", socket.display()),
        Err(_) => format!("not answering on {} within 3 s", socket.display()),
    }
}

/// One request to the running agent, with the usual fix when it does not answer.
fn ask(sys: &System, req: &Request, what: &str) -> anyhow::Result<Reply> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(call(&sys.path(SOCKET), req))
        .map_err(|e| match e {
            CallError::Connect(..) => anyhow::anyhow!(
                "the Cloudy agent is not running (no answer on {}): {what} by the running agent\n  fix: start it with `systemctl start cloudy-agent`",
                sys.path(SOCKET).display()
            ),
            e => e.into(),
        })
}

/// `cloudy-agent approve FP...`: each fingerprint's outcome on a line; exit 1 if any failed.
pub fn approve(sys: &System, fingerprints: &[String]) -> anyhow::Result<i32> {
    let mut fps = Vec::new();
    for f in fingerprints {
        fps.push(crate::mesh::pending::parse_fingerprint(f)?);
    }
    let req = Request::Approve { fingerprints: fps };
    match ask(sys, &req, "pending nodes are approved")? {
        Reply::Approved { outcomes } => {
            let mut failed = 0;
            for o in &outcomes {
                if o.ok {
                    println!("{}: {}", o.fingerprint, o.message);
                } else {
                    failed += 1;
                    eprintln!("{}: {}", o.fingerprint, o.message);
                }
            }
            Ok(i32::from(failed > 0))
        }
        Reply::Error { message } => anyhow::bail!(message),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

/// `cloudy-agent pending [--json]`.
pub fn pending(sys: &System, json: bool) -> anyhow::Result<i32> {
    match ask(sys, &Request::Pending {}, "pending nodes are listed")? {
        Reply::Pending { list } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no pending node of this community is announced on the LAN");
            } else {
                println!(
                    "{:<19}  {:<21}  {:<32}  SINCE (unix ms)",
                    "FINGERPRINT", "ADDRESS", "NODE ID"
                );
                for p in list {
                    println!(
                        "{:<19}  {:<21}  {:<32}  {}",
                        p.fingerprint, p.address, p.node_id, p.since
                    );
                }
            }
            Ok(0)
        }
        Reply::Error { message } => anyhow::bail!(message),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

/// `cloudy-agent rekey [--remove NODE]...`: each member's outcome on a line.
pub fn rekey(sys: &System, remove: &[String]) -> anyhow::Result<i32> {
    let req = Request::Rekey {
        remove: remove.to_vec(),
    };
    req.check().map_err(|e| anyhow::anyhow!(e))?;
    match ask(sys, &req, "the community key is replaced")? {
        Reply::Rekeyed { serial, told } => {
            println!("community key replaced (serial {serial})");
            for t in told {
                println!("  {} ({}): {}", t.node, t.node_id, t.message);
            }
            Ok(0)
        }
        Reply::Error { message } => anyhow::bail!(message),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

/// `cloudy-agent update status|check|now`: through the running agent (a check or an install
/// runs there in the background; this polls and prints its progress until it is done), or,
/// when no agent runs, right here from the files and the seed's url.
pub fn update(sys: &System, action: super::UpdateAction, json: bool) -> anyhow::Result<i32> {
    use super::UpdateAction;
    use crate::update::{Report, Updater};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let t0 = crate::update::state::now_s();
    let report: Report = rt.block_on(async {
        let first = call(&sys.path(SOCKET), &Request::Update { action }).await;
        match first {
            Ok(Reply::Update { report, started }) => {
                if !started {
                    return Ok(*report);
                }
                // Poll until the background work is done and says how it went.
                let mut last_line = String::new();
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    let r = match call(
                        &sys.path(SOCKET),
                        &Request::Update {
                            action: UpdateAction::Status,
                        },
                    )
                    .await
                    {
                        Ok(Reply::Update { report, .. }) => *report,
                        Ok(Reply::Error { message }) => return Err(anyhow::anyhow!(message)),
                        Ok(other) => return Err(anyhow::anyhow!("unexpected reply {other:?}")),
                        Err(e) => return Err(e.into()),
                    };
                    if let Some(p) = &r.downloading {
                        let line = format!("fetching: {} of {} bytes", p.done, p.total);
                        if line != last_line && !json {
                            eprintln!("{line}");
                            last_line = line;
                        }
                    }
                    let done = !r.working && r.last.as_ref().is_some_and(|o| o.at >= t0);
                    if done {
                        return Ok(r);
                    }
                }
            }
            Ok(Reply::Error { message }) => Err(anyhow::anyhow!(message)),
            Ok(other) => Err(anyhow::anyhow!("unexpected reply {other:?}")),
            Err(CallError::Connect(..)) => {
                if action == UpdateAction::Status {
                    return Ok(crate::update::offline_report(sys));
                }
                // No agent: this process checks (and installs) from the seed's url alone.
                let settings = sys.load_seed().seed.update.unwrap_or_default();
                let u = Updater::new(sys.clone(), settings, None, 0, Box::new(|| None));
                match action {
                    UpdateAction::Now => u.now().await,
                    _ => u.check().await,
                };
                Ok(u.report().await)
            }
            Err(e) => Err(e.into()),
        }
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for l in report.lines() {
            println!("{l}");
        }
    }
    let bad = report.fallback.is_some()
        || report.last.as_ref().is_some_and(|o| {
            action != UpdateAction::Status && (o.kind == "refused" || o.kind == "error")
        });
    Ok(if bad { 1 } else { 0 })
}
