//! Issue 18: the seed's `[wifi]` needs wpasupplicant on every board that can have Wi-Fi, and the
//! Raspberry Pis' radios need Debian's firmware-brcm80211, from non-free-firmware. At 2293e0e
//! no board carried either, and rpi3 claimed the A+ and Zero 2 W (no Ethernet: unreachable).
//! A real radio cannot be tested here; this checks what the images are built from.

use std::path::Path;

use cloudy_image::board::{self, Board, Format};

fn hardware() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("hardware")
}

#[test]
fn boards_with_wifi_carry_wpasupplicant_and_their_firmware() {
    let has = |b: &Board, p: &str| b.packages.iter().any(|x| x == p);
    let mut seen = Vec::new();
    for name in board::list(&hardware()) {
        let (b, _, _) = Board::find(&hardware(), &name).unwrap();
        match name.as_str() {
            // Pi 3 B/B+/A+, Pi 4 and the Zero W (rpi1): Broadcom radios, firmware from
            // non-free-firmware.
            "rpi1" | "rpi3" | "rpi4" => {
                assert!(has(&b, "wpasupplicant"), "{name}");
                assert!(has(&b, "firmware-brcm80211"), "{name}");
                assert!(
                    b.components.iter().any(|c| c == "non-free-firmware"),
                    "{name}: firmware-brcm80211 is in non-free-firmware"
                );
            }
            // The Pi 2 has no radio; a PXE node boots over a cable.
            "rpi2" => assert!(!has(&b, "wpasupplicant"), "{name}"),
            n if n.starts_with("pxe-") => assert!(!has(&b, "wpasupplicant"), "{name}"),
            // PCs: the supplicant only (see the boards' comment for firmware-iwlwifi).
            n if n.starts_with("pc-") => {
                assert_eq!(b.format, Format::Iso, "{name}");
                assert!(has(&b, "wpasupplicant"), "{name}");
                assert!(!has(&b, "firmware-iwlwifi"), "{name}");
            }
            _ => panic!("{name}: a new board: say here whether it has Wi-Fi"),
        }
        // A board that claims a Pi without Ethernet must be able to join by Wi-Fi.
        if b.description.contains("A+") || b.description.contains("Zero") {
            assert!(has(&b, "firmware-brcm80211"), "{name}");
        }
        seen.push(name);
    }
    assert!(seen.len() >= 8, "{seen:?}");
}

/// rpi3 claimed "A+; also Zero 2 W" while its firmware partition held only the 3 B and B+
/// device trees, and bookworm's firmware-brcm80211 has no 43436 (the Zero 2 W's radio).
#[test]
fn rpi3_claims_only_what_it_carries() {
    let (b, _, text) = Board::find(&hardware(), "rpi3").unwrap();
    let dtbs = b.sdcard.unwrap().dtbs;
    assert!(
        dtbs.contains(&"bcm2837-rpi-3-a-plus.dtb".to_string()),
        "{dtbs:?}"
    );
    let claims: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .chain(std::iter::once(b.description.as_str()))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(claims.contains("Not the Zero 2 W"), "{claims}");
    assert!(!b.description.contains("Zero"), "{}", b.description);
}
