//! Small helpers every user of the runtime needs once: waiting for a future on an ordinary
//! thread, decoding the percent escapes of a URI component, and the process's descriptor
//! limit (which bounds how many connections servers may hold).

use std::sync::Arc;

/// Runs `f` to completion on the calling thread, parking it between polls. For threads that
/// are not reactors (the engine's management thread, `main`, tests) waiting on a future that
/// a reactor completes, e.g. [`ReactorHandle::call`](crate::ReactorHandle::call). Never call
/// it on a reactor thread: the reactor would park and the future would never complete.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark()
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Why [`percent_decode`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PercentDecodeError {
    /// A `%` not followed by two hexadecimal digits, at this byte offset.
    BadEscape(usize),
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

impl std::fmt::Display for PercentDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PercentDecodeError::BadEscape(at) => {
                write!(f, "bad percent escape at byte {at}")
            }
            PercentDecodeError::NotUtf8 => f.write_str("not UTF-8 once decoded"),
        }
    }
}

impl std::error::Error for PercentDecodeError {}

/// Decodes the `%XX` escapes of a URI component (RFC 3986 section 2.1; either case of hex
/// digit). Everything else is taken as it is (`+` stays `+`).
pub fn percent_decode(s: &str) -> Result<String, PercentDecodeError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
            match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(PercentDecodeError::BadEscape(i)),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PercentDecodeError::NotUtf8)
}

/// The process's soft and hard limits on open descriptors (`RLIMIT_NOFILE`).
pub fn fd_limits() -> std::io::Result<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((rl.rlim_cur, rl.rlim_max))
}

/// Raises the soft descriptor limit to the hard one (what servers conventionally do: the
/// soft limit is often 1024 for compatibility with `select`, which nothing here uses).
/// Returns the soft limit in force afterwards.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let (cur, max) = fd_limits()?;
    if cur >= max {
        return Ok(cur);
    }
    let rl = libc::rlimit {
        rlim_cur: max,
        rlim_max: max,
    };
    // SAFETY: setrlimit reads one rlimit from the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        return Ok(cur);
    }
    Ok(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decode_decodes_escapes_in_either_case_and_keeps_the_rest() {
        assert_eq!(percent_decode("a%2Fb%2fc+d").unwrap(), "a/b/c+d");
        assert_eq!(percent_decode("").unwrap(), "");
        assert_eq!(percent_decode("%C3%A9").unwrap(), "é");
    }

    #[test]
    fn percent_decode_refuses_short_or_non_hex_escapes_and_non_utf8() {
        assert_eq!(percent_decode("ab%"), Err(PercentDecodeError::BadEscape(2)));
        assert_eq!(percent_decode("%4"), Err(PercentDecodeError::BadEscape(0)));
        assert_eq!(
            percent_decode("x%zz"),
            Err(PercentDecodeError::BadEscape(1))
        );
        // A multi-byte character right after '%' is not an escape (and must not panic).
        assert_eq!(percent_decode("%é1"), Err(PercentDecodeError::BadEscape(0)));
        assert_eq!(percent_decode("%ff"), Err(PercentDecodeError::NotUtf8));
    }

    #[test]
    fn block_on_waits_for_a_future_completed_by_another_thread() {
        let (tx, rx) = crate::sync::oneshot::<u32>();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tx.send(7);
        });
        assert_eq!(block_on(rx), Some(7));
        t.join().unwrap();
    }
}
