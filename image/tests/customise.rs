//! `cloudy-image customise` against files that are not Cloudy images, and its `-o`, `--show`
//! and `--remove-seed`. The images are small stand-ins made here with the same tools a build
//! uses (xorriso, sfdisk, mkfs.vfat, mke2fs), carrying the markers a build lays down.
//!
//! At 2293e0e customise never looked at what it was given: on a missing path it printed
//! `wrote the seed ... into missing.iso`, exited 0 and created a 448 KiB ISO holding only
//! /cloudy; on random data or another distribution's ISO it replaced the file the same way.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cloudy_image::cache::sha256_file;

const SEED: &str = "version = 1\n# my first node\n[node]\nname = \"pi-one\"\n[community]\nname = \"home\"\nkey = \"correct horse battery staple 42\"\n[dashboard]\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\"\n";

fn cloudy_image(args: &[&Path]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudy-image"))
        .args(args)
        .output()
        .expect("run cloudy-image");
    eprintln!(
        "$ cloudy-image {:?}\n{}{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

fn run(c: &mut Command) {
    let o = c.output().expect("spawn");
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An ISO as `stages::iso` writes one (volume and application id, the two layers), or another
/// distribution's live ISO (Debian's volume id, the same /live layout live-boot uses).
fn iso(dir: &Path, name: &str, cloudy: bool) -> PathBuf {
    let stage = dir.join(format!("{name}.stage"));
    fs::create_dir_all(stage.join("live")).unwrap();
    fs::write(stage.join("live/filesystem.squashfs"), b"base").unwrap();
    if cloudy {
        fs::write(stage.join("live/cloudy.squashfs"), b"layer").unwrap();
        fs::create_dir_all(stage.join("cloudy")).unwrap();
        fs::write(stage.join("cloudy/README.txt"), b"seed goes here").unwrap();
    }
    let (volid, appid) = if cloudy {
        ("CLOUDY", "Cloudy community-cloud node")
    } else {
        ("d-live 12.5.0 gn amd64", "Debian live")
    };
    let out = dir.join(name);
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-o"])
        .arg(&out)
        .args([
            "-joliet",
            "-rational-rock",
            "-volid",
            volid,
            "-appid",
            appid,
        ])
        .arg(&stage));
    out
}

/// An SD card image laid out as `stages::sdcard` lays one (FAT firmware partition labelled
/// RASPIFIRM, ext4 root); `cloudy` puts the agent on the root, as the Cloudy layer does.
fn sd(dir: &Path, name: &str, cloudy: bool) -> PathBuf {
    let root = dir.join(format!("{name}.root"));
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("usr/bin/true-ish"), b"ELF").unwrap();
    if cloudy {
        fs::write(root.join("usr/bin/cloudy-agent"), b"ELF").unwrap();
    }
    let img = dir.join(name);
    let (fat, ext) = (
        dir.join(format!("{name}.fat")),
        dir.join(format!("{name}.ext4")),
    );
    run(Command::new("truncate").args(["-s", "8M"]).arg(&img));
    run(Command::new("sh").arg("-c").arg(format!(
        "printf 'label: dos\\nunit: sectors\\n\\nstart=2048, size=4096, type=c, bootable\\nstart=6144, size=10240, type=83\\n' | sfdisk -q '{}'",
        img.display()
    )));
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", "RASPIFIRM"])
        .arg(&fat)
        .arg("2048"));
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-d"])
        .arg(&root)
        .arg(&ext)
        .arg("5M"));
    for (part, sector) in [(&fat, 2048), (&ext, 6144)] {
        run(Command::new("dd")
            .arg(format!("if={}", part.display()))
            .arg(format!("of={}", img.display()))
            .args([
                "bs=512",
                &format!("seek={sector}"),
                "conv=notrunc",
                "status=none",
            ]));
    }
    img
}

fn seed(dir: &Path) -> PathBuf {
    let s = dir.join("good.toml");
    fs::write(&s, SEED).unwrap();
    s
}

/// Refused, with what was found, and the file is byte for byte what it was (or still absent).
fn assert_refused(target: &Path, seed: &Path, found: &str) {
    let before = target.exists().then(|| sha256_file(target).unwrap());
    let o = cloudy_image(&[p("customise"), target, p("--seed"), seed]);
    let t = text(&o);
    assert!(!o.status.success(), "refused: {t}");
    assert!(
        t.contains("not a Cloudy image") || t.contains("no such file"),
        "{t}"
    );
    assert!(t.contains(found), "says what it found ({found}): {t}");
    assert!(t.contains("nothing was changed"), "{t}");
    assert!(!t.contains("wrote the seed"), "{t}");
    let after = target.exists().then(|| sha256_file(target).unwrap());
    assert_eq!(before, after, "{} unchanged", target.display());
    // no scratch or temporary file left beside it
    let dir = target.parent().unwrap();
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".customise") || n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_missing_path_is_refused_and_not_created() {
    let d = tempfile::tempdir().unwrap();
    let s = seed(d.path());
    let missing = d.path().join("missing.iso");
    assert_refused(&missing, &s, "no such file");
    assert!(!missing.exists());
    assert_refused(&d.path().join("missing.img.xz"), &s, "no such file");
}

#[test]
fn random_data_is_refused_and_left_byte_identical() {
    let d = tempfile::tempdir().unwrap();
    let s = seed(d.path());
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for name in ["random.iso", "random.img"] {
        let f = d.path().join(name);
        fs::write(&f, &data).unwrap();
        assert_refused(&f, &s, "neither an ISO 9660 image");
        // nor is anything written to -o
        let out = d.path().join(format!("out-{name}"));
        let o = cloudy_image(&[p("customise"), &f, p("--seed"), &s, p("-o"), &out]);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(!out.exists() && !d.path().join(format!("out-{name}.tmp")).exists());
    }
    // .xz that is not xz data, and xz data that is not an image
    let f = d.path().join("random.img.xz");
    fs::write(&f, &data).unwrap();
    assert_refused(&f, &s, "neither an ISO 9660 image");
    let raw = d.path().join("payload");
    fs::write(&raw, &data).unwrap();
    run(Command::new("xz").args(["-k", "-0"]).arg(&raw));
    let f = d.path().join("packed.img.xz");
    fs::rename(d.path().join("payload.xz"), &f).unwrap();
    assert_refused(&f, &s, "xz data holding");
    let empty = d.path().join("empty.iso");
    fs::write(&empty, b"").unwrap();
    assert_refused(&empty, &s, "an empty file");
}

#[test]
fn another_distributions_images_are_refused_and_left_byte_identical() {
    let d = tempfile::tempdir().unwrap();
    let s = seed(d.path());
    let foreign = iso(d.path(), "debian-live.iso", false);
    assert_refused(&foreign, &s, "volume id \"d-live 12.5.0 gn amd64\"");
    // Cloudy's volume id alone is not enough: the Cloudy layer must be there.
    let stage = d.path().join("fake.stage");
    fs::create_dir_all(&stage).unwrap();
    fs::write(stage.join("x"), b"x").unwrap();
    let fake = d.path().join("fake.iso");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-o"])
        .arg(&fake)
        .args(["-volid", "CLOUDY", "-appid", "Cloudy community-cloud node"])
        .arg(&stage));
    assert_refused(&fake, &s, "without the Cloudy layer");
    // A Pi image of another distribution: same FAT label, no Cloudy agent on its root.
    let raspi = sd(d.path(), "raspi.img", false);
    assert_refused(&raspi, &s, "holds no /usr/bin/cloudy-agent");
}

#[test]
fn output_leaves_the_input_alone_and_show_and_remove_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let s = seed(d.path());
    for (name, make) in [
        ("cloudy-pc.iso", iso as fn(&Path, &str, bool) -> PathBuf),
        ("cloudy-pi.img", sd),
    ] {
        let img = make(d.path(), name, true);
        let before = sha256_file(&img).unwrap();
        let out = d.path().join(format!("seeded-{name}"));
        let o = cloudy_image(&[p("customise"), &img, p("--seed"), &s, p("-o"), &out]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains(&format!(
                "wrote the seed {} into {}",
                s.display(),
                out.display()
            )),
            "{}",
            text(&o)
        );
        assert_eq!(sha256_file(&img).unwrap(), before, "-o leaves {name} alone");

        // --show: the seed as written, comments kept, secrets hidden
        let o = cloudy_image(&[p("customise"), &out, p("--show")]);
        assert!(o.status.success(), "{}", text(&o));
        let shown = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            shown.contains("# my first node") && shown.contains("pi-one"),
            "{shown}"
        );
        assert!(
            !shown.contains("correct horse"),
            "community key hidden: {shown}"
        );
        assert!(!shown.contains("argon2id"), "password hash hidden: {shown}");
        assert!(shown.contains("key = \"<redacted>\""), "{shown}");
        // the input still has no seed
        let o = cloudy_image(&[p("customise"), &img, p("--show")]);
        assert!(o.status.success() && o.stdout.is_empty(), "{}", text(&o));
        assert!(text(&o).contains("holds no seed"), "{}", text(&o));

        // --remove-seed in place: gone, and --show says so
        let o = cloudy_image(&[p("customise"), &out, p("--remove-seed")]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("removed the seed from"), "{}", text(&o));
        let o = cloudy_image(&[p("customise"), &out, p("--show")]);
        assert!(text(&o).contains("holds no seed"), "{}", text(&o));
        // removing again changes nothing
        let again = sha256_file(&out).unwrap();
        let o = cloudy_image(&[p("customise"), &out, p("--remove-seed")]);
        assert!(o.status.success() && text(&o).contains("nothing was changed"));
        assert_eq!(sha256_file(&out).unwrap(), again);
    }
}

#[test]
fn an_img_xz_with_its_block_map_says_what_it_did_to_each_file() {
    let d = tempfile::tempdir().unwrap();
    let s = seed(d.path());
    let raw = sd(d.path(), "cloudy-pi.img", true);
    run(Command::new("xz").args(["-0"]).arg(&raw));
    let xz = d.path().join("cloudy-pi.img.xz");
    let map = d.path().join("cloudy-pi.img.bmap");
    fs::write(&map, b"stale").unwrap();
    let o = cloudy_image(&[p("customise"), &xz, p("--seed"), &s]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "wrote the seed {} into {}",
            s.display(),
            xz.display()
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!("regenerated the block map {}", map.display())),
        "{t}"
    );
    assert!(
        fs::read_to_string(&map).unwrap().contains("<bmap"),
        "a real map"
    );
    let o = cloudy_image(&[p("customise"), &xz, p("--show")]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("pi-one"),
        "{}",
        text(&o)
    );
}

/// A seed whose `[community]` has no key is written (it is valid), with the same warning
/// `cloudy-agent seed check` gives.
#[test]
fn a_keyless_community_is_written_with_a_warning() {
    let d = tempfile::tempdir().unwrap();
    let img = iso(d.path(), "cloudy-pc.iso", true);
    let s = d.path().join("alone.toml");
    fs::write(&s, "version = 1\n[community]\nname = \"home\"\n").unwrap();
    let o = cloudy_image(&[p("customise"), &img, p("--seed"), &s]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    // Issue 15: the node no longer stays alone; it waits for a member's approval.
    assert!(
        t.contains("warning") && t.contains("waits as a pending node"),
        "{t}"
    );
}

#[test]
fn customise_needs_one_action() {
    let d = tempfile::tempdir().unwrap();
    let img = iso(d.path(), "cloudy-pc.iso", true);
    let o = cloudy_image(&[p("customise"), &img]);
    assert!(!o.status.success());
    let o = cloudy_image(&[p("customise"), &img, p("--show"), p("--remove-seed")]);
    assert!(!o.status.success());
}
