//! The module layering ARCHITECTURE.md describes, checked on the source:
//!
//! - no two modules import each other, at any level of `src/`: within every
//!   directory, its files and subdirectories (and its own `mod.rs`) form no
//!   import cycle;
//! - nothing below the control plane (`sidecar/`) or the command line
//!   (`cmd/`) imports them;
//! - the leaves (settings, metrics, and the small helpers) import only
//!   other leaves.
//!
//! Imports are read from the text: `crate::` and `super::` paths (braced
//! `use` groups expanded) and paths through a file's own child modules,
//! resolved to the module that defines the item, through `pub use`
//! re-exports. Code under `#[cfg(test)]` is left out: tests may reach
//! anywhere.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

struct Module {
    /// Source with comments, strings and test modules removed.
    code: String,
    /// Child modules declared with `mod name;`.
    children: BTreeSet<String>,
    /// Names re-exported with `pub use` (or `pub(crate) use`), and the
    /// path they come from.
    reexports: HashMap<String, Vec<String>>,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn module_path(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Removes comments, string and char literals (their contents could look
/// like paths), and everything from the first `#[cfg(test)]` on (test
/// modules sit at the end of their files).
fn strip(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            // Raw strings (r"..", r#".."#) hold no quotes we need to track.
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\''
            && b.get(i + 2) == Some(&b'\'')
            && b.get(i + 1).is_some_and(|c| *c != b'\\')
        {
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The paths of one `use` tree or in-code path starting at `start`, with
/// braced groups expanded: `a::{b, c::{d, e}}` gives `a::b`, `a::c::d`,
/// `a::c::e`. Returns the paths and where the tree ends.
fn path_tree(code: &[u8], start: usize) -> (Vec<Vec<String>>, usize) {
    let mut i = start;
    let mut prefix = Vec::new();
    loop {
        let s = i;
        while i < code.len() && is_ident(code[i]) {
            i += 1;
        }
        if s == i {
            break;
        }
        prefix.push(String::from_utf8_lossy(&code[s..i]).into_owned());
        if code.get(i) == Some(&b':') && code.get(i + 1) == Some(&b':') {
            i += 2;
            if code.get(i) == Some(&b'{') {
                i += 1;
                let mut out = Vec::new();
                loop {
                    while i < code.len() && (code[i] as char).is_whitespace() {
                        i += 1;
                    }
                    if code.get(i) == Some(&b'}') {
                        return (out, i + 1);
                    }
                    if i >= code.len() {
                        return (out, i);
                    }
                    let (sub, end) = path_tree(code, i);
                    if end == i {
                        // `self`, `*` or anything else: the group's module.
                        i += 1;
                        out.push(prefix.clone());
                        continue;
                    }
                    for p in sub {
                        let mut full = prefix.clone();
                        full.extend(p);
                        out.push(full);
                    }
                    i = end;
                    while i < code.len() && (code[i] as char).is_whitespace() {
                        i += 1;
                    }
                    // `x as y`
                    if code[i..].starts_with(b"as ") {
                        i += 3;
                        while i < code.len() && (is_ident(code[i]) || code[i] == b' ') {
                            i += 1;
                        }
                    }
                    if code.get(i) == Some(&b',') {
                        i += 1;
                    }
                }
            }
            continue;
        }
        break;
    }
    (vec![prefix], i)
}

fn load() -> BTreeMap<ModPath, Module> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut mods = BTreeMap::new();
    for file in files {
        let path = module_path(&src, &file);
        let raw = std::fs::read_to_string(&file).unwrap();
        let code = strip(&raw);
        let mut children = BTreeSet::new();
        let mut reexports = HashMap::new();
        for line in code.lines() {
            let t = line.trim();
            let t = t
                .strip_prefix("pub(crate) ")
                .or_else(|| t.strip_prefix("pub "))
                .map(|rest| (true, rest))
                .unwrap_or((false, t));
            if let Some(name) = t.1.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
                children.insert(name.trim().to_string());
            }
            if t.0
                && let Some(tree) = t.1.strip_prefix("use ")
            {
                let (paths, _) = path_tree(tree.as_bytes(), 0);
                for p in paths {
                    if let Some(last) = p.last() {
                        reexports.insert(last.clone(), p.clone());
                    }
                }
            }
        }
        mods.insert(
            path,
            Module {
                code,
                children,
                reexports,
            },
        );
    }
    mods
}

/// The module that defines what `path` (as written in module `from`) names.
fn resolve(mods: &BTreeMap<ModPath, Module>, from: &ModPath, path: &[String]) -> Option<ModPath> {
    let (mut cur, rest): (ModPath, &[String]) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("self") => (from.clone(), &path[1..]),
        Some("super") => {
            let mut cur = from.clone();
            let mut rest = path;
            while rest.first().map(String::as_str) == Some("super") {
                cur.pop()?;
                rest = &rest[1..];
            }
            (cur, rest)
        }
        Some(child) if mods.get(from)?.children.contains(child) => (from.clone(), path),
        _ => return None,
    };
    resolve_in(mods, &mut cur, rest, 0);
    Some(cur)
}

fn resolve_in(mods: &BTreeMap<ModPath, Module>, cur: &mut ModPath, rest: &[String], depth: u32) {
    for (i, seg) in rest.iter().enumerate() {
        let mut next = cur.clone();
        next.push(seg.clone());
        if mods.contains_key(&next) {
            *cur = next;
            continue;
        }
        // An item: follow a re-export to the module that defines it.
        if depth < 8
            && let Some(m) = mods.get(cur)
            && let Some(target) = m.reexports.get(seg)
        {
            let from = cur.clone();
            if let Some(mut def) = resolve(mods, &from, &target[..target.len() - 1]) {
                resolve_in(mods, &mut def, &target[target.len() - 1..], depth + 1);
                *cur = def;
            }
        }
        let _ = i;
        return;
    }
}

/// Every module each module imports (itself left out).
fn imports(mods: &BTreeMap<ModPath, Module>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut out = BTreeMap::new();
    for (path, m) in mods {
        let code = m.code.as_bytes();
        let mut deps = BTreeSet::new();
        let mut i = 0;
        while i < code.len() {
            let boundary = i == 0 || !(is_ident(code[i - 1]) || code[i - 1] == b':');
            if !boundary || !is_ident(code[i]) {
                i += 1;
                continue;
            }
            // Re-exports are the module's API, not what it uses.
            let line_start = code[..i]
                .iter()
                .rposition(|c| *c == b'\n')
                .map_or(0, |p| p + 1);
            let line = String::from_utf8_lossy(&code[line_start..i]);
            let line = line.trim_start();
            let declaration = ["mod ", "pub mod ", "pub(crate) mod "]
                .iter()
                .any(|d| line.starts_with(d));
            if line.starts_with("pub use") || line.starts_with("pub(crate) use") || declaration {
                i += 1;
                continue;
            }
            let (paths, end) = path_tree(code, i);
            for p in &paths {
                if p.len() < 2 {
                    continue;
                }
                if let Some(target) = resolve(mods, path, p)
                    && target != *path
                {
                    deps.insert(target);
                }
            }
            i = end.max(i + 1);
        }
        out.insert(path.clone(), deps);
    }
    out
}

fn show(p: &ModPath) -> String {
    if p.is_empty() {
        "crate".into()
    } else {
        p.join("::")
    }
}

/// Cycles among the entries of one directory: its own file is one entry,
/// each child module (with everything below it) another.
fn cycles_in(dir: &ModPath, edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<String> {
    let entry = |m: &ModPath| -> Option<String> {
        if !m.starts_with(dir) {
            return None;
        }
        Some(match m.get(dir.len()) {
            Some(child) => child.clone(),
            None => "(own file)".into(),
        })
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut why: BTreeMap<(String, String), (ModPath, ModPath)> = BTreeMap::new();
    for (from, tos) in edges {
        let Some(a) = entry(from) else { continue };
        for to in tos {
            let Some(b) = entry(to) else { continue };
            if a != b {
                graph.entry(a.clone()).or_default().insert(b.clone());
                why.entry((a.clone(), b))
                    .or_insert((from.clone(), to.clone()));
            }
        }
    }
    // Any edge a -> b with b reaching a back is part of a cycle.
    let reaches = |from: &str, to: &str| -> bool {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            if seen.insert(n.clone()) {
                stack.extend(graph.get(&n).into_iter().flatten().cloned());
            }
        }
        false
    };
    let mut found = Vec::new();
    for ((a, b), (from, to)) in &why {
        if reaches(b, a) {
            found.push(format!(
                "in {}: {a} -> {b} ({} imports {}), and {b} leads back to {a}",
                show(dir),
                show(from),
                show(to)
            ));
        }
    }
    found
}

#[test]
fn no_two_modules_import_each_other_at_any_level() {
    let mods = load();
    assert!(mods.len() > 40, "found only {} modules", mods.len());
    let edges = imports(&mods);
    let mut dirs: BTreeSet<ModPath> = BTreeSet::new();
    for p in mods.keys() {
        for n in 0..p.len() {
            dirs.insert(p[..n].to_vec());
        }
    }
    let mut problems = Vec::new();
    for dir in &dirs {
        problems.extend(cycles_in(dir, &edges));
    }
    assert!(
        problems.is_empty(),
        "import cycles:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn nothing_below_the_control_plane_imports_it() {
    let mods = load();
    let edges = imports(&mods);
    let top = ["sidecar", "cmd"];
    let mut problems = Vec::new();
    for (from, tos) in &edges {
        let above = from.is_empty() || top.contains(&from[0].as_str());
        if above {
            continue;
        }
        for to in tos {
            if to.first().is_some_and(|t| top.contains(&t.as_str())) {
                problems.push(format!("{} imports {}", show(from), show(to)));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn leaves_import_only_leaves() {
    let mods = load();
    let edges = imports(&mods);
    // Settings, metrics and helpers (the crypto provider among them), and the
    // pure identity types.
    let leaves = [
        "config",
        "metrics",
        "identity",
        "clock",
        "crypto",
        "files",
        "limit",
        "log_limit",
        "line_writer",
    ];
    for leaf in leaves {
        assert!(
            mods.keys()
                .any(|m| m.first().map(String::as_str) == Some(leaf)),
            "no module {leaf}"
        );
    }
    let mut problems = Vec::new();
    for (from, tos) in &edges {
        if !from.first().is_some_and(|f| leaves.contains(&f.as_str())) {
            continue;
        }
        for to in tos {
            if !to.first().is_some_and(|t| leaves.contains(&t.as_str())) {
                problems.push(format!("{} imports {}", show(from), show(to)));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The reader itself: it must see the imports it is meant to judge, or
/// the tests above would pass on anything.
#[test]
fn the_import_reader_sees_imports_and_the_cycle_finder_finds_cycles() {
    let (paths, _) = path_tree(b"crate::{a::b, c::{d, e as f}, self}", 0);
    let got: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        got,
        ["crate::a::b", "crate::c::d", "crate::c::e", "crate::self"]
    );
    assert_eq!(
        strip("let x = \"crate::a\"; // super::b\ncrate::c"),
        "let x = \"\"; \ncrate::c"
    );

    // Known imports of the tree as it is laid out: a path through a
    // sibling, a braced group through a re-export, a parent using its own
    // child, and a child of a child reaching up two levels.
    let mods = load();
    let edges = imports(&mods);
    let path = |m: &str| -> ModPath { m.split("::").map(String::from).collect() };
    let has = |from: &str, to: &str| {
        edges
            .get(&path(from))
            .unwrap_or_else(|| panic!("no module {from}"))
            .contains(&path(to))
    };
    assert!(has("proxy::inbound::tcp", "proxy::copy"));
    assert!(
        has("sidecar::start", "proxy::counters"),
        "Direction, re-exported by proxy"
    );
    assert!(has("proxy::inbound", "proxy::inbound::tcp"));
    assert!(has("proxy::http::client", "proxy::registry"));
    assert!(!has("proxy::copy", "proxy::registry"));

    // The cycle finder, on made-up edges: a <-> b inside x, and x's own
    // file importing its child c while c imports x's file back.
    let mut made_up: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    let mut edge = |a: &str, b: &str| {
        made_up.entry(path(a)).or_default().insert(path(b));
    };
    edge("x::a", "x::b::deep");
    edge("x::b", "x::a");
    edge("x", "x::c");
    edge("x::c", "x");
    edge("y", "x::a");
    let found = cycles_in(&path("x"), &made_up);
    assert!(found.iter().any(|f| f.contains("a -> b")), "{found:?}");
    assert!(
        found.iter().any(|f| f.contains("(own file) -> c")),
        "{found:?}"
    );
    assert!(
        cycles_in(&Vec::new(), &made_up).is_empty(),
        "x and y: no cycle"
    );
}
