//! The build's stages, in the order a build runs them. Each takes its inputs as arguments and
//! writes under a temporary name, renamed on success, so an interrupted build resumes.

pub mod agent;
pub mod bootstrap;
pub mod customise;
pub mod finish;
pub mod iso;
pub mod pxe;
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
