//! Hand-written JSON output of the API messages (no serde needed).
//!
//! Field names are those of the protobuf messages; integers are JSON numbers
//! (bytes and nanoseconds, exact).

use ballast_api::{Device, DeviceStats, EngineInfo, Export, LatencyBucket, OpStats, Pool, Volume};

/// A JSON string literal for `s`, quotes included.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Builds one JSON object, fields in insertion order.
#[derive(Debug, Default)]
pub struct Object {
    fields: Vec<(String, String)>,
}

impl Object {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a field whose value is already JSON text.
    pub fn raw(mut self, key: &str, json: String) -> Self {
        self.fields.push((key.to_owned(), json));
        self
    }

    /// Adds a string field.
    pub fn str(self, key: &str, value: &str) -> Self {
        self.raw(key, string(value))
    }

    /// Adds an unsigned integer field.
    pub fn num(self, key: &str, value: impl Into<u64>) -> Self {
        self.raw(key, value.into().to_string())
    }

    /// Adds a boolean field.
    pub fn bool(self, key: &str, value: bool) -> Self {
        self.raw(key, value.to_string())
    }

    /// The object as compact JSON text.
    pub fn build(self) -> String {
        let fields: Vec<String> = self
            .fields
            .into_iter()
            .map(|(k, v)| format!("{}:{v}", string(&k)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

/// A JSON array of already-rendered JSON values.
pub fn array(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(","))
}

/// `EngineInfo` as JSON.
pub fn info(i: &EngineInfo) -> String {
    Object::new()
        .str("version", &i.version)
        .num("cores", i.cores)
        .str("poll_mode", &i.poll_mode)
        .str("nbd_address", &i.nbd_address)
        .num("uptime_ms", i.uptime_ms)
        .str("nvmf_address", &i.nvmf_address)
        .build()
}

/// `Device` as JSON.
pub fn device(d: &Device) -> String {
    Object::new()
        .str("name", &d.name)
        .str("uri", &d.uri)
        .str("kind", &d.kind)
        .num("size_bytes", d.size_bytes)
        .num("block_size", d.block_size)
        .bool("read_only", d.read_only)
        .raw(
            "capabilities",
            array(d.capabilities.iter().map(|c| string(c))),
        )
        .build()
}

/// A device list as JSON: `{"devices":[...]}`.
pub fn devices(list: &[Device]) -> String {
    Object::new()
        .raw("devices", array(list.iter().map(device)))
        .build()
}

/// `Export` as JSON.
pub fn export(e: &Export) -> String {
    Object::new()
        .str("name", &e.name)
        .str("device", &e.device)
        .bool("read_only", e.read_only)
        .str("uri", &e.uri)
        .num("connections", e.connections)
        .str("protocol", &e.protocol)
        .build()
}

/// An export list as JSON: `{"exports":[...]}`.
pub fn exports(list: &[Export]) -> String {
    Object::new()
        .raw("exports", array(list.iter().map(export)))
        .build()
}

/// `NvmfSubsystem` as JSON.
pub fn subsystem(s: &ballast_api::NvmfSubsystem) -> String {
    Object::new()
        .str("nqn", &s.nqn)
        .str("uri", &s.uri)
        .raw(
            "allowed_hosts",
            array(s.allowed_hosts.iter().map(|h| string(h))),
        )
        .raw(
            "namespaces",
            array(s.namespaces.iter().map(|n| {
                Object::new()
                    .num("nsid", n.nsid)
                    .str("device", &n.device)
                    .bool("read_only", n.read_only)
                    .str("nguid", &n.nguid)
                    .build()
            })),
        )
        .raw(
            "controllers",
            array(s.controllers.iter().map(|c| {
                Object::new()
                    .num("cntlid", c.cntlid)
                    .str("hostnqn", &c.hostnqn)
                    .str("hostid", &c.hostid)
                    .num("queues", c.queues)
                    .build()
            })),
        )
        .build()
}

/// A subsystem list as JSON: `{"subsystems":[...]}`.
pub fn subsystems(list: &[ballast_api::NvmfSubsystem]) -> String {
    Object::new()
        .raw("subsystems", array(list.iter().map(subsystem)))
        .build()
}

/// `Pool` as JSON.
pub fn pool(p: &Pool) -> String {
    Object::new()
        .str("name", &p.name)
        .str("device", &p.device)
        .num("capacity_bytes", p.capacity_bytes)
        .num("used_bytes", p.used_bytes)
        .num("committed_bytes", p.committed_bytes)
        .num("volumes", p.volumes)
        .num("snapshots", p.snapshots)
        .str("state", &p.state)
        .str("reason", &p.reason)
        .num("cluster_size", p.cluster_size)
        .raw("devices", array(p.devices.iter().map(|d| string(d))))
        .raw("labels", {
            let mut keys: Vec<&String> = p.labels.keys().collect();
            keys.sort();
            keys.into_iter()
                .fold(Object::new(), |o, k| o.str(k, &p.labels[k]))
                .build()
        })
        .build()
}

/// `Nexus` as JSON.
pub fn nexus(n: &ballast_api::Nexus) -> String {
    let children = n.children.iter().map(|c| {
        Object::new()
            .str("name", &c.name)
            .str("state", &c.state)
            .str("reason", &c.reason)
            .num("rebuild_done_bytes", c.rebuild_done_bytes)
            .num("rebuild_total_bytes", c.rebuild_total_bytes)
            .bool("partial", c.partial)
            .build()
    });
    Object::new()
        .str("name", &n.name)
        .num("size_bytes", n.size_bytes)
        .str("state", &n.state)
        .raw("children", array(children))
        .str("log_device", &n.log_device)
        .num("dirty_regions", n.dirty_regions)
        .num("region_size_bytes", n.region_size_bytes)
        .raw("healthy", array(n.healthy.iter().map(|h| string(h))))
        .bool("persist_health", n.persist_health)
        .num("health_generation", n.health_generation)
        .num("health_acked", n.health_acked)
        .build()
}

/// A nexus list as JSON: `{"nexuses":[...]}`.
pub fn nexuses(list: &[ballast_api::Nexus]) -> String {
    Object::new()
        .raw("nexuses", array(list.iter().map(nexus)))
        .build()
}

/// A pool list as JSON: `{"pools":[...]}`.
pub fn pools(list: &[Pool]) -> String {
    Object::new()
        .raw("pools", array(list.iter().map(pool)))
        .build()
}

/// `Volume` as JSON.
pub fn volume(v: &Volume) -> String {
    Object::new()
        .str("pool", &v.pool)
        .str("name", &v.name)
        .str("device", &v.device)
        .num("size_bytes", v.size_bytes)
        .num("allocated_bytes", v.allocated_bytes)
        .bool("snapshot", v.snapshot)
        .bool("thin", v.thin)
        .str("origin", &v.origin)
        .build()
}

/// A volume list as JSON: `{"volumes":[...]}`.
pub fn volumes(list: &[Volume]) -> String {
    Object::new()
        .raw("volumes", array(list.iter().map(volume)))
        .build()
}

/// A pool check as JSON: `{"pool":"p","problems":[...]}`.
pub fn check(pool: &str, problems: &[String]) -> String {
    Object::new()
        .str("pool", pool)
        .raw("problems", array(problems.iter().map(|p| string(p))))
        .build()
}

fn op_stats(o: Option<&OpStats>) -> String {
    let o = o.copied().unwrap_or_default();
    Object::new()
        .num("ops", o.ops)
        .num("bytes", o.bytes)
        .num("errors", o.errors)
        .build()
}

fn bucket(b: &LatencyBucket) -> String {
    Object::new()
        .num("le_ns", b.le_ns)
        .num("count", b.count)
        .build()
}

/// `DeviceStats` as JSON.
pub fn device_stats(s: &DeviceStats) -> String {
    Object::new()
        .str("device", &s.device)
        .raw("read", op_stats(s.read.as_ref()))
        .raw("write", op_stats(s.write.as_ref()))
        .raw("flush", op_stats(s.flush.as_ref()))
        .raw("unmap", op_stats(s.unmap.as_ref()))
        .raw("write_zeroes", op_stats(s.write_zeroes.as_ref()))
        .num("errors", s.errors)
        .raw("latency", array(s.latency.iter().map(bucket)))
        .num("latency_mean_ns", s.latency_mean_ns)
        .num("latency_p50_ns", s.latency_p50_ns)
        .num("latency_p99_ns", s.latency_p99_ns)
        .build()
}

/// Statistics of several devices as JSON: `{"devices":[...]}`.
pub fn stats(list: &[DeviceStats]) -> String {
    Object::new()
        .raw("devices", array(list.iter().map(device_stats)))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings() {
        assert_eq!(string("a\"b\\c\n\u{1}é"), r#""a\"b\\c\n\u0001é""#);
    }

    #[test]
    fn device_json() {
        let d = Device {
            name: "d0".into(),
            uri: "malloc:///d0?size=1GiB".into(),
            kind: "malloc".into(),
            size_bytes: 1 << 30,
            block_size: 512,
            read_only: false,
            capabilities: vec!["flush".into(), "unmap".into()],
        };
        assert_eq!(
            devices(&[d]),
            r#"{"devices":[{"name":"d0","uri":"malloc:///d0?size=1GiB","kind":"malloc","size_bytes":1073741824,"block_size":512,"read_only":false,"capabilities":["flush","unmap"]}]}"#
        );
        assert_eq!(devices(&[]), r#"{"devices":[]}"#);
    }

    #[test]
    fn pool_and_volume_json() {
        let p = Pool {
            name: "p".into(),
            device: "d".into(),
            capacity_bytes: 10,
            state: "online".into(),
            devices: vec!["d".into(), "e".into()],
            labels: [("zone".into(), "a".into()), ("tier".into(), "ssd".into())].into(),
            ..Default::default()
        };
        assert_eq!(
            pools(&[p]),
            r#"{"pools":[{"name":"p","device":"d","capacity_bytes":10,"used_bytes":0,"committed_bytes":0,"volumes":0,"snapshots":0,"state":"online","reason":"","cluster_size":0,"devices":["d","e"],"labels":{"tier":"ssd","zone":"a"}}]}"#
        );
        let v = Volume {
            pool: "p".into(),
            name: "v".into(),
            device: "p/v".into(),
            size_bytes: 4096,
            thin: true,
            ..Default::default()
        };
        assert_eq!(
            volume(&v),
            r#"{"pool":"p","name":"v","device":"p/v","size_bytes":4096,"allocated_bytes":0,"snapshot":false,"thin":true,"origin":""}"#
        );
        assert_eq!(
            check("p", &["x".into()]),
            r#"{"pool":"p","problems":["x"]}"#
        );
    }

    #[test]
    fn stats_json_fills_missing_op_stats() {
        let s = DeviceStats {
            device: "d".into(),
            read: Some(OpStats {
                ops: 2,
                bytes: 8192,
                errors: 1,
            }),
            latency: vec![LatencyBucket {
                le_ns: 1000,
                count: 2,
            }],
            latency_p99_ns: 900,
            ..Default::default()
        };
        let j = device_stats(&s);
        assert!(j.starts_with(r#"{"device":"d","read":{"ops":2,"bytes":8192,"errors":1},"write":{"ops":0,"bytes":0,"errors":0},"#));
        assert!(j.contains(r#""latency":[{"le_ns":1000,"count":2}]"#));
        assert!(j.ends_with(r#""latency_p99_ns":900}"#));
    }
}
