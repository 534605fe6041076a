//! M9: the fuzz corpora, replayed by `cargo test`.
//!
//! Every file of `fuzz/corpus/<target>/` (seeds and what the fuzzer kept) and of
//! `fuzz/regressions/<target>/` (inputs that once crashed a target) goes through the very
//! checks the fuzz target runs, from the shared `fuzz/checks.rs`. So CI holds the codec to
//! the fuzzers' rules on every run, without a nightly toolchain or libFuzzer, and a fixed
//! crash cannot come back unnoticed. See `fuzz/README.md`.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The fuzz crate, beside this one.
const FUZZ_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz");

/// The input files in `fuzz/<kind>/<target>/`, sorted; none if the folder does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(FUZZ_DIR).join(kind).join(target);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("read a corpus entry").path())
        .filter(|path| path.is_file() && !is_note(path))
        .collect();
    files.sort();
    files
}

/// READMEs and dotfiles that may sit beside the inputs.
fn is_note(path: &Path) -> bool {
    let hidden = path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with('.'));
    hidden || path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("md"))
}

/// Names of the sub-folders of `fuzz/<kind>/`.
fn folders(kind: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(Path::new(FUZZ_DIR).join(kind)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|entry| entry.expect("read a fuzz folder entry").path())
        .filter(|path| path.is_dir())
        .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Runs `target`'s check over its corpus, which must not be empty, and its regressions.
fn replay(target: &str) {
    let (_, check) = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no check for target {target}"));
    let corpus = inputs("corpus", target);
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is empty or missing: regenerate it with make_seeds (fuzz/README.md)"
    );
    let regressions = inputs("regressions", target);
    for path in corpus.iter().chain(&regressions) {
        let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        // Shown only if the check panics: names the input that broke it.
        println!("replaying {} ({} bytes)", path.display(), data.len());
        check(&data);
    }
    println!("{target}: {} corpus and {} regression inputs passed", corpus.len(), regressions.len());
}

#[test]
fn m9_fuzz_corpus_frame() {
    replay("frame");
}

#[test]
fn m9_fuzz_corpus_field_table() {
    replay("field_table");
}

#[test]
fn m9_fuzz_corpus_method() {
    replay("method");
}

#[test]
fn m9_fuzz_corpus_content_header() {
    replay("content_header");
}

/// Targets whose checks need more than the codec, replayed by a test of another crate
/// (path from the repository root).
const REPLAYED_ELSEWHERE: [(&str, &str); 1] = [("proto", "client/tests/proto_fuzz_corpus.rs")];

/// Every fuzz target has a check, a corpus and a test above (or in the test named by
/// `REPLAYED_ELSEWHERE`); no corpus or regression folder belongs to a target that does not
/// exist (its inputs would never be replayed).
#[test]
fn m9_fuzz_targets_corpora_and_checks_match() {
    let mut targets: Vec<String> = checks::TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    for (target, test) in REPLAYED_ELSEWHERE {
        let path = Path::new(FUZZ_DIR).join("..").join(test);
        let source = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{target} is replayed by {test}: {e}"));
        assert!(source.contains(&format!("fuzz/corpus/{target}/")), "{test} does not replay fuzz/corpus/{target}/");
        targets.push(target.to_owned());
    }
    targets.sort();
    let mut sources: Vec<String> = fs::read_dir(Path::new(FUZZ_DIR).join("fuzz_targets"))
        .expect("fuzz/fuzz_targets/ exists")
        .filter_map(|entry| {
            let path = entry.expect("read a fuzz target entry").path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    sources.sort();
    assert_eq!(sources, targets, "fuzz/fuzz_targets/*.rs against checks::TARGETS");
    assert_eq!(folders("corpus"), targets, "fuzz/corpus/* against checks::TARGETS");
    for folder in folders("regressions") {
        assert!(targets.contains(&folder), "fuzz/regressions/{folder}/ belongs to no target");
    }
}
