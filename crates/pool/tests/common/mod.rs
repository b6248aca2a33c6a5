//! Shared by the pool's integration tests: run a test body on a real reactor.

#![allow(dead_code)]

use reactor::{Config, PollMode, Runtime};

/// Runs the future built by `f` on a one-reactor runtime and returns its output; a panic in
/// the body fails the test with the body's message.
pub fn run<T, F>(f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + 'static,
{
    let rt = Runtime::start(Config {
        cores: 1,
        mode: PollMode::Interrupt,
        pin: false,
        registered_buffers: 4,
        ..Config::default()
    })
    .expect("start a reactor");
    let (tx, rx) = std::sync::mpsc::channel();
    rt.handles()[0].spawn(move || async move {
        let out = catch(std::panic::AssertUnwindSafe(f())).await;
        let _ = tx.send(out);
    });
    let out = rx
        .recv_timeout(std::time::Duration::from_secs(600))
        .expect("test body finished in time");
    rt.shutdown();
    match out {
        Ok(v) => v,
        Err(msg) => panic!("{msg}"),
    }
}

/// Runs a future, turning a panic inside it into an error message (so the reactor thread
/// survives and the test thread reports it).
async fn catch<T, F: std::future::Future<Output = T>>(
    f: std::panic::AssertUnwindSafe<F>,
) -> Result<T, String> {
    let mut f = std::pin::pin!(f.0);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(e) => std::task::Poll::Ready(Err(e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into()))),
        }
    })
    .await
}
