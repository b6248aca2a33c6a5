//! Running a future on a reactor from an ordinary thread: for tests and small tools.

use crate::{Config, PollMode, Runtime};

/// Runs the future built by `f` on a fresh one-reactor runtime (interrupt mode, not pinned)
/// and returns its output. A panic in the future panics here with its message; the runtime
/// is shut down either way. Gives up after `limit`.
pub fn run_on_reactor<T, F>(limit: std::time::Duration, f: impl FnOnce() -> F + Send + 'static) -> T
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
    let out = rx.recv_timeout(limit);
    rt.shutdown();
    match out {
        Ok(Ok(v)) => v,
        Ok(Err(msg)) => panic!("{msg}"),
        Err(_) => panic!("the future did not finish within {limit:?}"),
    }
}

/// Runs a future, turning a panic inside it into an error message (so the reactor thread
/// survives and the caller reports it).
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
