//! `[streaming]`: live streaming, a source (`source = ...`) or a peer relaying a stream.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use super::invalid::{invalid, Invalid};
use crate::names::{check_provider, check_stream_id};

/// The port a stream is served on when the seed names none.
pub const DEFAULT_PORT: u16 = 8090;

/// The seed's `[streaming]` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What this node streams: a file path (played in a loop), an http(s)://, rtsp:// or
    /// rtmp:// URL, a V4L2 camera (/dev/videoN) or `testsrc` (a test pattern). Without it the
    /// node relays (a peer).
    pub source: Option<String>,
    /// The stream's id on a source (default: the node's name); on a peer, the stream to
    /// relay (default: whichever is found first).
    pub id: Option<String>,
    /// HTTP port the stream is served on (default 8090).
    pub port: Option<u16>,
    /// Peer: the provider to fetch from (node name or id) while it works.
    pub provider: Option<String>,
}

/// Where a source's stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    File(PathBuf),
    Url(String),
    Device(PathBuf),
    /// `testsrc`: ffmpeg's own test pattern, for trying a node (or an image) without media.
    TestPattern,
}

impl Config {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(s) = &self.source {
            parse_input(s).map_err(|p| {
                invalid(
                    "streaming.source",
                    p,
                    "give an absolute file path, an http(s)://, rtsp:// or rtmp:// URL, /dev/videoN or \"testsrc\"",
                )
            })?;
        }
        if let Some(id) = &self.id {
            check_stream_id(id)
                .map_err(|p| invalid("streaming.id", p, "use 1-64 letters, digits, '-' and '_'"))?;
        }
        if self.port == Some(0) {
            return Err(invalid(
                "streaming.port",
                "0 is not a port".into(),
                "leave it out for 8090",
            ));
        }
        if let Some(p) = &self.provider {
            if self.source.is_some() {
                return Err(invalid(
                    "streaming.provider",
                    "a source node fetches from nobody".into(),
                    "remove streaming.provider, or streaming.source to make this node a peer",
                ));
            }
            check_provider(p).map_err(|e| {
                invalid(
                    "streaming.provider",
                    e,
                    "name the provider's node (its name or 32-digit id)",
                )
            })?;
        }
        Ok(())
    }

    pub fn input(&self) -> Option<Input> {
        self.source.as_deref().and_then(|s| parse_input(s).ok())
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_PORT)
    }
}

/// A source as the seed gives it. It becomes one argument of ffmpeg (never a shell's), and
/// still only these forms pass: nothing that ffmpeg would read as an option or a protocol of
/// its own (`concat:`, `pipe:`, `subfile,`...).
pub fn parse_input(s: &str) -> Result<Input, String> {
    if s.is_empty() || s.len() > 1024 {
        return Err(format!("{} characters (1-1024)", s.len()));
    }
    if s.chars().any(char::is_control) {
        return Err("control characters".into());
    }
    if s == "testsrc" {
        return Ok(Input::TestPattern);
    }
    if let Some(dev) = s.strip_prefix("/dev/video") {
        if !dev.is_empty() && dev.len() <= 3 && dev.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Input::Device(PathBuf::from(s)));
        }
        return Err(format!("{s:?} is not a camera device /dev/videoN"));
    }
    if s.starts_with('/') {
        let p = Path::new(s);
        if p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!("{s:?} has a '..' component"));
        }
        if s.starts_with("/dev/") || s.starts_with("/proc/") || s.starts_with("/sys/") {
            return Err(format!("{s:?} is not a media file"));
        }
        return Ok(Input::File(p.to_path_buf()));
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!("{s:?} is neither an absolute path nor a URL"));
    };
    if !matches!(scheme, "http" | "https" | "rtsp" | "rtmp") {
        return Err(format!("URL scheme {scheme:?} (http, https, rtsp or rtmp)"));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]@_".contains(&b));
    let all_ok = rest
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"\"'`\\<>{}|^".contains(&b));
    if !host_ok || !all_ok {
        return Err(format!("{s:?} is not a plain URL"));
    }
    Ok(Input::Url(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_strict() {
        assert_eq!(
            parse_input("/srv/video/film one.mp4"),
            Ok(Input::File("/srv/video/film one.mp4".into()))
        );
        assert_eq!(
            parse_input("/dev/video0"),
            Ok(Input::Device("/dev/video0".into()))
        );
        assert_eq!(parse_input("testsrc"), Ok(Input::TestPattern));
        assert!(matches!(
            parse_input("rtsp://cam.local:554/stream1"),
            Ok(Input::Url(_))
        ));
        assert!(matches!(
            parse_input("https://example.org/live/index.m3u8?token=abc"),
            Ok(Input::Url(_))
        ));
        for bad in [
            "",
            "film.mp4",
            "-i /etc/passwd",
            "concat:/a.mp4|/b.mp4",
            "pipe:0",
            "file:/etc/shadow",
            "subfile,,start,0,end,0,,:/x",
            "/srv/../etc/shadow",
            "/dev/sda",
            "/dev/video0; rm -rf /",
            "/proc/self/environ",
            "ftp://host/x.mp4",
            "testsrc=size=9999x9999",
            "lavfi:testsrc",
            "http://",
            "http://host/$(reboot)`x`",
            "http://host/a b",
            "/srv/a\nb.mp4",
        ] {
            assert!(parse_input(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn seed_keys_are_checked() {
        let ok = Config {
            source: Some("/srv/film.mp4".into()),
            id: Some("film_1".into()),
            port: Some(8091),
            provider: None,
        };
        ok.validate().unwrap();
        assert_eq!(ok.port(), 8091);
        assert_eq!(Config::default().port(), DEFAULT_PORT);
        let peer = Config {
            provider: Some("n1".into()),
            ..Config::default()
        };
        peer.validate().unwrap();
        for (c, key) in [
            (
                Config {
                    source: Some("concat:/a|/b".into()),
                    ..Config::default()
                },
                "streaming.source",
            ),
            (
                Config {
                    id: Some("../x".into()),
                    ..Config::default()
                },
                "streaming.id",
            ),
            (
                Config {
                    port: Some(0),
                    ..Config::default()
                },
                "streaming.port",
            ),
            (
                Config {
                    provider: Some("Not A Node".into()),
                    ..Config::default()
                },
                "streaming.provider",
            ),
            (
                Config {
                    source: Some("/srv/film.mp4".into()),
                    provider: Some("n1".into()),
                    ..Config::default()
                },
                "streaming.provider",
            ),
        ] {
            assert_eq!(c.validate().unwrap_err().key, key, "{c:?}");
        }
    }
}
