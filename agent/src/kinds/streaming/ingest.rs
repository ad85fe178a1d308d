//! The source side: ffmpeg cuts the input into HLS segments, supervised and restarted with
//! backoff, and a watcher takes ffmpeg's playlist into the window this node serves.
//!
//! H.264 input (with AAC/MP3 audio or none) is copied as it is; anything else, a camera, or a
//! copy that failed before its first segment is encoded with libx264 `ultrafast`, a key frame
//! every second so segments are 1 s. The first ffmpeg numbers its segments from the Unix time
//! (so a restarted stream process never reuses a number a peer still holds); a restarted ffmpeg
//! continues right after our newest segment, so a file a peer may still fetch is never
//! overwritten with other bytes under the same name.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::playlist::{segment_seq, Playlist};
use super::stream::{Stream, WINDOW};
use cloudy_model::seed::streaming::Input;

/// ffmpeg's own playlist in the segment directory (we serve a rendered copy of ours).
pub const FFMPEG_PLAYLIST: &str = "ffmpeg.m3u8";
const SEGMENT_S: &str = "1";
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An ffmpeg that ran this long was fine; its next failure starts the backoff afresh.
const STABLE: Duration = Duration::from_secs(30);
const WATCH: Duration = Duration::from_millis(200);

pub struct Ingest {
    pub ffmpeg: PathBuf,
    pub input: Input,
    pub stream: Arc<Stream>,
    /// Run ffmpeg as this (uid, gid) instead of the agent's user.
    pub user: Option<(u32, u32)>,
}

/// Copy or encode: what the probe found in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Copy,
    Encode,
}

/// The argument list for ffmpeg; the input is one argument, never seen by a shell.
pub fn args(input: &Input, mode: Mode, dir: &Path, start: u64) -> Vec<String> {
    let mut a: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "error",
        "-y",
    ]
    .map(String::from)
    .to_vec();
    match input {
        Input::File(p) => {
            // Loop the file forever at its own pace, as a live source would play.
            a.extend(
                ["-stream_loop", "-1", "-re", "-protocol_whitelist", "file"].map(String::from),
            );
            a.push("-i".into());
            // `file:` so nothing in the path is taken for another protocol.
            a.push(format!("file:{}", p.display()));
        }
        Input::Url(u) => {
            a.extend(
                [
                    "-protocol_whitelist",
                    "http,https,tls,tcp,udp,rtp,rtsp,rtmp,crypto",
                    "-rw_timeout",
                    "10000000",
                    "-i",
                ]
                .map(String::from),
            );
            a.push(u.clone());
        }
        Input::Device(d) => {
            a.extend(["-f", "v4l2", "-i"].map(String::from));
            a.push(d.display().to_string());
        }
        Input::TestPattern => {
            a.extend(["-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"].map(String::from))
        }
    }
    a.extend(["-map", "0:v:0", "-map", "0:a:0?"].map(String::from));
    match mode {
        Mode::Copy => a.extend(["-c", "copy"].map(String::from)),
        Mode::Encode => a.extend(
            [
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
                "-pix_fmt",
                "yuv420p",
                "-force_key_frames",
                "expr:gte(t,n_forced*1)",
                "-c:a",
                "aac",
                "-b:a",
                "96k",
            ]
            .map(String::from),
        ),
    }
    a.extend(
        [
            "-f",
            "hls",
            "-hls_time",
            SEGMENT_S,
            "-hls_list_size",
            &WINDOW.to_string(),
            "-hls_delete_threshold",
            "2",
            "-hls_flags",
            "delete_segments+temp_file",
            "-hls_start_number_source",
            "generic",
            "-start_number",
            &start.to_string(),
            "-hls_segment_filename",
        ]
        .map(String::from),
    );
    a.push(dir.join("seg%d.ts").display().to_string());
    a.push(dir.join(FFMPEG_PLAYLIST).display().to_string());
    a
}

/// Whether the input can be copied into MPEG-TS segments as it is: H.264 video and AAC/MP3
/// audio (or none). Asks ffprobe (beside ffmpeg); anything unclear means encode.
pub async fn probe(ffmpeg: &Path, input: &Input) -> Mode {
    let target = match input {
        Input::Device(_) | Input::TestPattern => return Mode::Encode,
        Input::File(p) => format!("file:{}", p.display()),
        Input::Url(u) => u.clone(),
    };
    let ffprobe = ffmpeg.with_file_name("ffprobe");
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new(&ffprobe)
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_type,codec_name",
                "-of",
                "json",
            ])
            .arg(&target)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await;
    let Ok(Ok(out)) = out else {
        return Mode::Encode;
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let first = |t: &str| {
        streams
            .iter()
            .find(|s| s["codec_type"] == t)
            .and_then(|s| s["codec_name"].as_str().map(str::to_string))
    };
    let video_ok = first("video").as_deref() == Some("h264");
    let audio_ok = first("audio").is_none_or(|a| a == "aac" || a == "mp3");
    if video_ok && audio_ok {
        Mode::Copy
    } else {
        Mode::Encode
    }
}

impl Ingest {
    fn command(&self, mode: Mode, start: u64) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.ffmpeg);
        c.args(args(&self.input, mode, &self.stream.seg_dir, start))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        let parent = nix::unistd::getpid();
        let user = self.user;
        // SAFETY: only async-signal-safe calls (prctl, getppid, setgroups, setgid, setuid, _exit),
        // and nothing allocates. nix does not wrap _exit(2): libc's, through nix's re-export.
        unsafe {
            c.pre_exec(move || {
                use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
                // ffmpeg goes with the agent, so a restarted agent starts clean.
                let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
                if nix::unistd::getppid() != parent {
                    nix::libc::_exit(1);
                }
                if let Some((uid, gid)) = user {
                    setgroups(&[])?;
                    setgid(Gid::from_raw(gid))?;
                    setuid(Uid::from_raw(uid))?;
                }
                Ok(())
            });
        }
        c
    }

    /// Runs ffmpeg forever, restarting it; the task is aborted to stop (ffmpeg is killed on
    /// drop).
    pub async fn run(self) {
        let dir = self.stream.seg_dir.clone();
        if let Err(e) = prepare_dir(&dir, self.user) {
            self.error(format!("{}: {e}", dir.display()));
        }
        let mut mode = probe(&self.ffmpeg, &self.input).await;
        tracing::info!(?mode, input = ?self.input, "streaming: source");
        let mut backoff = BACKOFF_MIN;
        let mut restarted = false;
        loop {
            // A playlist of the previous ffmpeg must not be read as the new one's.
            let _ = std::fs::remove_file(dir.join(FFMPEG_PLAYLIST));
            let started = Instant::now();
            let epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let start = match self.stream.state.lock().unwrap().playlist.last_seq() {
                Some(last) => last + 1,
                None => epoch,
            };
            let mut child = match self.command(mode, start).spawn() {
                Ok(c) => c,
                Err(e) => {
                    self.error(format!("starting {}: {e}", self.ffmpeg.display()));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let c = &self.stream.counters;
            c.ffmpeg_pid
                .store(child.id().unwrap_or(0), Ordering::SeqCst);
            let n = c.ffmpeg_starts.fetch_add(1, Ordering::SeqCst) + 1;
            tracing::info!(
                pid = child.id(),
                starts = n,
                ?mode,
                "streaming: ffmpeg started"
            );
            let mut produced = false;
            let mut tick = tokio::time::interval(WATCH);
            let status = loop {
                tokio::select! {
                    st = child.wait() => break st,
                    _ = tick.tick() => {
                        if self.take_playlist(restarted) {
                            produced = true;
                            restarted = false;
                        }
                    }
                }
            };
            c.ffmpeg_pid.store(0, Ordering::SeqCst);
            self.take_playlist(restarted);
            self.error(format!("ffmpeg exited: {status:?}"));
            restarted = true;
            if !produced && mode == Mode::Copy {
                tracing::warn!("streaming: copying the input made no segment; encoding it instead");
                mode = Mode::Encode;
                backoff = BACKOFF_MIN;
            }
            if started.elapsed() >= STABLE {
                backoff = BACKOFF_MIN;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn error(&self, e: String) {
        tracing::warn!("streaming: {e}");
        self.stream.state.lock().unwrap().last_error = Some(e);
    }

    /// Adds segments of ffmpeg's playlist newer than ours to the window; true if any.
    fn take_playlist(&self, restarted: bool) -> bool {
        let dir = &self.stream.seg_dir;
        let Ok(bytes) = std::fs::read(dir.join(FFMPEG_PLAYLIST)) else {
            return false;
        };
        let pl = match Playlist::parse(&bytes) {
            Ok(pl) => pl,
            Err(e) => {
                self.error(format!("ffmpeg's playlist: {e}"));
                return false;
            }
        };
        let mut st = self.stream.state.lock().unwrap();
        let mut added = false;
        for mut g in pl.segments {
            if st.playlist.last_seq().is_some_and(|l| g.seq <= l) {
                continue;
            }
            // A new ffmpeg (or a jump) starts a new timeline: players must be told.
            if let Some(l) = st.playlist.last_seq() {
                if g.seq != l + 1 || (restarted && !added) {
                    g.discontinuity = true;
                }
            }
            st.playlist.segments.push(g);
            added = true;
        }
        if added {
            let excess = st.playlist.segments.len().saturating_sub(WINDOW);
            st.playlist.segments.drain(..excess);
            st.playlist.target_s = pl.target_s.max(1);
            st.advanced = Some(Instant::now());
            if st.first_segment_after.is_none() {
                st.first_segment_after = Some(self.stream.started.elapsed());
            }
            let first = st.playlist.segments[0].seq;
            st.last_error = None;
            drop_older(dir, first);
        }
        added
    }
}

/// Removes our segment files numbered below `first` (a previous ffmpeg's, which the new one
/// does not know to delete).
pub fn drop_older(dir: &Path, first: u64) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if let Some(seq) = name.to_str().and_then(segment_seq) {
            if seq < first {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// An empty directory for the segments, owned by the user ffmpeg runs as.
pub fn prepare_dir(dir: &Path, user: Option<(u32, u32)>) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_is_one_argument() {
        let nasty = "/srv/a b;$(reboot)'.mp4";
        let a = args(
            &Input::File(nasty.into()),
            Mode::Copy,
            Path::new("/run/s"),
            7,
        );
        assert!(a.contains(&format!("file:{nasty}")));
        assert!(a.windows(2).any(|w| w == ["-c", "copy"]));
        assert!(a.windows(2).any(|w| w == ["-start_number", "7"]));
        assert_eq!(a.last().unwrap(), "/run/s/ffmpeg.m3u8");
        let cam = args(
            &Input::Device("/dev/video0".into()),
            Mode::Encode,
            Path::new("/d"),
            7,
        );
        assert!(cam.windows(3).any(|w| w == ["-f", "v4l2", "-i"]));
        assert!(cam.contains(&"libx264".to_string()));
        assert!(
            !cam.contains(&"-re".to_string()),
            "a camera is live already"
        );
    }
}
