//! `cargo xtask bench`: see docs/benchmarks.md.

pub fn bench(_args: &[String]) -> Result<(), String> {
    Err("the benchmark runner is not written yet".into())
}
