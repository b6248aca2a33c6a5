//! Opening devices by URI: each scheme goes to the crate that owns it.
//!
//! | scheme | opened by |
//! |---|---|
//! | `malloc://`, `uring://`, `file://`, an absolute path | [`blockdev::open_uri`] (local backends) |
//! | `nvmf://` | [`initiator_nvme::open_uri`], probing the controller on a reactor of the engine's |
//! | `nbd://`, `nbd+unix://` | [`initiator_nbd::open_uri`] (a blocking probe on the calling thread) |
//!
//! Call it off the reactors: the remote openers block until the target answered (bounded by
//! their connect timeouts).

use blockdev::uri::{self, OpenError};
use blockdev::{Device, open_uri};
use reactor::ReactorHandle;

/// Opens `uri` as device `name`; remote devices are probed on reactor `probe_on`.
pub fn open(name: &str, uri: &str, probe_on: &ReactorHandle) -> Result<Device, OpenError> {
    match uri::split(uri).map(|p| p.scheme) {
        Some("nvmf") => initiator_nvme::open_uri(name, uri, probe_on),
        Some("nbd" | "nbd+unix") => initiator_nbd::open_uri(name, uri),
        _ => open_uri(name, uri),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_reaches_its_parser() {
        let rt = reactor::Runtime::start(reactor::Config {
            cores: 1,
            pin: false,
            ..reactor::Config::default()
        })
        .expect("reactor");
        let h = &rt.handles()[0];
        let ram = open("r", "malloc:///r?size=1MiB", h).expect("malloc");
        assert_eq!(ram.geometry().size(), 1 << 20);
        for (uri, says) in [
            ("nvmf://h/nqn.x:y?bogus=1", "unknown parameter \"bogus\""),
            ("nbd://h/x?bogus=1", "unknown parameter \"bogus\""),
            ("nbd+unix:///x", "needs ?socket=PATH"),
            ("iscsi://h/x", "not a local device scheme"),
            ("relative/path", "expected SCHEME://"),
        ] {
            match open("x", uri, h) {
                Err(OpenError::Uri(e)) => assert!(e.to_string().contains(says), "{uri}: {e}"),
                Err(e) => panic!("{uri}: {e}"),
                Ok(_) => panic!("{uri} opened"),
            }
        }
        // A well-formed URI whose target is not there is a device error, not a URI error.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let Err(e) = open("x", &format!("nvmf://{closed}/nqn.x:y?timeout=500"), h) else {
            panic!("nothing listens there");
        };
        assert!(matches!(e, OpenError::Device { .. }), "{e}");
        rt.shutdown();
    }
}
