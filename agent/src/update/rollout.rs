//! When a node installs and reboots: a random point in the community's window (chosen once per
//! version and kept, so a restart does not roll again and move the node to the front), then the
//! reboot at the next quiet hour; and what a boot after an install means.

use cloudy_model::update::Version;

use super::state::{Installed, Rollout, UpdateState};

const DAY: u64 = 86_400;

/// The install time for `version` first offered at `now`: `now` plus a uniform random part of
/// `window_days`. `random` is 64 random bits (the caller's getrandom), so tests can fix it.
pub fn pick(version: &str, now: u64, window_days: u32, random: u64) -> Rollout {
    let window = u64::from(window_days) * DAY;
    Rollout {
        version: version.into(),
        at: now + if window == 0 { 0 } else { random % window },
    }
}

/// The point for `version`: the one kept when it is for the same version, else a new pick.
pub fn keep_or_pick(
    kept: Option<&Rollout>,
    version: &str,
    now: u64,
    window_days: u32,
    random: u64,
) -> Rollout {
    match kept {
        Some(r) if r.version == version => r.clone(),
        _ => pick(version, now, window_days, random),
    }
}

/// The next time at or after `now` (unix s) when the local clock shows `hour`:00, given the
/// local offset from UTC in seconds.
pub fn next_quiet(now: u64, hour: u8, utc_offset_s: i64) -> u64 {
    let local = now as i64 + utc_offset_s;
    let day_start = local - local.rem_euclid(DAY as i64);
    let mut t = day_start + i64::from(hour) * 3600;
    if t < local {
        t += DAY as i64;
    }
    (t - utc_offset_s) as u64
}

/// Whether the node may reboot into its install now: at the quiet hour (within the hour), and
/// nothing that a reboot would break is running.
pub fn may_reboot(now: u64, hour: u8, utc_offset_s: i64, busy: Option<&str>) -> Result<(), String> {
    if let Some(b) = busy {
        return Err(format!("waiting: {b}"));
    }
    let q = next_quiet(now.saturating_sub(3599), hour, utc_offset_s);
    if now >= q && now < q + 3600 {
        Ok(())
    } else {
        Err(format!(
            "waiting for the quiet hour ({hour:02}:00 local, in {} min)",
            (next_quiet(now, hour, utc_offset_s) - now) / 60
        ))
    }
}

/// What a boot finds after an install: the new version runs (done), or the old one does (the
/// bootloader fell back: the new system did not come up or was not marked good in time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterBoot {
    /// No install pending.
    Nothing,
    /// The install is not booted yet (the reboot is still to come).
    Waiting,
    Updated {
        to: String,
    },
    FellBack {
        wanted: String,
        running: String,
    },
}

pub fn after_boot(running: &Version, installed: Option<&Installed>, boot_id: &str) -> AfterBoot {
    let Some(i) = installed else {
        return AfterBoot::Nothing;
    };
    let Ok(wanted) = i.version.parse::<Version>() else {
        return AfterBoot::Nothing;
    };
    if *running >= wanted {
        return AfterBoot::Updated {
            to: running.to_string(),
        };
    }
    // Still the old version: only a fallback once the node did boot again after the install.
    if i.boot_id == boot_id {
        return AfterBoot::Waiting;
    }
    AfterBoot::FellBack {
        wanted: i.version.clone(),
        running: running.to_string(),
    }
}

/// The message for a fallback, as status and the dashboard show it.
pub fn fallback_message(wanted: &str, running: &str) -> String {
    format!("the update to {wanted} did not come up; back on {running}")
}

/// What a boot after an install does to the update state (`after_boot`): an install that runs
/// is done; one that fell back is reported until a newer release runs, never installed again,
/// and no longer held or due. The agent saves the result (and removes the held bundle's
/// files); `offline_report` only shows it.
pub fn settle_boot(st: &mut UpdateState, running: &Version, boot_id: &str) -> AfterBoot {
    let seen = after_boot(running, st.installed.as_ref(), boot_id);
    match &seen {
        AfterBoot::Nothing | AfterBoot::Waiting => {}
        AfterBoot::Updated { .. } => {
            st.installed = None;
            st.fallback = None;
            st.rollout = None;
        }
        AfterBoot::FellBack { wanted, running } => {
            st.fallback = Some(fallback_message(wanted, running));
            st.failed.push(wanted.clone());
            if st.held.as_deref() == Some(wanted.as_str()) {
                st.held = None;
            }
            st.installed = None;
            st.rollout = None;
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_point_is_in_the_window_and_a_restart_keeps_it() {
        let now = 1_800_000_000;
        for r in [0, 1, 12345, u64::MAX] {
            let p = pick("1.1", now, 3, r);
            assert!(p.at >= now && p.at < now + 3 * DAY, "{p:?}");
        }
        // Different nodes (random bits) spread over the window.
        let ats: Vec<u64> = (0..100u64)
            .map(|i| pick("1.1", now, 3, i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).at)
            .collect();
        assert!(ats.iter().any(|a| *a < now + DAY) && ats.iter().any(|a| *a > now + 2 * DAY));
        assert_eq!(pick("1.1", now, 0, 99).at, now, "window 0: at once");
        // Restart: the kept point stands, whatever the new roll; a new version rolls again.
        let kept = pick("1.1", now, 3, 7);
        assert_eq!(
            keep_or_pick(Some(&kept), "1.1", now + 500, 3, 999_999),
            kept
        );
        let next = keep_or_pick(Some(&kept), "1.2", now + 500, 3, 999_999);
        assert_eq!(
            (next.version.as_str(), next.at),
            ("1.2", now + 500 + 999_999 % (3 * DAY))
        );
    }

    #[test]
    fn the_quiet_hour_is_local_and_next() {
        // 2027-01-15 10:30 UTC.
        let now = 1_800_008_000 - (1_800_008_000 % DAY) + 10 * 3600 + 1800;
        let q = next_quiet(now, 4, 0);
        assert_eq!(q, now - (now % DAY) + DAY + 4 * 3600, "tomorrow 04:00");
        // UTC+2: 04:00 local is 02:00 UTC.
        assert_eq!(next_quiet(now, 4, 7200), q - 7200);
        // At 04:20 local: inside the quiet hour, may reboot; not while a join runs.
        let at = q + 1200;
        assert!(may_reboot(at, 4, 0, None).is_ok());
        assert!(may_reboot(at, 4, 0, Some("a join is running"))
            .unwrap_err()
            .contains("join"));
        let e = may_reboot(now, 4, 0, None).unwrap_err();
        assert!(e.contains("quiet hour") && e.contains("in 1050 min"), "{e}");
    }

    #[test]
    fn a_boot_on_the_old_version_after_an_install_is_a_fallback() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        let inst = Installed {
            version: "1.1".into(),
            from: "1.0".into(),
            at: 1,
            boot_id: "boot-1".into(),
            rebooted: None,
        };
        assert_eq!(after_boot(&v("1.0"), None, "boot-1"), AfterBoot::Nothing);
        // Same boot: the reboot is still to come.
        assert_eq!(
            after_boot(&v("1.0"), Some(&inst), "boot-1"),
            AfterBoot::Waiting
        );
        assert_eq!(
            after_boot(&v("1.1"), Some(&inst), "boot-2"),
            AfterBoot::Updated { to: "1.1".into() }
        );
        // Booted again (asked for or not), and the old version runs: RAUC's bootloader went
        // back to the old slot.
        assert_eq!(
            after_boot(&v("1.0"), Some(&inst), "boot-2"),
            AfterBoot::FellBack {
                wanted: "1.1".into(),
                running: "1.0".into()
            }
        );
        assert_eq!(
            fallback_message("1.1", "1.0"),
            "the update to 1.1 did not come up; back on 1.0"
        );
    }
}
