//! Shared by the pool's integration tests: run a test body on a real reactor.

#![allow(dead_code)]

/// Runs the future built by `f` on a one-reactor runtime and returns its output; a panic in
/// the body fails the test with the body's message.
pub fn run<T, F>(f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + 'static,
{
    reactor::testing::run_on_reactor(std::time::Duration::from_secs(600), f)
}
