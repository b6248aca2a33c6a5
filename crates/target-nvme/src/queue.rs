//! What a command sees of the queue it arrived on ([`QueueCtx`]: the target, the address the
//! host reached, the queue's namespace cache) and what it returns ([`Reply`]). `conn` owns
//! the queue and runs commands through `cmd`; `cmd` knows only this module, not the
//! connection that feeds it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use proto_nvme::Status;
use reactor::IoBuf;

use crate::NvmfTarget;
use crate::subsys::{Namespace, Subsystem};

/// A command's completion.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: Status,
    pub(crate) dw0: u32,
    pub(crate) dw1: u32,
    /// Data for the host (C2HData), sent before the completion.
    pub(crate) data: Option<IoBuf>,
}

impl Reply {
    pub(crate) fn ok() -> Reply {
        Reply::status(Status::SUCCESS)
    }

    pub(crate) fn status(status: Status) -> Reply {
        Reply {
            status,
            dw0: 0,
            dw1: 0,
            data: None,
        }
    }

    pub(crate) fn dw0(dw0: u32) -> Reply {
        Reply { dw0, ..Reply::ok() }
    }

    pub(crate) fn data(data: IoBuf) -> Reply {
        Reply {
            data: Some(data),
            ..Reply::ok()
        }
    }
}

/// The queue's side of command execution, owned by the queue's reactor.
pub(crate) struct QueueCtx {
    pub(crate) target: Arc<NvmfTarget>,
    /// The local address of the connection (the one the host reached).
    pub(crate) local: Option<SocketAddr>,
    ns_cache: RefCell<NsCache>,
}

/// The subsystem's namespaces as one queue last saw them (at a generation of the
/// subsystem's namespace list), behind handles of this thread: looking one up per command
/// touches no atomic reference count.
#[derive(Default)]
struct NsCache {
    generation: u64,
    map: BTreeMap<u32, Rc<QueueNs>>,
}

/// A namespace as a queue holds it.
pub(crate) struct QueueNs(Arc<Namespace>);

impl std::ops::Deref for QueueNs {
    type Target = Namespace;
    fn deref(&self) -> &Namespace {
        &self.0
    }
}

impl QueueCtx {
    pub(crate) fn new(target: Arc<NvmfTarget>, local: Option<SocketAddr>) -> QueueCtx {
        QueueCtx {
            target,
            local,
            ns_cache: RefCell::new(NsCache::default()),
        }
    }

    /// The namespace `nsid` of the connected subsystem, through the per-queue cache.
    pub(crate) fn namespace(&self, subsys: &Subsystem, nsid: u32) -> Option<Rc<QueueNs>> {
        let gen_now = subsys.ns_generation();
        let mut c = self.ns_cache.borrow_mut();
        if c.generation != gen_now {
            let all = subsys.namespaces.read().expect("namespaces lock");
            c.map = all
                .iter()
                .map(|(&id, ns)| (id, Rc::new(QueueNs(ns.clone()))))
                .collect();
            c.generation = gen_now;
        }
        c.map.get(&nsid).cloned()
    }
}
