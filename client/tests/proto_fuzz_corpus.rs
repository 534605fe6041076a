//! M9: the `proto` fuzz target's corpus, replayed by `cargo test`.
//!
//! Every file of `fuzz/corpus/proto/` (seeds and what the fuzzer kept) and of
//! `fuzz/regressions/proto/` (inputs that once broke the target) goes through the very
//! checks the fuzz target runs, from the shared `fuzz/proto_checks/`: a script of broker
//! frames, raw bytes, commands and clock steps driven into `lepus::proto::Connection`, with
//! every token accounted for, memory bounded and the output decoded. So CI holds the state
//! machine to the fuzzer's rules on every run, without a nightly toolchain or libFuzzer.
//! See `fuzz/README.md`.

#[path = "../../fuzz/proto_checks/mod.rs"]
mod proto_checks;

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The fuzz crate, beside this one.
const FUZZ_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz");

/// The input files in `fuzz/<kind>/proto/`, sorted; none if the folder does not exist.
fn inputs(kind: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(Path::new(FUZZ_DIR).join(kind).join("proto")) else {
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
    let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
    name.starts_with('.') || path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("md"))
}

#[test]
fn m9_proto_fuzz_corpus() {
    let corpus = inputs("corpus");
    assert!(!corpus.is_empty(), "fuzz/corpus/proto/ is empty or missing: regenerate it with make_seeds");
    let regressions = inputs("regressions");
    for path in corpus.iter().chain(&regressions) {
        let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        // Shown only if the check panics: names the input that broke it.
        println!("replaying {} ({} bytes)", path.display(), data.len());
        proto_checks::check_proto(&data);
    }
    println!("proto: {} corpus and {} regression inputs passed", corpus.len(), regressions.len());
}

/// Each seed still reaches the states it was written for (a seed stuck at the handshake
/// would pass every check and fuzz nothing).
#[test]
fn m9_proto_seeds_reach_their_states() {
    for seed in proto_checks::seeds() {
        let summary = proto_checks::run(&seed.bytes);
        assert!(
            summary.covers(&seed.expect),
            "seed {}: got {summary:#?}, wanted at least {:#?}",
            seed.name,
            seed.expect
        );
    }
}

/// The committed `seed-*` files are what the seed program writes now: none missing, none
/// stale (run `cargo run --release --bin make_seeds` in `fuzz/` after changing the format).
#[test]
fn m9_proto_committed_seeds_are_current() {
    let seeds = proto_checks::seeds();
    let dir = Path::new(FUZZ_DIR).join("corpus").join("proto");
    for seed in &seeds {
        let path = dir.join(format!("seed-{}", seed.name));
        let committed = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(committed == seed.bytes, "{} differs from its seed: regenerate with make_seeds", path.display());
    }
    for path in inputs("corpus") {
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        if let Some(seed) = name.strip_prefix("seed-") {
            assert!(seeds.iter().any(|s| s.name == seed), "{name} is not a seed any more: regenerate with make_seeds");
        }
    }
}

/// The checks catch what they are for: a reply token never answered, a token answered
/// twice. (Each case panics inside the ledger, as it would inside the fuzz target.)
#[test]
fn m9_proto_checks_fail_on_a_broken_promise() {
    let lost = std::panic::catch_unwind(proto_checks::self_test_lost_reply);
    assert!(lost.is_err(), "a reply token that never came back went unnoticed");
    let twice = std::panic::catch_unwind(proto_checks::self_test_double_reply);
    assert!(twice.is_err(), "a reply token answered twice went unnoticed");
}
