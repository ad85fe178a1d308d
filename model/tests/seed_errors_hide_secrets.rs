//! A seed's errors go to the ready line, the console, the journal, the dashboard and `status`:
//! they must name the file, the line and the key, and never quote a secret value, whatever the
//! error's position relative to the secret's line.

use cloudy_model::seed::{read_file, Seed};

const SECRET: &str = "S3CRET-DO-NOT-ECHO-1234";
/// Pieces of the secret: none may show, not even part of it.
const PIECES: &[&str] = &["S3CRET", "DO-NOT", "NOT-ECHO", "ECHO-1234"];
/// A secret that serde would quote in a type error.
const NUMBER: &str = "987654321987654321";

fn assert_hidden(case: &str, err: &str) {
    for p in PIECES.iter().chain([&NUMBER, &"987654321"]) {
        assert!(
            !err.contains(p),
            "{case}: error quotes the secret ({p}): {err}"
        );
    }
}

fn check(case: &str, text: &str, wants_line: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("my-seed.toml");
    std::fs::write(&path, text).unwrap();
    let err = read_file(&path).expect_err(case);
    let shown = err.to_string();
    let debug = format!("{err:?}");
    assert_hidden(case, &shown);
    assert_hidden(case, &debug);
    assert!(shown.contains("my-seed.toml"), "{case}: no file in {shown}");
    if wants_line {
        assert!(shown.contains("line"), "{case}: no line in {shown}");
    }
    // Section by section (what a booting node reads), the same errors are hidden the same way.
    if let Ok(p) = cloudy_model::seed::Seed::parse_sections("my-seed.toml", text) {
        assert!(!p.errors.is_empty(), "{case}: no error section by section");
        for e in &p.errors {
            assert_hidden(case, &e.to_string());
            assert_hidden(case, &format!("{e:?}"));
        }
    }
    let direct = Seed::parse("my-seed.toml", text).expect_err(case);
    assert_hidden(case, &direct.to_string());
    assert_hidden(case, &format!("{direct:?}"));
}

#[test]
fn seed_errors_never_quote_a_secret() {
    let k = SECRET;
    let cases: Vec<(&str, String, bool)> = vec![
        (
            "error on the key line",
            format!("version = 1\n[community]\nname = \"x\"\nkey = \"{k}\" junk\n"),
            true,
        ),
        (
            "unterminated key",
            format!("version = 1\n[community]\nname = \"x\"\nkey = \"{k}\n"),
            true,
        ),
        (
            "error on the line after the key",
            format!("version = 1\n[community]\nname = \"x\"\nkey = \"{k}\"\nport = = 5\n"),
            true,
        ),
        (
            "error on the line before the key",
            format!("version = 1\n[community]\nname = \"x\" =\nkey = \"{k}\"\n"),
            true,
        ),
        (
            "header broken before the key",
            format!("version = 1\n[community\nkey = \"{k}\"\n"),
            true,
        ),
        (
            "dotted key then an error",
            format!("version = 1\ncommunity.name = \"x\"\ncommunity.key = \"{k}\" ]\n"),
            true,
        ),
        (
            "inline table with an error",
            format!("version = 1\ncommunity = {{ name = \"x\", key = \"{k}\" \n"),
            true,
        ),
        (
            "multi-line string then an error",
            format!("version = 1\n[community]\nname = \"x\"\nkey = \"\"\"\n{k}\n\"\"\" x\n"),
            true,
        ),
        (
            "hash line then an error",
            format!("version = 1\n[dashboard]\npassword_hash = \"$argon2id$v=19${k}\"\nport = [\n"),
            true,
        ),
        (
            "secret of the wrong type",
            format!("version = 1\n[community]\nname = \"x\"\nkey = {NUMBER}\n"),
            true,
        ),
        (
            "hash of the wrong type",
            format!("version = 1\n[dashboard]\npassword_hash = {NUMBER}\n"),
            true,
        ),
        (
            "secret-named unknown key",
            format!("version = 1\n[community]\nname = \"x\"\ntoken = \"{k}\"\n"),
            true,
        ),
        (
            "plain password where a hash goes",
            format!("version = 1\n[dashboard]\npassword_hash = \"{k}\"\n"),
            false,
        ),
        // [wifi] (issue 18): its passphrase and hashed key are secrets like the community key.
        (
            "wifi passphrase too short",
            format!("version = 1\n[wifi]\nssid = \"home\"\ncountry = \"ES\"\npsk = \"{}\"\n", &k[..7]),
            false,
        ),
        (
            "wifi passphrase with a newline",
            format!("version = 1\n[wifi]\nssid = \"home\"\ncountry = \"ES\"\npsk = \"{k}\\n\"\n"),
            false,
        ),
        (
            "wifi passphrase of the wrong type",
            format!("version = 1\n[wifi]\nssid = \"home\"\ncountry = \"ES\"\npsk = {NUMBER}\n"),
            true,
        ),
        (
            "wifi hashed key not hex",
            format!("version = 1\n[wifi]\nssid = \"home\"\ncountry = \"ES\"\npsk_hash = \"{k}\"\n"),
            false,
        ),
        (
            "wifi passphrase then a bad country",
            format!("version = 1\n[wifi]\nssid = \"home\"\npsk = \"{k}\"\ncountry = \"Spain\"\n"),
            false,
        ),
        (
            "wifi passphrase then an unknown key",
            format!("version = 1\n[wifi]\nssid = \"home\"\npsk = \"{k}\"\ncountry = \"ES\"\nchannel = 6\n"),
            true,
        ),
        (
            "version error beside a secret",
            format!("version = 2\n[community]\nname = \"x\"\nkey = \"{k}\"\n"),
            false,
        ),
    ];
    for (case, text, wants_line) in &cases {
        check(case, text, *wants_line);
    }
}

#[test]
fn seed_errors_still_name_the_key() {
    let err = Seed::parse(
        "s.toml",
        &format!("version = 1\n[community]\nname = \"x\"\nkey = {NUMBER}\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("community.key"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    let err = Seed::parse("s.toml", "version = 1\n[tinc]\nmode = \"bridge\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("tinc.mode") && err.contains("line 3"), "{err}");
    // Not a secret: the value helps the user and may show.
    assert!(err.contains("bridge"), "{err}");
}
