//! The `streaming` service for the agent's service manager: `cloudy-agent stream` run as the
//! unprivileged `cloudy-stream` user (ffmpeg below it), checked from outside over HTTP, its
//! record made from the stream process's own status.
//!
//! Enabled in the seed (`[services] enable = ["streaming"]`: a source with `[streaming]
//! source`, else a peer) or by `cloudy-agent join streaming [provider]` (a peer).

use serde_json::json;
use std::sync::Mutex;

use super::health::Watch;
use super::relay::Provider;
use super::stream::{PROVIDER_FILE, STATE_DIR};
use crate::catalog::Record;
use crate::os::supervisor::{Log, Program};
use crate::os::system::System;
use crate::services::{
    ensure_user, own_dir, read_joined, state_dir, Configured, Context, Env, Joined, Service,
    ServiceError, Using,
};
use cloudy_model::names::check_provider;
use cloudy_model::seed::streaming::{Config, Input};

pub const NAME: &str = "streaming";
pub const USER: &str = "cloudy-stream";
/// Root's parent of [`STATE_DIR`], where the walk into it starts.
const RUN_BASE: &str = "/run/cloudy";

/// The gid of a group in the running system's /etc/group.
fn group_id(name: &str) -> Option<u32> {
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
        })
}

pub struct Streaming {
    sys: System,
    config: Config,
    watch: Watch,
    /// The provider last written to `PROVIDER_FILE`.
    provider: Mutex<Option<Option<String>>>,
}

impl Streaming {
    pub fn new(sys: &System) -> Streaming {
        // A broken seed was reported by the daemon already; its defaults have no streaming.
        let config = sys.load_seed().seed.streaming.unwrap_or_default();
        Streaming {
            sys: sys.clone(),
            watch: Watch::new(config.port()),
            config,
            provider: Mutex::new(None),
        }
    }

    /// A provider joined with `cloudy-agent join` wins over the seed's.
    fn wanted_provider(&self) -> Option<String> {
        read_joined(&self.sys, NAME)
            .and_then(|j| j["provider"].as_str().map(str::to_string))
            .filter(|p| check_provider(p).is_ok())
            .or_else(|| self.config.provider.clone())
    }

    fn any_provider(&self, env: &Env) -> bool {
        env.catalog
            .iter()
            .filter_map(Provider::from_record)
            .any(|p| p.eligible(&env.ctx.node_id, self.config.id.as_deref()))
    }

    fn ids(&self) -> Result<(u32, u32), ServiceError> {
        Ok(ensure_user(USER, &state_dir(&self.sys, NAME))?)
    }
}

impl Service for Streaming {
    fn name(&self) -> &str {
        NAME
    }

    fn configure(&self, env: &Env) -> Result<Configured, ServiceError> {
        match self.config.input() {
            Some(Input::File(p)) if !p.is_file() => {
                return Ok(Configured::Waiting(format!(
                    "streaming.source {}: no such file",
                    p.display()
                )));
            }
            // A peer with nothing to relay yet waits (once started, it looks by itself).
            None if !self.any_provider(env) => {
                return Ok(Configured::Waiting(format!(
                    "no provider of {} in the catalog yet",
                    self.config
                        .id
                        .as_deref()
                        .map_or("any stream".to_string(), |i| format!("stream {i}"))
                )));
            }
            _ => {}
        }
        let ids = self.ids()?;
        // Segments on tmpfs; the log (opened by the agent) under /var/lib/cloudy/streaming.
        // Both the service user's: walked without following a link, from root's parents.
        let segments = own_dir(
            &self.sys.path(RUN_BASE),
            &self.sys.path(STATE_DIR),
            ids,
            0o755,
        )?;
        own_dir(
            &self.sys.state_dir(),
            &state_dir(&self.sys, NAME),
            ids,
            0o750,
        )?;
        // The stream process reads it on every choice of provider: no restart needed.
        let want = self.wanted_provider();
        let mut applied = self.provider.lock().unwrap();
        if applied.as_ref() != Some(&want) {
            let path = self.sys.path(PROVIDER_FILE);
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("provider");
            match &want {
                Some(p) => segments.write(name, format!("{p}\n").as_bytes(), 0o644, None)?,
                None => segments.remove(name)?,
            }
            *applied = Some(want);
        }
        Ok(Configured::Unchanged)
    }

    fn program(&self, env: &Env) -> Option<Program> {
        let ids = self.ids().ok()?;
        let c = &self.config;
        let marker = format!("--node-id={}", env.ctx.node_id);
        let mut p = Program::new(NAME, &env.agent_exe)
            .arg("--root")
            .arg(self.sys.root())
            .arg("stream")
            .arg(format!("--node={}", env.ctx.node))
            .arg(&marker)
            .arg(format!("--port={}", c.port()));
        if let Some(s) = &c.source {
            // One argument, `--source=<it>`: a source starting with '-' stays a value.
            p = p.arg(format!("--source={s}"));
        }
        if let Some(id) = &c.id {
            p = p.arg(format!("--id={id}"));
        }
        p.user = Some(match c.input() {
            // Cameras belong to group video; its gid lets the stream open one.
            Some(Input::Device(_)) => (ids.0, group_id("video").unwrap_or(ids.1)),
            _ => ids,
        });
        // Segments (its own and ffmpeg's) go to its tmpfs directory; the log is opened by the
        // agent, so its directory stays read-only.
        p.writable = vec![self.sys.path(STATE_DIR)];
        // Nothing of the agent's state is its business (the catalog it reads is in /run).
        p.hidden = vec![self.sys.state_dir()];
        p.cwd = Some(self.sys.path(STATE_DIR));
        for var in ["CLOUDY_FFMPEG", "CLOUDY_LOG"] {
            if let Ok(v) = std::env::var(var) {
                p.env.push((var.into(), v));
            }
        }
        p.marker = Some(marker);
        p.log = Some(Log::new(
            self.sys.state_dir(),
            state_dir(&self.sys, NAME).join("stream.log"),
        ));
        Some(p)
    }

    fn healthy(&self) -> bool {
        match self.watch.healthy() {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("streaming: not healthy: {e}");
                false
            }
        }
    }

    fn record(&self, ctx: &Context) -> Option<Record> {
        self.watch.record(ctx.record(NAME, self.config.port(), ""))
    }

    fn use_provider(&self, u: &Using, provider: &Record) -> Result<Joined, ServiceError> {
        if self.config.source.is_some() {
            return Err(ServiceError::Failed(
                "this node is a streaming source (streaming.source in its seed); it relays nothing"
                    .into(),
            ));
        }
        let id = provider
            .fields
            .get("stream_id")
            .ok_or_else(|| {
                ServiceError::Failed(format!(
                    "{}'s streaming record has no stream_id",
                    provider.node
                ))
            })?
            .clone();
        u.mark_joined(
            NAME,
            &json!({ "provider": provider.node_id, "node": provider.node, "stream_id": id }),
        )?;
        Ok(Joined {
            usage: vec![
                format!(
                    "relaying stream {id} from {} ({}:{}); if it fails, another provider is taken",
                    provider.node, provider.ip, provider.port
                ),
                format!(
                    "watch it here: http://{}:{}/stream/{id}/index.m3u8",
                    u.ctx.ip,
                    self.config.port()
                ),
            ],
            local_service: Some(NAME.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(sys: &System, catalog: Vec<Record>) -> Env {
        Env {
            sys: sys.clone(),
            ctx: crate::services::test_context(),
            catalog,
            agent_exe: "/usr/bin/cloudy-agent".into(),
        }
    }

    #[test]
    fn waits_for_a_source_file_or_a_provider() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        // A peer (no seed at all) with an empty catalog.
        let peer = Streaming::new(&sys);
        match peer.configure(&env(&sys, Vec::new())).unwrap() {
            Configured::Waiting(why) => assert!(why.contains("no provider"), "{why}"),
            c => panic!("{c:?}"),
        }
        // Its own record does not count as a provider.
        let mut own = crate::catalog::tests::record('0', "streaming", 8090);
        own.fields = [
            ("stream_id", "film"),
            ("playlist", "/stream/film/index.m3u8"),
            ("origin", &"0".repeat(32)),
            ("hops", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(!peer.any_provider(&env(&sys, vec![own.clone()])));
        let mut other = own;
        other.node_id = "a".repeat(32);
        assert!(peer.any_provider(&env(&sys, vec![other])));

        sys.write_atomic(
            cloudy_model::seed::DEFAULTS_PATH,
            b"version = 1\n[streaming]\nsource = \"/nonexistent/film.mp4\"\n",
            0o644,
        )
        .unwrap();
        let source = Streaming::new(&sys);
        match source.configure(&env(&sys, Vec::new())).unwrap() {
            Configured::Waiting(why) => assert!(why.contains("no such file"), "{why}"),
            c => panic!("{c:?}"),
        }
    }
}
