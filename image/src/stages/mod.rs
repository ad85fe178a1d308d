//! The build's stages, in the order a build runs them. Each takes its inputs as arguments and
//! writes under a temporary name, renamed on success, so an interrupted build resumes.

pub mod agent;
pub mod bootstrap;
pub mod customise;
pub mod finish;
pub mod iso;
pub mod pxe;
pub mod release;
pub mod sdcard;
pub mod squashfs;
pub mod verify;

#[cfg(test)]
mod consoles {
    use crate::board::{list, Board, Format};
    use std::path::Path;

    /// Issue 18, defect 3: the screen a person looks at must get the kernel's and the agent's
    /// console output too, and the serial port must stay /dev/console (named last) because the
    /// verify stage and the QEMU tests read the ready line there. Checked for every shipped
    /// board, through the renderer its format uses.
    #[test]
    fn every_board_boots_with_the_screen_and_the_serial_port_last() {
        let hw = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("hardware");
        let names = list(&hw);
        assert!(names.len() >= 8, "{names:?}");
        for n in names {
            let (b, _, _) = Board::find(&hw, &n).unwrap();
            let line = match b.format {
                Format::Iso => super::iso::cmdline(&b),
                Format::Pxe => super::pxe::cmdline(&b, "tftp://x/y", None),
                Format::Sdcard => super::sdcard::cmdline(&b, 1, &b.console),
            };
            let consoles: Vec<&str> = line
                .split_whitespace()
                .filter_map(|w| w.strip_prefix("console="))
                .collect();
            assert!(
                consoles.contains(&"tty0"),
                "{n}: no screen console in `{line}`"
            );
            assert_eq!(
                consoles.last(),
                Some(&b.console.as_str()),
                "{n}: the serial console must be named last in `{line}`"
            );
        }
    }
}

#[cfg(test)]
mod seed_example {
    use std::path::Path;

    /// The example with every line uncommented: what a user gets by removing the "# "s.
    fn uncommented() -> String {
        super::iso::SEED_EXAMPLE
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.starts_with('[') || rest.contains(" = ") => rest,
                _ => l,
            })
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Issue 18, defect 8: the template laid beside `cloudy.toml` names every key the model
    /// has, and only those (the seed's structs refuse unknown fields). The key list comes from
    /// model/src/seed/, so a new key without a line here fails this test.
    #[test]
    fn the_seed_example_names_every_key_and_only_real_ones() {
        let text = uncommented();
        let seed: cloudy_model::seed::Seed =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(
            seed.wifi.is_some()
                && seed.streaming.is_some()
                && seed.ssh.is_some()
                && seed.storage.is_some()
        );
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/src/seed");
        for section in [
            "community",
            "dashboard",
            "network",
            "node",
            "services",
            "ssh",
            "storage",
            "streaming",
            "tinc",
            "wifi",
        ] {
            assert!(
                super::iso::SEED_EXAMPLE.contains(&format!("# [{section}]")),
                "[{section}] missing"
            );
            let src = std::fs::read_to_string(model.join(format!("{section}.rs"))).unwrap();
            let mut rename = None;
            for line in src.lines() {
                let l = line.trim();
                if let Some(r) = l.split("rename = \"").nth(1) {
                    rename = r.split('"').next().map(str::to_string);
                    continue;
                }
                let Some(field) = line
                    .strip_prefix("    pub ")
                    .and_then(|r| r.split(':').next())
                    .filter(|f| f.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                else {
                    continue;
                };
                let key = rename.take().unwrap_or_else(|| field.to_string());
                assert!(
                    text.lines().any(|l| l.starts_with(&format!("{key} =")))
                        || text.contains(&format!("[[{section}.{key}]]")),
                    "[{section}] {key} is not in cloudy.toml.example"
                );
            }
        }
    }
}
