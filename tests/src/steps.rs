//! Named steps of a one-node (or one-cluster) test binary, selected by `LEPUS_STEPS`.

/// The step names to run: all of `names`, or those `LEPUS_STEPS` (comma-separated parts of
/// step names) selects.
///
/// # Panics
///
/// When `LEPUS_STEPS` is set but selects no step, or one of its parts matches no step: a
/// typo must fail the test, not turn it into a pass that ran nothing.
pub fn selected(names: &[&'static str]) -> Vec<&'static str> {
    let Ok(only) = std::env::var("LEPUS_STEPS") else { return names.to_vec() };
    let parts: Vec<&str> = only.split(',').map(str::trim).filter(|part| !part.is_empty()).collect();
    let unmatched: Vec<&&str> = parts.iter().filter(|part| !names.iter().any(|name| name.contains(**part))).collect();
    assert!(
        !parts.is_empty() && unmatched.is_empty(),
        "LEPUS_STEPS={only:?} must name steps (parts of: {names:?}); matching none: {unmatched:?}"
    );
    names.iter().copied().filter(|name| parts.iter().any(|part| name.contains(part))).collect()
}
