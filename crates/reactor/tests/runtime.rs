//! The runtime against the real kernel: files, sockets, timers, mailboxes, in every mode.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use reactor::{Config, IoBuf, PollMode, Runtime, TcpListener, op, sync};

fn runtime(mode: PollMode, cores: usize) -> Runtime {
    Runtime::start(Config {
        cores,
        mode,
        pin: false,
        registered_buffers: 8,
        ..Config::default()
    })
    .expect("start runtime")
}

fn block_on<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send) -> T {
    // A minimal blocking executor for the test thread: park until woken.
    let thread = std::thread::current();
    struct W(std::thread::Thread);
    impl std::task::Wake for W {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark()
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(W(thread)));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

#[test]
fn file_io_through_the_ring_in_every_mode() {
    for mode in [PollMode::Poll, PollMode::Interrupt, PollMode::Adaptive] {
        let rt = runtime(mode, 2);
        let dir = std::env::temp_dir().join(format!("reactor-test-{}-{mode}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        std::fs::File::create(&dir)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let path = dir.clone();
        let out = block_on(rt.handles()[1].call(move || async move {
            use std::os::fd::AsRawFd;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut data = reactor::alloc_buf(8192);
            assert!(data.registration().is_some(), "pool buffer expected");
            for (i, b) in data.iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            let (r, _) = op::write_at(f.as_raw_fd(), 4096, data, 0).await;
            assert_eq!(r.unwrap(), 8192);
            op::fsync(f.as_raw_fd(), true).await.unwrap();
            let (r, back) = op::read_at(f.as_raw_fd(), 4096, IoBuf::zeroed(8192)).await;
            assert_eq!(r.unwrap(), 8192);
            back.to_vec()
        }));
        assert!(out.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        let mut raw = vec![0u8; 8192];
        let mut f = std::fs::File::open(&dir).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(4096)).unwrap();
        f.read_exact(&mut raw).unwrap();
        assert_eq!(raw, out);
        std::fs::remove_file(&dir).unwrap();
        rt.shutdown();
    }
}

#[test]
fn timers_and_timeouts() {
    let rt = runtime(PollMode::Interrupt, 1);
    let took = block_on(rt.handles()[0].call(|| async {
        let t = Instant::now();
        reactor::sleep(Duration::from_millis(30)).await;
        let slept = t.elapsed();
        let never = sync::timeout(
            Duration::from_millis(20),
            reactor::sleep(Duration::from_secs(60)),
        )
        .await;
        assert!(never.is_none());
        slept
    }));
    assert!(
        took >= Duration::from_millis(30) && took < Duration::from_secs(2),
        "{took:?}"
    );
    rt.shutdown();
}

#[test]
fn user_space_deadlines_wake_a_sleeping_reactor_and_cost_no_ring_operation() {
    for mode in [PollMode::Interrupt, PollMode::Adaptive] {
        let rt = runtime(mode, 1);
        let (took, ops_during, fired_early) = block_on(rt.handles()[0].call(|| async {
            // Many deadlines that do not fire (the I/O wins): nothing goes through the ring (a
            // ring timeout would be submitted and cancelled, and complete).
            let stats = reactor::current_handle().expect("on a reactor");
            let completions = || {
                stats
                    .stats()
                    .completions
                    .load(std::sync::atomic::Ordering::Relaxed)
            };
            // Let the loop reap the doorbell that delivered this call first.
            reactor::Deadline::after(Duration::from_millis(5)).await;
            let before = completions();
            let mut left = Vec::new();
            for _ in 0..100 {
                left.push(sync::timeout(Duration::from_secs(60), async { 7 }).await);
            }
            // Deadlines in order, one of them dropped before it is due.
            let t = Instant::now();
            let dropped = reactor::Deadline::after(Duration::from_millis(10));
            drop(dropped);
            let never =
                sync::timeout(Duration::from_millis(40), std::future::pending::<()>()).await;
            assert!(never.is_none());
            assert!(left.iter().all(|v| *v == Some(7)));
            let took = t.elapsed();
            let ops_during = completions() - before;
            (took, ops_during, took < Duration::from_millis(40))
        }));
        assert_eq!(ops_during, 0, "{mode:?}");
        assert!(!fired_early, "{mode:?}: fired after {took:?}");
        assert!(took < Duration::from_secs(2), "{mode:?}: {took:?}");
        rt.shutdown();
    }
}

#[test]
fn mailbox_wakes_a_sleeping_reactor() {
    let rt = runtime(PollMode::Interrupt, 2);
    std::thread::sleep(Duration::from_millis(50)); // both reactors are asleep by now
    for i in 0..200u32 {
        let v = block_on(rt.handles()[(i % 2) as usize].call(move || async move { i * 2 }));
        assert_eq!(v, i * 2);
    }
    let sleeps = rt.handles()[0]
        .stats()
        .sleeps
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(sleeps > 0);
    rt.shutdown();
}

#[test]
fn tcp_echo_and_cross_reactor_handoff() {
    let rt = runtime(PollMode::Adaptive, 2);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handles = rt.handles().to_vec();
    rt.handles()[0].spawn(move || async move {
        let l = TcpListener::from_std(listener);
        for i in 0..4 {
            let (s, _) = l.accept().await.unwrap();
            // Serve each connection on the other reactor.
            handles[(i + 1) % 2].spawn(move || async move {
                let mut buf = IoBuf::with_capacity(4096);
                loop {
                    let (r, b) = s.recv(buf, 0).await;
                    buf = b;
                    match r {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            let reply = IoBuf::from_slice(&buf);
                            let (r, _) = s.send_all(reply).await;
                            r.unwrap();
                            buf.set_len(0);
                        }
                    }
                }
            });
        }
    });
    for i in 0..4 {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let msg = format!("hello {i}");
        c.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    rt.shutdown();
}

#[test]
fn idle_interrupt_reactor_uses_no_cpu() {
    let rt = runtime(PollMode::Adaptive, 1);
    let h = rt.handles()[0].clone();
    block_on(h.call(|| async {}));
    std::thread::sleep(Duration::from_millis(100));
    let before = h
        .stats()
        .busy_iterations
        .load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    let after = h
        .stats()
        .busy_iterations
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(before, after, "an idle adaptive reactor must be asleep");
    rt.shutdown();
}

#[test]
fn tcp_connect_through_the_ring() {
    let rt = runtime(PollMode::Interrupt, 1);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        s.write_all(&b).unwrap();
    });
    // A port nobody listens on (bound, then closed).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let h = rt.handles()[0].clone();
    let (echo, refused, clone_ok) = block_on(h.call(move || async move {
        let s = reactor::TcpStream::connect_async(addr).await.unwrap();
        let (r, _) = s.send_all(b"hello".to_vec()).await;
        r.unwrap();
        let (r, b) = s.recv_exact(IoBuf::with_capacity(5), 0, 5).await;
        r.unwrap();
        let refused = reactor::TcpStream::connect_async(closed).await.err();
        // A clone shuts the original down: its pending receive sees the end of the stream.
        let other = s.try_clone().unwrap();
        let (done, _) = sync::select(
            async { (true, s.recv(IoBuf::with_capacity(16), 0).await.0.ok()) },
            async {
                other.shutdown();
                op::sleep(Duration::from_secs(5)).await;
                (false, None)
            },
        )
        .await;
        (b.to_vec(), refused.map(|e| e.kind()), done)
    }));
    assert_eq!(echo, b"hello");
    assert_eq!(refused, Some(std::io::ErrorKind::ConnectionRefused));
    assert!(clone_ok, "shutdown through a clone ends a pending receive");
    server.join().unwrap();
    rt.shutdown();
}

#[test]
fn shutdown_cancels_pending_operations_promptly() {
    let rt = runtime(PollMode::Interrupt, 1);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    rt.handles()[0].spawn(|| async { op::sleep(Duration::from_secs(60)).await });
    rt.handles()[0].spawn(move || async move {
        let s = reactor::TcpStream::connect_async(addr).await.unwrap();
        let _ = s.recv(IoBuf::with_capacity(64), 0).await;
    });
    let _peer = l.accept().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    rt.shutdown();
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "shutdown took {:?}: the cancellations were not submitted",
        t0.elapsed()
    );
}

#[test]
fn local_mutex_wakes_every_waiter_when_one_task_waits_twice() {
    // Two lock futures of one task are polled on each other's wake-ups; an unlock must never
    // be spent on a stale entry while a waiter of another task sleeps.
    let rt = runtime(PollMode::Interrupt, 1);
    let done = block_on(rt.handles()[0].call(|| async {
        let m = std::rc::Rc::new(sync::LocalMutex::new(0u32));
        let g = m.lock().await;
        let m2 = m.clone();
        let other = reactor::spawn_local(async move {
            op::sleep(Duration::from_millis(10)).await;
            let mut g = m2.lock().await;
            *g += 100;
        });
        let hold = |m: std::rc::Rc<sync::LocalMutex<u32>>, ms| async move {
            let mut g = m.lock().await;
            op::sleep(Duration::from_millis(ms)).await;
            *g += 1;
        };
        let mut a = std::pin::pin!(hold(m.clone(), 1));
        let mut b = std::pin::pin!(hold(m.clone(), 1));
        let release = async {
            op::sleep(Duration::from_millis(20)).await;
            drop(g);
        };
        let mut release = std::pin::pin!(release);
        // Wakes the task (and so polls both waiting lock futures again) a few times while
        // the lock is held, before the other task queues up.
        let mut ticker = std::pin::pin!(async {
            for _ in 0..4 {
                op::sleep(Duration::from_millis(1)).await;
            }
        });
        let (mut da, mut db, mut dr, mut dt) = (false, false, false, false);
        std::future::poll_fn(|cx| {
            use std::task::Poll;
            if !dt {
                dt = ticker.as_mut().poll(cx).is_ready();
            }
            if !dr {
                dr = release.as_mut().poll(cx).is_ready();
            }
            if !da {
                da = a.as_mut().poll(cx).is_ready();
            }
            if !db {
                db = b.as_mut().poll(cx).is_ready();
            }
            if da && db {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        sync::timeout(Duration::from_secs(2), other).await.is_some() && *m.lock().await == 102
    }));
    assert!(done, "a waiter of another task was never woken");
    rt.shutdown();
}

#[test]
fn spawn_now_runs_the_task_before_returning_and_its_ring_operation_goes_in_first() {
    // A task spawned with spawn_now is polled inside the call: its first step (here a
    // sleep's timeout queued on the ring) happens before the caller goes on, and wake-ups
    // later finish it like any task, also when it wakes itself during that first poll.
    let rt = runtime(PollMode::Interrupt, 1);
    let order = block_on(rt.handles()[0].call(|| async {
        use std::cell::RefCell;
        use std::rc::Rc;
        let log = Rc::new(RefCell::new(Vec::new()));
        let l = log.clone();
        reactor::spawn_now(async move {
            l.borrow_mut().push("first step");
            op::sleep(Duration::from_millis(5)).await;
            l.borrow_mut().push("woken");
        });
        log.borrow_mut().push("caller");
        let l = log.clone();
        reactor::spawn_now(async move {
            // Wakes itself in its first poll: polled again from the run queue.
            let mut once = false;
            std::future::poll_fn(|cx| {
                if once {
                    return std::task::Poll::Ready(());
                }
                once = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            })
            .await;
            l.borrow_mut().push("self-woken");
        });
        // A spawn_now task that finishes in its first poll leaves nothing behind.
        let l = log.clone();
        reactor::spawn_now(async move { l.borrow_mut().push("done at once") });
        op::sleep(Duration::from_millis(30)).await;
        log.borrow().clone()
    }));
    assert_eq!(
        order,
        [
            "first step",
            "caller",
            "done at once",
            "self-woken",
            "woken"
        ]
    );
    rt.shutdown();
}
