//! What the user sees while a build runs: one spinner per stage with the tool's latest line,
//! a line per finished stage, and the closing summary table.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A running stage. Cheap to clone: the threads draining a tool's output update it too.
#[derive(Clone)]
pub struct Step {
    bar: ProgressBar,
}

impl Step {
    pub fn hidden() -> Step {
        Step {
            bar: ProgressBar::hidden(),
        }
    }

    pub fn message(&self, line: &str) {
        let line: String = line.chars().filter(|c| !c.is_control()).take(100).collect();
        if !line.trim().is_empty() {
            self.bar.set_message(line);
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
    pub note: String,
}

/// Reports stages; `stage` takes `&self`, so two independent stages can run at once from
/// scoped threads (each gets its own spinner line).
pub struct Reporter {
    interactive: bool,
    bars: MultiProgress,
    times: Mutex<Vec<StageTime>>,
}

impl Default for Reporter {
    fn default() -> Self {
        Reporter::new()
    }
}

impl Reporter {
    pub fn new() -> Reporter {
        let interactive = std::io::stderr().is_terminal();
        let target = if interactive {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Reporter {
            interactive,
            bars: MultiProgress::with_draw_target(target),
            times: Mutex::new(Vec::new()),
        }
    }

    /// The stages finished so far, in the order they finished.
    pub fn times(&self) -> Vec<StageTime> {
        self.times.lock().expect("not poisoned").clone()
    }

    fn say(&self, line: &str) {
        if self.interactive {
            // Above the spinners, which would otherwise draw over it.
            let _ = self.bars.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    /// Runs one stage under a spinner and records its time and a short note (e.g. "cached").
    pub fn stage<T, E>(
        &self,
        name: &str,
        f: impl FnOnce(&Step) -> Result<(T, String), E>,
    ) -> Result<T, E> {
        let bar = if self.interactive {
            let b = self.bars.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<10} {elapsed:>4} {wide_msg}")
                    .expect("static template"),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        } else {
            eprintln!("==> {name}");
            ProgressBar::hidden()
        };
        bar.set_prefix(name.to_string());
        let step = Step { bar: bar.clone() };
        let started = Instant::now();
        let result = f(&step);
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        self.bars.remove(&bar);
        let (line, note, out) = match result {
            Ok((value, note)) => (
                format!("  ok  {name:<10} {:>7}  {note}", fmt_secs(seconds)),
                note,
                Ok(value),
            ),
            Err(e) => (
                format!("  FAIL {name:<9} {:>7}", fmt_secs(seconds)),
                "failed".to_string(),
                Err(e),
            ),
        };
        self.say(&line);
        self.times.lock().expect("not poisoned").push(StageTime {
            stage: name.into(),
            seconds,
            note,
        });
        out
    }
}

pub fn fmt_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let whole = s.round() as u64;
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

pub fn fmt_size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes as f64 >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// A plain text table: columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let fmt_row = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![fmt_row(header.iter().map(|s| s.to_string()).collect())];
    out.push(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    out.extend(rows.iter().map(|r| fmt_row(r.clone())));
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let t = table(&["a", "bb"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "a    bb\n---  --\nxxx  y\n");
        assert_eq!(fmt_secs(119.7), "2m00s");
        assert_eq!(fmt_secs(9.94), "9.9s");
    }
}
