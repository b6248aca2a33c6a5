//! A device under another name: a pool volume as engine device `POOL/VOLUME` (exports and
//! statistics know devices by their names). Everything else is the inner device's
//! ([`blockdev::Layer`] forwards it).

use blockdev::{BlockDevice, Device};

pub(crate) struct Named {
    name: String,
    inner: Device,
}

impl Named {
    pub(crate) fn new(name: &str, inner: Device) -> Named {
        Named {
            name: name.to_string(),
            inner,
        }
    }
}

impl std::fmt::Debug for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Named").field("name", &self.name).finish()
    }
}

impl blockdev::Layer for Named {
    fn inner(&self) -> &dyn BlockDevice {
        &*self.inner
    }
    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use blockdev::uring::{OpenFlags, UringDevice};

    use super::*;

    /// It used to forward neither `refresh_size` nor the reservations by hand; as a layer it
    /// cannot forget a method.
    #[test]
    fn a_named_device_sees_its_file_grow_underneath() {
        let dir = std::env::temp_dir().join(format!("ballast-named-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("grow.img");
        let file = UringDevice::open(
            "file",
            &path,
            &OpenFlags {
                read_only: false,
                size: Some(1 << 20),
                direct: false,
            },
        )
        .unwrap();
        let named = Named::new("pool/vol", Arc::new(file));
        assert_eq!((named.name(), named.kind()), ("pool/vol", "uring"));
        assert_eq!(named.geometry().size(), 1 << 20);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        assert_eq!(named.refresh_size().unwrap().size(), 4 << 20);
        assert_eq!(named.geometry().size(), 4 << 20);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
