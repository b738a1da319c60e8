//! The documentation stays true to the tree: ARCHITECTURE.md's code map names every file under `src/`
//! and only files that exist, and every link of the README and `docs/` reaches a file and a heading.

use crate::common;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `src/`, relative to it; a folder with a `mod.rs` is named by the folder
/// (`queue/`), one without by its files (`message/trace.rs`).
fn source_files(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_dir() {
            if entry.path().join("mod.rs").exists() {
                out.insert(format!("{prefix}{name}/"));
            }
            source_files(&entry.path(), &format!("{prefix}{name}/"), out);
        } else if name == "mod.rs" {
            // Its folder names it.
        } else if name.ends_with(".rs") {
            out.insert(format!("{prefix}{name}"));
        }
    }
}

/// The `code`-quoted words of `text` that name a source file or folder (`x.rs`, `x/`, `x/y.rs`).
fn named_paths(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| {
            !w.contains(' ')
                && (w.ends_with(".rs") || (w.ends_with('/') && !w.contains('<')))
                && !w.starts_with("tests/")
                && !w.starts_with("migrations/")
                && !w.starts_with("benches/")
                && !w.starts_with("deploy/")
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_code_map_names_every_source_file_and_only_files_that_exist() {
    let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let map = architecture
        .split("\n## Code map\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("ARCHITECTURE.md has a '## Code map' section");
    let mut files = BTreeSet::new();
    source_files(&root().join("src"), "", &mut files);

    let mut named = BTreeSet::new();
    let mut missing = Vec::new();
    // A bullet is about one file or folder (its first quoted word); a bare file name in a folder's
    // bullet is that folder's file, else a file of `src/`.
    for bullet in map.split("\n- ") {
        let subject = named_paths(bullet).into_iter().next().unwrap_or_default();
        let folder = if subject.ends_with('/') {
            subject.clone()
        } else {
            String::new()
        };
        for path in named_paths(bullet) {
            let candidates = if let Some(folder) = path.strip_suffix("mod.rs") {
                vec![folder.to_owned()]
            } else if path.contains('/') {
                vec![path.clone()]
            } else {
                vec![format!("{folder}{path}"), path.clone()]
            };
            match candidates.into_iter().find(|c| files.contains(c)) {
                Some(found) => {
                    named.insert(found);
                }
                None => missing.push(path),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map names files that do not exist: {missing:?}"
    );
    let unnamed: Vec<&String> = files.difference(&named).collect();
    assert!(
        unnamed.is_empty(),
        "ARCHITECTURE.md's code map does not name: {unnamed:?}"
    );
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown page's headings (outside fenced blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            found.insert(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

#[test]
fn every_link_of_the_readme_and_docs_reaches_a_file_and_a_heading() {
    let pages = common::documentation();
    assert!(pages.len() > 5, "README.md and the pages of docs/");
    let mut broken = Vec::new();
    for (page, text) in &pages {
        let dir = page.parent().unwrap();
        for target in text
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split(')').next())
        {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.contains(' ')
            {
                continue;
            }
            let (path, heading) = target.split_once('#').unwrap_or((target, ""));
            let file = if path.is_empty() {
                page.clone()
            } else {
                dir.join(path)
            };
            let reached = file.exists()
                && (heading.is_empty()
                    || !path.ends_with(".md") && !path.is_empty()
                    || anchors(&std::fs::read_to_string(&file).unwrap()).contains(heading));
            if !reached {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links that reach nothing: {broken:#?}");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.lines().count() <= 250,
        "the README is a front page: {} lines",
        readme.lines().count()
    );
}
