//! Issue 6, done-when 5: in a built x86 image, Tahoe-LAFS, Syncthing and live streaming all
//! start on first boot when the seed enables them, and the build's verify stage sees it.
//! pc-amd64: the board with PyPI's own wheels for every Tahoe-LAFS pin (the others take Debian's
//! compiled python3-* and a locally built pycddl; `tests/tahoe.rs` boots pc-686-pae with Tahoe).

use std::process::Command;

use cloudy_tests::*;

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "end-to-end (root, builds and boots images): make test runs it"
)]
fn x86_image_starts_every_enabled_service_on_first_boot() {
    require_root();
    let board = "pc-amd64";
    let out = out_dir("services-image");
    let o = cloudy_image(&[
        "build",
        "--board",
        board,
        "--out",
        out.to_str().unwrap(),
        "--no-verify",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let iso = out.join(format!("{board}/cloudy-{board}.iso"));
    let manifest = read_json(&out.join(format!("{board}/manifest.json")));
    assert!(
        manifest["pypi"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "tahoe-lafs"),
        "the manifest lists tahoe-lafs from PyPI"
    );

    // A stream source on the boot medium, as a community could ship one on a USB stick.
    let video = out.join("test.mp4");
    let st = Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-t",
            "20",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
            "-y",
        ])
        .arg(&video)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", text(&st));
    let seed = out.join("services.toml");
    std::fs::write(
        &seed,
        r#"version = 1
[node]
name = "svc-node"
[community]
name = "e2e"
key = "correct horse battery staple 42"
[services]
enable = ["tahoe-introducer", "tahoe-storage", "syncthing", "streaming"]
[streaming]
source = "/run/live/medium/cloudy/test.mp4"
"#,
    )
    .unwrap();
    let o = cloudy_image(&[
        "customise",
        iso.to_str().unwrap(),
        "--seed",
        seed.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let with_video = out.join("with-video.iso");
    let st = Command::new("xorriso")
        .arg("-indev")
        .arg(&iso)
        .arg("-outdev")
        .arg(&with_video)
        .args(["-boot_image", "any", "replay", "-map"])
        .arg(&video)
        .arg("/cloudy/test.mp4")
        .args(["--", "-commit"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", text(&st));

    // verify fails unless the agent's services line reports every enabled service running.
    let o = cloudy_image(&[
        "verify",
        "--board",
        board,
        "--out",
        out.to_str().unwrap(),
        "--image",
        with_video.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let ready: serde_json::Value = text(&o)
        .lines()
        .find(|l| l.starts_with("{\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .expect("verify prints the ready line");
    assert_eq!(ready["hostname"], "svc-node", "{ready}");
    let running: Vec<&str> = ready["services_report"]["running"]
        .as_array()
        .expect("services report")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for s in [
        "tahoe-introducer",
        "tahoe-storage",
        "syncthing",
        "streaming",
    ] {
        assert!(running.contains(&s), "{s} not running: {ready}");
    }
}
