//! HLS media playlists, as our ffmpeg writes them and as providers serve them.
//!
//! A playlist comes from another node, so it is parsed strictly: bounded in size and segment
//! count, only the handful of tags ffmpeg's HLS muxer writes, and every URI line must be one of
//! our own segment names (`seg<N>.ts`, numbered by the media sequence). That leaves no room for
//! absolute URLs, other hosts, paths or traversal: a peer only ever asks its provider for
//! `/stream/<id>/seg<N>.ts`, and writes only `seg<N>.ts` into its own cache.
//!
//! What a peer serves is rendered from the parsed form, never the bytes it received.

use std::fmt::Write as _;

/// Far above a 64-segment window (~40 bytes a segment).
pub const MAX_PLAYLIST: usize = 16 * 1024;
pub const MAX_SEGMENTS: usize = 64;
/// Longest segment (and target duration) accepted, seconds.
pub const MAX_DURATION_S: u32 = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Media sequence number; also the segment's name (`seg<seq>.ts`).
    pub seq: u64,
    pub duration_ms: u32,
    /// The stream restarts here (a new ffmpeg, a gap after switching providers).
    pub discontinuity: bool,
}

impl Segment {
    pub fn name(&self) -> String {
        segment_name(self.seq)
    }
}

pub fn segment_name(seq: u64) -> String {
    format!("seg{seq}.ts")
}

/// The sequence number of one of our segment names; None for anything else.
pub fn segment_seq(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg")?.strip_suffix(".ts")?;
    if digits.is_empty()
        || digits.len() > 19
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Playlist {
    pub target_s: u32,
    pub segments: Vec<Segment>,
    /// `#EXT-X-ENDLIST`: ffmpeg stopped (the provider's source is restarting or gone).
    pub ended: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlaylistError {
    #[error("playlist of {0} bytes (at most {MAX_PLAYLIST})")]
    TooLong(usize),
    #[error("playlist is not UTF-8")]
    NotUtf8,
    #[error("playlist line {line}: {problem}")]
    Line { line: usize, problem: &'static str },
    #[error("playlist has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
}

fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
    (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `1.000000` -> 1000 ms; digits and at most one dot, nothing else.
fn duration_ms(s: &str) -> Option<u32> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let int: u32 = number(int)?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let ms = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u32, |a, b| a * 10 + u32::from(b - b'0'));
    let total = int.checked_mul(1000)?.checked_add(ms)?;
    (total > 0 && total <= MAX_DURATION_S * 1000).then_some(total)
}

impl Playlist {
    pub fn parse(bytes: &[u8]) -> Result<Playlist, PlaylistError> {
        if bytes.len() > MAX_PLAYLIST {
            return Err(PlaylistError::TooLong(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| PlaylistError::NotUtf8)?;
        let mut pl = Playlist::default();
        let mut media_seq: Option<u64> = None;
        let mut header = false;
        let mut pending: Option<(u32, bool)> = None;
        let mut discontinuity = false;
        for (i, raw) in text.split('\n').enumerate() {
            let line = i + 1;
            let err = |problem| PlaylistError::Line { line, problem };
            let l = raw.strip_suffix('\r').unwrap_or(raw);
            if l.is_empty() {
                continue;
            }
            if l.chars().any(char::is_control) {
                return Err(err("control characters"));
            }
            if !header {
                if l != "#EXTM3U" {
                    return Err(err("does not start with #EXTM3U"));
                }
                header = true;
                continue;
            }
            if pl.ended {
                return Err(err("text after #EXT-X-ENDLIST"));
            }
            if pending.is_some() && l.starts_with('#') {
                return Err(err("#EXTINF not followed by its segment"));
            }
            if let Some(tag) = l.strip_prefix('#') {
                let (name, value) = tag.split_once(':').unwrap_or((tag, ""));
                match (name, value) {
                    ("EXT-X-VERSION", v) => {
                        number::<u8>(v)
                            .filter(|v| (1..=7).contains(v))
                            .ok_or(err("bad version"))?;
                    }
                    ("EXT-X-TARGETDURATION", v) => {
                        pl.target_s = number::<u32>(v)
                            .filter(|v| (1..=MAX_DURATION_S).contains(v))
                            .ok_or(err("bad target duration"))?;
                    }
                    ("EXT-X-MEDIA-SEQUENCE", v) => {
                        if media_seq.is_some() || !pl.segments.is_empty() {
                            return Err(err("media sequence given twice or after a segment"));
                        }
                        media_seq = Some(number(v).ok_or(err("bad media sequence"))?);
                    }
                    ("EXTINF", v) => {
                        // `<duration>,<title>`: ffmpeg writes no title; refuse one.
                        let d = v
                            .strip_suffix(',')
                            .and_then(duration_ms)
                            .ok_or(err("bad #EXTINF"))?;
                        pending = Some((d, std::mem::take(&mut discontinuity)));
                    }
                    ("EXT-X-DISCONTINUITY", "") => discontinuity = true,
                    ("EXT-X-ENDLIST", "") => pl.ended = true,
                    _ => return Err(err("tag not accepted")),
                }
                continue;
            }
            // A URI line: only the next one of our own segment names.
            let Some((duration_ms, discontinuity)) = pending.take() else {
                return Err(err("segment without #EXTINF"));
            };
            let seq = segment_seq(l).ok_or(err("not one of our segment names"))?;
            let want = media_seq
                .ok_or(err("segment before #EXT-X-MEDIA-SEQUENCE"))?
                .checked_add(pl.segments.len() as u64);
            if want != Some(seq) {
                return Err(err("segment number does not follow the media sequence"));
            }
            if pl.segments.len() == MAX_SEGMENTS {
                return Err(PlaylistError::TooManySegments);
            }
            pl.segments.push(Segment {
                seq,
                duration_ms,
                discontinuity,
            });
        }
        if !header {
            return Err(PlaylistError::Line {
                line: 1,
                problem: "does not start with #EXTM3U",
            });
        }
        if pending.is_some() {
            return Err(PlaylistError::Line {
                line: text.lines().count(),
                problem: "#EXTINF not followed by its segment",
            });
        }
        if pl.target_s == 0 && !pl.segments.is_empty() {
            return Err(PlaylistError::Line {
                line: 1,
                problem: "no #EXT-X-TARGETDURATION",
            });
        }
        Ok(pl)
    }

    /// A live playlist (never ended: players keep polling) of these segments.
    pub fn render(&self) -> String {
        let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:3\n");
        let target = self
            .segments
            .iter()
            // The spec compares each duration rounded to the nearest second.
            .map(|g| (g.duration_ms + 500) / 1000)
            .max()
            .unwrap_or(0)
            .max(self.target_s)
            .max(1);
        let _ = writeln!(s, "#EXT-X-TARGETDURATION:{target}");
        let first = self.segments.first().map_or(0, |g| g.seq);
        let _ = writeln!(s, "#EXT-X-MEDIA-SEQUENCE:{first}");
        for g in &self.segments {
            if g.discontinuity {
                s.push_str("#EXT-X-DISCONTINUITY\n");
            }
            let _ = writeln!(
                s,
                "#EXTINF:{}.{:03},\n{}",
                g.duration_ms / 1000,
                g.duration_ms % 1000,
                g.name()
            );
        }
        s
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.segments.last().map(|g| g.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FFMPEG: &str = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n\
        #EXT-X-MEDIA-SEQUENCE:1795621727\n#EXTINF:1.000000,\nseg1795621727.ts\n\
        #EXTINF:0.960000,\nseg1795621728.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:1.040000,\n\
        seg1795621729.ts\n";

    #[test]
    fn ffmpeg_playlist_parses_and_renders_back() {
        let pl = Playlist::parse(FFMPEG.as_bytes()).unwrap();
        assert_eq!(pl.segments.len(), 3);
        assert_eq!(pl.segments[1].duration_ms, 960);
        assert!(pl.segments[2].discontinuity);
        assert_eq!(pl.last_seq(), Some(1795621729));
        assert!(!pl.ended);
        let again = Playlist::parse(pl.render().as_bytes()).unwrap();
        assert_eq!(again, pl);
        // What ffmpeg writes when it stops, with CRLF line ends.
        let ended = format!("{FFMPEG}#EXT-X-ENDLIST\n").replace('\n', "\r\n");
        assert!(Playlist::parse(ended.as_bytes()).unwrap().ended);
        let empty = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:0\n";
        assert!(Playlist::parse(empty.as_bytes())
            .unwrap()
            .segments
            .is_empty());
    }

    #[test]
    fn segment_names_are_only_ours() {
        assert_eq!(segment_seq("seg0.ts"), Some(0));
        assert_eq!(segment_seq("seg1795621727.ts"), Some(1795621727));
        for bad in [
            "seg.ts",
            "seg01.ts",
            "seg-1.ts",
            "seg1.ts/",
            "../seg1.ts",
            "seg1.TS",
            "seg1.ts.tmp",
            "seg99999999999999999999.ts",
            "index.m3u8",
            "seg1 .ts",
        ] {
            assert_eq!(segment_seq(bad), None, "{bad}");
        }
    }

    #[test]
    fn hostile_playlists_are_refused() {
        let head = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:5\n#EXTINF:1.0,\n";
        let cases: Vec<(String, &str)> = vec![
            (format!("{head}http://evil.example/seg5.ts\n"), "absolute URL"),
            (format!("{head}/etc/passwd\n"), "absolute path"),
            (format!("{head}../../var/lib/cloudy/seg5.ts\n"), "traversal"),
            (format!("{head}sub/seg5.ts\n"), "a directory"),
            (format!("{head}seg5.ts?x=1\n"), "a query"),
            (format!("{head}seg6.ts\n"), "out of sequence"),
            (format!("{head}seg5.ts\n#EXTINF:1.0,\nseg5.ts\n"), "a repeat"),
            (format!("{head}seg5.ts\nseg6.ts\n"), "no #EXTINF"),
            (format!("{head}seg5.ts\n#EXT-X-KEY:METHOD=AES-128,URI=\"file:///etc/shadow\"\n"), "another tag"),
            (format!("{head}seg5.ts\n#EXT-X-MAP:URI=\"../x\"\n"), "an init map"),
            (format!("{head}seg5.ts\n# a comment\n"), "a comment"),
            (format!("{head}seg5\u{1b}.ts\n"), "control characters"),
            ("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nseg5.ts\n".into(), "no media sequence"),
            ("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:5\n#EXTINF:1.0,\nseg5.ts\n".into(), "no target"),
            ("#EXT-X-MEDIA-SEQUENCE:5\n#EXTM3U\n".into(), "no header"),
            ("".into(), "empty"),
            (head.to_string(), "a dangling #EXTINF"),
            ("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:5\n#EXTINF:99.0,\nseg5.ts\n".into(), "a 99 s segment"),
            ("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:5\n#EXTINF:-1,\nseg5.ts\n".into(), "a negative duration"),
            ("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:5\n#EXTINF:1.0,title\nseg5.ts\n".into(), "a title"),
            ("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:18446744073709551615\n#EXTINF:1.0,\nseg18446744073709551615.ts\n".into(), "a too long number"),
            (format!("{head}seg5.ts\n#EXT-X-ENDLIST\n#EXTINF:1.0,\nseg6.ts\n"), "after the end"),
            ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nhttp://x/y.m3u8\n".into(), "a master playlist"),
        ];
        for (text, why) in &cases {
            assert!(
                Playlist::parse(text.as_bytes()).is_err(),
                "accepted a playlist with {why}: {text:?}"
            );
        }
        let mut big = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n".to_string();
        for i in 0..=MAX_SEGMENTS {
            big += &format!("#EXTINF:1.0,\nseg{i}.ts\n");
        }
        assert_eq!(
            Playlist::parse(big.as_bytes()),
            Err(PlaylistError::TooManySegments)
        );
        let huge = vec![b'#'; MAX_PLAYLIST + 1];
        assert!(matches!(
            Playlist::parse(&huge),
            Err(PlaylistError::TooLong(_))
        ));
        assert_eq!(
            Playlist::parse(b"#EXTM3U\n\xff\n"),
            Err(PlaylistError::NotUtf8)
        );
    }
}
