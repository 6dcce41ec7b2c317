//! The import order of `src/`: every path a file of the library names (`use crate::…`,
//! `super::…`, `self::…`, a child module's name, in `use` lines and inline) is checked
//! against the layer order written in `docs/architecture.md`, and the files' imports
//! must form no circle, within a folder too (a child may use what its parent defines
//! only if the parent imports nothing from that child).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A file of the library and the module path it defines (`src/a/b.rs` → `a::b`).
struct File {
    path: String,
    module: Vec<String>,
    /// Its code without comments, string literals and test modules.
    code: String,
}

fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

/// `code` without comments, the contents of string and char literals, and everything
/// from the first `#[cfg(test)]` on (unit tests sit at the end of a file and may use
/// anything).
fn strip(code: &str) -> String {
    let code = match code.find("#[cfg(test)]") {
        Some(i) => &code[..i],
        None => code,
    };
    let b = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            j += 1;
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && (b.get(i + 2) == Some(&b'\'') || (b.get(i + 1) == Some(&b'\\')))
        {
            // A char literal ('a', '\n', '\u{..}'); a lifetime has no closing quote.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            let ch = code[i..].chars().next().expect("a char");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a use tree starting at `s` names (`a::{b, c::d}` → `a::b`, `a::c::d`).
fn use_tree(s: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut path = prefix;
    loop {
        while i < b.len() && b[i].is_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == '{' {
            i += 1;
            loop {
                let rest: String = b[i..].iter().collect();
                let used = use_tree(&rest, path.clone(), out);
                i += used;
                while i < b.len() && b[i].is_whitespace() {
                    i += 1;
                }
                if i < b.len() && b[i] == ',' {
                    i += 1;
                    continue;
                }
                if i < b.len() && b[i] == '}' {
                    i += 1;
                }
                return i;
            }
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        if i > start {
            path.push(b[start..i].iter().collect());
        }
        let rest: String = b[i..].iter().take(2).collect();
        if rest == "::" {
            i += 2;
            continue;
        }
        out.push(path);
        return i;
    }
}

/// Every path `file` names that starts at `crate`, `super`, `self` or one of its child
/// modules, resolved to a module path from the crate root.
fn named_paths(file: &File, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let code = &file.code;
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    let mut out = Vec::new();
    for (k, &(pos, c)) in chars.iter().enumerate() {
        if !is_ident(c) || (k > 0 && (is_ident(chars[k - 1].1) || chars[k - 1].1 == ':')) {
            continue;
        }
        let mut found = Vec::new();
        use_tree(&code[pos..], Vec::new(), &mut found);
        for path in found {
            // A lone `crate` or `super` is a visibility (`pub(super)`), not a path.
            if path.len() < 2 {
                continue;
            }
            let first = &path[0];
            let resolved: Vec<String> = match first.as_str() {
                "crate" => path[1..].to_vec(),
                "super" => {
                    let mut base = file.module.clone();
                    let mut rest = &path[..];
                    while rest.first().map(String::as_str) == Some("super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                    base.extend(rest.iter().cloned());
                    base
                }
                "self" => file.module.iter().chain(&path[1..]).cloned().collect(),
                name if children.contains(name) => {
                    file.module.iter().chain(&path).cloned().collect()
                }
                _ => continue,
            };
            out.push(resolved);
        }
    }
    out
}

/// The layers, top first, from the ```layers block of the architecture page: each line
/// names the top modules of one layer.
fn layers(doc: &str) -> Vec<Vec<String>> {
    let block = doc
        .split("```layers\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("docs/architecture.md has a ```layers block");
    block
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn source_files(dir: &Path, root: &Path, out: &mut Vec<File>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("an entry").path();
        let rel = path.strip_prefix(root).expect("under src").to_owned();
        if path.is_dir() {
            // The binary is a crate of its own, above the library.
            if rel != Path::new("bin") {
                source_files(&path, root, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("readable");
            out.push(File {
                path: format!("src/{}", rel.display()),
                module: module_of(&rel),
                code: strip(&text),
            });
        }
    }
}

/// The edges between files: file → files it names.
fn graph(files: &[File]) -> BTreeMap<String, BTreeSet<String>> {
    let by_module: BTreeMap<Vec<String>, &File> =
        files.iter().map(|f| (f.module.clone(), f)).collect();
    let mut edges = BTreeMap::new();
    for f in files {
        let children: BTreeSet<String> = files
            .iter()
            .filter(|g| g.module.len() == f.module.len() + 1 && g.module.starts_with(&f.module))
            .map(|g| g.module.last().expect("a child").clone())
            .collect();
        let mut to = BTreeSet::new();
        for path in named_paths(f, &children) {
            // The longest prefix that is a file's module is the file named.
            let target = (0..=path.len())
                .rev()
                .find_map(|n| by_module.get(&path[..n]))
                .expect("the crate root is a file");
            if target.path != f.path {
                to.insert(target.path.clone());
            }
        }
        edges.insert(f.path.clone(), to);
    }
    edges
}

/// The circles of `edges` (strongly connected sets of more than one file).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: finish order on the graph, then components on the reversed graph.
    fn visit<'a>(
        n: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<&'a str>,
        order: &mut Vec<&'a str>,
    ) {
        if !seen.insert(n) {
            return;
        }
        for m in edges.get(n).into_iter().flatten() {
            visit(m, edges, seen, order);
        }
        order.push(n);
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for n in edges.keys() {
        visit(n, edges, &mut seen, &mut order);
    }
    let mut reversed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, tos) in edges {
        for b in tos {
            reversed.entry(b.clone()).or_default().insert(a.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for n in order.into_iter().rev() {
        let mut comp = Vec::new();
        visit(n, &reversed, &mut assigned, &mut comp);
        if comp.len() > 1 {
            comp.sort();
            out.push(comp.into_iter().map(str::to_owned).collect());
        }
    }
    out
}

fn top_module(path: &str) -> String {
    let rel = path.trim_start_matches("src/");
    rel.split('/')
        .next()
        .expect("a part")
        .trim_end_matches(".rs")
        .to_owned()
}

fn read_src() -> (Vec<File>, String) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    source_files(&root.join("src"), &root.join("src"), &mut files);
    let doc =
        std::fs::read_to_string(root.join("docs/architecture.md")).expect("docs/architecture.md");
    (files, doc)
}

#[test]
fn src_has_no_circle_of_imports() {
    let (files, _) = read_src();
    let edges = graph(&files);
    let found: Vec<String> = circles(&edges)
        .iter()
        .map(|circle| {
            let within: Vec<String> = circle
                .iter()
                .flat_map(|a| {
                    edges[a]
                        .iter()
                        .filter(|b| circle.contains(b))
                        .map(move |b| format!("  {a} -> {b}"))
                })
                .collect();
            format!("a circle of {} files:\n{}", circle.len(), within.join("\n"))
        })
        .collect();
    assert!(
        found.is_empty(),
        "files that import each other, directly or around a circle:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_import_runs_down_the_layers_of_the_architecture_page() {
    let (files, doc) = read_src();
    let layers = layers(&doc);
    let rank: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (m.as_str(), i)))
        .collect();
    let mut wrong = Vec::new();
    for f in &files {
        let top = top_module(&f.path);
        if top == "lib" {
            continue;
        }
        if !rank.contains_key(top.as_str()) {
            wrong.push(format!("{}: module {top} is in no layer", f.path));
        }
    }
    let edges = graph(&files);
    for (from, tos) in &edges {
        let a = top_module(from);
        if a == "lib" {
            continue;
        }
        for to in tos {
            let b = top_module(to);
            if a == b {
                continue;
            }
            match (rank.get(a.as_str()), rank.get(b.as_str())) {
                (Some(ra), Some(rb)) if rb > ra => {}
                (Some(_), Some(_)) => wrong.push(format!(
                    "{from} imports {to}: {b} is not in a layer below {a}"
                )),
                _ => {}
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layer order of docs/architecture.md:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_every_kind_of_path() {
    let f = File {
        path: "src/a/b.rs".into(),
        module: vec!["a".into(), "b".into()],
        code: strip(
            "use crate::{x::Y, z::{self, w::V}};\nuse super::Q;\n// crate::not::this\n\
             let s = \"crate::nor::this\";\nfn f() { crate::inline::call(); child::g(); }\n\
             pub(super) fn h() {}",
        ),
    };
    let children: BTreeSet<String> = ["child".to_owned()].into();
    let got: BTreeSet<String> = named_paths(&f, &children)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    let want: BTreeSet<String> = [
        "x::Y",
        "z::self",
        "z::w::V",
        "a::Q",
        "inline::call",
        "a::b::child::g",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(got, want);
    let mut edges = BTreeMap::new();
    edges.insert("p".to_owned(), BTreeSet::from(["q".to_owned()]));
    edges.insert("q".to_owned(), BTreeSet::from(["p".to_owned()]));
    edges.insert("r".to_owned(), BTreeSet::from(["p".to_owned()]));
    assert_eq!(circles(&edges), vec![vec!["p".to_owned(), "q".to_owned()]]);
}
