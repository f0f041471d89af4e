//! The shape of the code, checked: no module of any crate imports, directly or around a
//! circle, a module that imports it back, and no function of the server, the client or the
//! binaries is longer than a screenful (100 lines). A newcomer reads a crate top-down, one
//! module after the modules it uses; a circle, or a 300-line function, is where they get lost.
//!
//! The sources are read as text: a module's edges are its `crate::m` paths (and `super::m` in a
//! crate's top-level modules), with names the crate root re-exports resolved to the module that
//! defines them. Test modules (`#[cfg(test)] mod tests`) are left out of both checks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Crates whose modules must form no circle.
const CRATES: [&str; 10] = [
    "protocol", "batch", "core", "certs", "client", "dev", "server", "engine", "loadtest",
    "testkit",
];
/// Where no function may be longer than [`MAX_FN_LINES`].
const SHORT_FUNCTIONS: [&str; 4] = ["server/src", "client/src", "engine/src", "loadtest/src"];
const MAX_FN_LINES: usize = 100;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the engine crate sits in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The source with comments, string and character literals blanked out (same length, same
/// line breaks), so braces and paths are read from code only.
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&b, i) {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let close: Vec<char> = close.chars().collect();
            let mut k = j + 1;
            while k < b.len() && b[k..].iter().take(close.len()).ne(close.iter()) {
                k += 1;
            }
            let end = (k + close.len()).min(b.len());
            out.extend(b[i..end].iter().map(|&c| blank(c)));
            i = end;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            let len = if next == Some('\\') {
                b[i + 2..].iter().position(|&c| c == '\'').map(|p| p + 3)
            } else if b.get(i + 2) == Some(&'\'') {
                Some(3)
            } else {
                None
            };
            match len {
                Some(n) => {
                    out.extend(b[i..(i + n).min(b.len())].iter().map(|&c| blank(c)));
                    i += n;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// The code before the file's test module, if it has one.
fn without_tests(code: &str) -> &str {
    match code.find("#[cfg(test)]\nmod tests") {
        Some(i) => &code[..i],
        None => code,
    }
}

/// The identifiers that follow `prefix` (`crate::` or `super::`), including each name in a
/// `prefix{a, b::c}` group.
fn names_after(code: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices(prefix) {
        if i > 0 && code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            names.extend(group.split(',').map(|n| ident(n.trim())));
        } else {
            names.push(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// The crate's top-level modules and the modules each one uses.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let root = ["lib.rs", "main.rs"]
        .iter()
        .map(|f| src.join(f))
        .find(|p| p.exists())
        .expect("a crate root");
    let root_code = code_only(&fs::read_to_string(&root).expect("crate root"));
    // Names the root re-exports, and the module each comes from.
    let mut reexports = BTreeMap::new();
    for stmt in root_code.split(';') {
        let stmt = stmt.trim();
        let Some(path) = stmt.strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = path.split_once("::") else {
            continue;
        };
        let items = items.trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let name = item.rsplit(" as ").next().unwrap_or(item);
            let name = name.rsplit("::").next().unwrap_or(name).trim();
            reexports.insert(name.to_string(), module.trim().to_string());
        }
    }
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files.iter().filter(|f| **f != root) {
        let rel = file.strip_prefix(src).expect("under src");
        let parts: Vec<_> = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if parts.first().is_some_and(|p| p == "bin" || p == "main.rs") {
            continue;
        }
        let top = parts[0].trim_end_matches(".rs").to_string();
        let top_level = parts.len() == 1 || (parts.len() == 2 && parts[1] == "mod.rs");
        let code = code_only(&fs::read_to_string(file).expect("source"));
        let code = without_tests(&code);
        let mut uses = names_after(code, "crate::");
        if top_level {
            uses.extend(names_after(code, "super::"));
        }
        let edges = graph.entry(top.clone()).or_default();
        for name in uses {
            let module = reexports.get(&name).cloned().unwrap_or(name);
            if module != top {
                edges.insert(module);
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for edges in graph.values_mut() {
        edges.retain(|m| modules.contains(m));
    }
    graph
}

/// Every circle found by a depth-first walk, each as the path that closes it.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn walk(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in &graph[node] {
            match state.get(next) {
                Some(1) => {
                    let from = stack.iter().position(|m| m == next).unwrap_or(0);
                    let mut circle = stack[from..].to_vec();
                    circle.push(next.clone());
                    found.push(circle);
                }
                Some(_) => {}
                None => walk(next, graph, state, stack, found),
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
    }
    let (mut state, mut found) = (BTreeMap::new(), Vec::new());
    for node in graph.keys() {
        if !state.contains_key(node) {
            walk(node, graph, &mut state, &mut Vec::new(), &mut found);
        }
    }
    found
}

/// `(name, first line, lines)` of every `fn` with a body in `code`.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(at) = line.find("fn ") else {
            continue;
        };
        if at > 0 && !line[..at].ends_with([' ', '(']) {
            continue;
        }
        let name: String = line[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        let (mut depth, mut opened) = (0i64, false);
        for (end, l) in lines.iter().enumerate().skip(start) {
            for c in l.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if opened && depth <= 0 {
                found.push((name.clone(), start + 1, end - start + 1));
                break;
            }
            if !opened && l.trim_end().ends_with(';') {
                break;
            }
        }
    }
    found
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let mut report = Vec::new();
    for krate in CRATES {
        let graph = module_graph(&workspace().join(krate).join("src"));
        for circle in circles(&graph) {
            report.push(format!("{krate}: {}", circle.join(" → ")));
        }
    }
    assert!(report.is_empty(), "import circles:\n{}", report.join("\n"));
}

#[test]
fn no_function_of_the_server_the_client_or_the_binaries_is_over_a_screenful() {
    let mut report = Vec::new();
    for dir in SHORT_FUNCTIONS {
        let mut files = Vec::new();
        rust_files(&workspace().join(dir), &mut files);
        for file in files {
            let code = code_only(&fs::read_to_string(&file).expect("source"));
            for (name, line, n) in functions(without_tests(&code)) {
                if n > MAX_FN_LINES {
                    let rel = file.strip_prefix(workspace()).unwrap_or(&file);
                    report.push(format!("{}:{line} fn {name}: {n} lines", rel.display()));
                }
            }
        }
    }
    assert!(
        report.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        report.join("\n")
    );
}

/// The checks themselves catch what they look for.
#[test]
fn the_checks_find_a_circle_and_a_long_function() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    graph.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    graph.insert("d".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(circles(&graph), vec![vec!["a", "b", "c", "a"]]);
    graph.get_mut("c").map(BTreeSet::clear);
    assert!(circles(&graph).is_empty());

    let long = format!(
        "fn long() {{\n{}}}\nfn short() {{ let s = \"}}\"; }}\n",
        "    step();\n".repeat(120)
    );
    let found = functions(&code_only(&long));
    assert_eq!(found[0], ("long".to_string(), 1, 122));
    assert_eq!(found[1], ("short".to_string(), 123, 1));
    assert_eq!(
        names_after("use crate::{a, b::C};\nlet x = crate::d::e;", "crate::"),
        vec!["a", "b", "d"]
    );
}
