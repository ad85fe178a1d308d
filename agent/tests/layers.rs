//! The shape of the code, held by a test: the agent's modules import only from layers below
//! their own (the map in `src/lib.rs`), a service kind never imports another kind, and no crate
//! of the workspace has an import cycle among its modules. Production code only: `#[cfg(test)]`
//! modules may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The agent's layers, bottom first. A module's layer is that of the longest prefix listed.
const LAYERS: &[(&str, u32)] = &[
    ("os", 1),
    ("mesh", 2),
    ("catalog", 3),
    ("probe", 4),
    ("services", 5),
    ("kinds", 6),
    ("registry", 7),
    ("update", 8),
    ("control", 9),
    ("status", 9),
    ("dashboard", 10),
    ("daemon", 11),
];

/// Folders whose children are siblings that must not import each other.
const NEVER_EACH_OTHER: &[&str] = &["kinds"];

fn layer(module: &str) -> Option<u32> {
    LAYERS
        .iter()
        .filter(|(p, _)| module == *p || module.starts_with(&format!("{p}::")))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, l)| *l)
}

/// Source text without comments, string and char literals (so braces and paths in them do not
/// count), and without `#[cfg(test)]` items.
fn production(src: &str) -> String {
    let code = strip_literals(src);
    let mut out = String::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        rest = &rest[i + "#[cfg(test)]".len()..];
        // Skip the item: up to its `;` or through its braced body.
        let end_semi = rest.find(';');
        let open = rest.find('{');
        match (open, end_semi) {
            (Some(o), Some(s)) if s < o => rest = &rest[s + 1..],
            (Some(o), _) => {
                let mut depth = 0;
                let mut end = rest.len();
                for (j, c) in rest[o..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = o + j + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &rest[end..];
            }
            (None, Some(s)) => rest = &rest[s + 1..],
            (None, None) => rest = "",
        }
    }
    out.push_str(rest);
    out
}

fn strip_literals(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if c == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let body = &src[j + 1..];
            i = j + 1 + body.find(&close).map_or(body.len(), |k| k + close.len());
            out.push_str("\"\"");
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // 'x': a char literal (a lifetime has no closing quote two bytes on).
            i += 3;
            out.push_str("' '");
        } else if c == b'\'' && b.get(i + 1) == Some(&b'\\') {
            let end = src[i + 2..].find('\'').map_or(b.len(), |k| i + 2 + k + 1);
            i = end;
            out.push_str("' '");
        } else {
            let ch = src[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// `crate::a::b::c` paths in `code`, as module paths `a::b::c` (grouped `use crate::{a, b::c}`
/// expanded one level).
fn crate_paths(code: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let p = path_at(item.trim());
                if !p.is_empty() {
                    v.push(p);
                }
            }
        } else {
            v.push(path_at(rest));
        }
    }
    v
}

fn path_at(s: &str) -> String {
    let mut segs = Vec::new();
    let mut rest = s;
    loop {
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            break;
        }
        rest = &rest[name.len()..];
        segs.push(name);
        match rest.strip_prefix("::") {
            Some(r) if !r.starts_with('{') && !r.starts_with('*') => rest = r,
            _ => break,
        }
    }
    segs.join("::")
}

/// Every `.rs` file under `src`, as (module path, production source).
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).unwrap().with_extension("");
                let mut segs: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if segs
                    .last()
                    .is_some_and(|s| s == "mod" || s == "lib" || s == "main")
                {
                    segs.pop();
                }
                let text = std::fs::read_to_string(&p).unwrap();
                out.insert(segs.join("::"), production(&text));
            }
        }
    }
    out
}

/// The module a path names: its longest prefix that is a module of the crate.
fn resolve(path: &str, known: &BTreeSet<String>) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    (1..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find(|m| known.contains(m))
}

/// Edges module -> module it imports (`crate::` paths and `super::` paths), self-edges and
/// the crate root left out.
fn imports(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<String> = mods.keys().filter(|k| !k.is_empty()).cloned().collect();
    let mut g = BTreeMap::new();
    for (m, code) in mods {
        let mut to = BTreeSet::new();
        let mut paths = crate_paths(code);
        // `super::x` from module `a::b` (file a/b.rs or a/b/mod.rs) names `a::x`; each further
        // `super::` goes one more level up; `super::{x, y::z}` names each.
        let mut rest = code.as_str();
        while let Some(i) = rest.find("super::") {
            if rest[..i].ends_with("super::") {
                rest = &rest[i + "super::".len()..];
                continue;
            }
            let mut up = 0;
            rest = &rest[i..];
            while let Some(r) = rest.strip_prefix("super::") {
                up += 1;
                rest = r;
            }
            let segs: Vec<&str> = m.split("::").filter(|s| !s.is_empty()).collect();
            let Some(base) = segs.len().checked_sub(up) else {
                continue;
            };
            let base = segs[..base].join("::");
            let join = |p: String| {
                if base.is_empty() {
                    p
                } else {
                    format!("{base}::{p}")
                }
            };
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let p = path_at(item.trim());
                    if !p.is_empty() && p != "self" {
                        paths.push(join(p));
                    }
                }
            } else {
                let p = path_at(rest);
                if !p.is_empty() {
                    paths.push(join(p));
                }
            }
        }
        // A child module named by a relative path (`playlist::Playlist` in `streaming`).
        for (i, _) in code.match_indices("::") {
            let start = code[..i]
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                .map_or(0, |k| k + 1);
            let before = code[..start].trim_end();
            if start == i || before.ends_with("::") {
                continue;
            }
            let child = if m.is_empty() {
                code[start..i].to_string()
            } else {
                format!("{m}::{}", &code[start..i])
            };
            if known.contains(&child) {
                paths.push(
                    format!("{child}{}", &code[i..])
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string(),
                );
            }
        }
        for p in paths {
            if let Some(t) = resolve(&p, &known) {
                if &t != m {
                    to.insert(t);
                }
            }
        }
        g.insert(m.clone(), to);
    }
    g
}

/// Imports that break the layers: (module, what it imports, why).
fn layer_violations(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String, String)> {
    let mut bad = Vec::new();
    for (m, tos) in g {
        let Some(lm) = layer(m) else { continue };
        let top = m.split("::").next().unwrap_or("");
        for t in tos {
            let Some(lt) = layer(t) else { continue };
            let ttop = t.split("::").next().unwrap_or("");
            if top == ttop {
                if NEVER_EACH_OTHER.contains(&top) {
                    let a = m.split("::").nth(1);
                    let b = t.split("::").nth(1);
                    if a.is_some() && b.is_some() && a != b {
                        bad.push((
                            m.clone(),
                            t.clone(),
                            format!("one {top} never imports another"),
                        ));
                    }
                }
                continue;
            }
            if lt >= lm {
                bad.push((
                    m.clone(),
                    t.clone(),
                    format!("layer {lt} is not below layer {lm}"),
                ));
            }
        }
    }
    bad
}

/// The groups of modules that import each other in a cycle (strongly connected components
/// of more than one module), each sorted.
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two modules are in one cycle when each reaches the other.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(n) = todo.pop() {
            for t in g.get(&n).into_iter().flatten() {
                if seen.insert(t.clone()) {
                    todo.push(t.clone());
                }
            }
        }
        seen
    };
    let all: BTreeMap<&String, BTreeSet<String>> = g.keys().map(|k| (k, reach(k))).collect();
    let mut groups: Vec<Vec<String>> = Vec::new();
    for (k, r) in &all {
        if groups.iter().any(|gr| gr.contains(k)) {
            continue;
        }
        let group: Vec<String> = r
            .iter()
            .filter(|o| *o != *k && all.get(o).is_some_and(|ro| ro.contains(*k)))
            .cloned()
            .chain(std::iter::once((*k).clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if group.len() > 1 {
            groups.push(group);
        }
    }
    groups
}

fn src(krate: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src")
}

#[test]
fn agent_modules_import_only_from_layers_below() {
    let mods = modules(&src("agent"));
    for m in mods.keys().filter(|m| !m.is_empty()) {
        assert!(
            layer(m).is_some(),
            "module {m} is in no layer: add its folder to LAYERS here and to the map in src/lib.rs"
        );
    }
    let bad = layer_violations(&imports(&mods));
    assert!(
        bad.is_empty(),
        "imports against the layers:\n{}",
        bad.iter()
            .map(|(m, t, why)| format!("  {m} imports {t}: {why}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn no_crate_has_an_import_cycle() {
    let mut failed = Vec::new();
    for krate in ["model", "agent", "image"] {
        let g = imports(&modules(&src(krate)));
        assert!(g.len() > 3, "{krate}: modules were found");
        for c in cycles(&g) {
            failed.push(format!("  {krate}: {}", c.join(", ")));
        }
    }
    assert!(
        failed.is_empty(),
        "modules that import each other, in a cycle:\n{}",
        failed.join("\n")
    );
}

/// The checks themselves catch what they are for.
#[test]
fn the_checks_catch_an_upward_import_a_kind_import_and_a_cycle() {
    let mods: BTreeMap<String, String> = [
        ("os::system", "use crate::daemon::ready;"),
        ("daemon::ready", "fn f() {}"),
        ("kinds::tahoe", "use crate::kinds::syncthing::NAME;"),
        ("kinds::syncthing", "pub const NAME: &str = \"crate::os::x\";"),
        (
            "catalog",
            "use crate::{mesh::members, os::system::System};\n#[cfg(test)]\nmod tests { use crate::daemon::ready; }",
        ),
        ("mesh::members", "use super::super::catalog;"),
    ]
    .into_iter()
    .map(|(m, c)| (m.to_string(), production(c)))
    .collect();
    let g = imports(&mods);
    let bad: Vec<(String, String)> = layer_violations(&g)
        .into_iter()
        .map(|(m, t, _)| (m, t))
        .collect();
    assert!(bad.contains(&("os::system".into(), "daemon::ready".into())));
    assert!(bad.contains(&("kinds::tahoe".into(), "kinds::syncthing".into())));
    assert!(
        bad.contains(&("mesh::members".into(), "catalog".into())),
        "super::super:: is resolved: {bad:?}"
    );
    assert!(
        !bad.iter().any(|(m, _)| m == "catalog"),
        "test modules and grouped imports of lower layers are fine: {bad:?}"
    );
    assert!(
        !g["kinds::syncthing"].contains("os"),
        "a path inside a string is not an import"
    );
    let cyc: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(cycles(&cyc), vec![vec!["a", "b", "c"]]);
    let mut acyclic = cyc.clone();
    acyclic.get_mut("c").unwrap().clear();
    assert!(cycles(&acyclic).is_empty());
}
