//! Management API of the Ballast engine: protobuf messages and gRPC client
//! and server, generated at build time from `proto/ballast/engine/v1/engine.proto`
//! (no system `protoc` needed).
//!
//! - Server side: implement [`EngineService`] (the generated
//!   `engine_server::Engine` trait) and serve it wrapped in [`EngineServer`],
//!   e.g. `tonic::transport::Server::builder().serve_with_shutdown(addr,
//!   EngineServer::new(svc), shutdown)`. Methods left unimplemented answer
//!   `UNIMPLEMENTED` (test doubles implement only what they need).
//! - Client side: [`EngineClient::connect`] with an `http://host:port` URL.

/// Generated code, one module per protobuf package.
pub mod engine {
    /// Package `ballast.engine.v1`.
    pub mod v1 {
        #![allow(missing_docs, missing_debug_implementations)]
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("ballast.engine.v1");
    }
}

pub use engine::v1::engine_client::EngineClient;
pub use engine::v1::engine_server::{Engine as EngineService, EngineServer};
pub use engine::v1::{
    AckNexusHealthReply, AckNexusHealthRequest, CreateNexusRequest, DestroyNexusReply,
    DestroyNexusRequest, ListNexusesReply, ListNexusesRequest, Nexus, NexusChild,
    NexusChildRequest, NexusHealthRecord, WatchNexusHealthRequest,
};
pub use engine::v1::{
    AddNvmfNamespaceRequest, CreateNvmfSubsystemRequest, DestroyNvmfSubsystemReply,
    DestroyNvmfSubsystemRequest, ListNvmfSubsystemsReply, ListNvmfSubsystemsRequest,
    NvmfController, NvmfHostRequest, NvmfNamespace, NvmfSubsystem, RemoveNvmfNamespaceRequest,
};
pub use engine::v1::{
    CheckPoolReply, CheckPoolRequest, CloneSnapshotRequest, ClosePoolReply, ClosePoolRequest,
    CreateDeviceRequest, CreateExportRequest, CreatePoolRequest, CreateVolumeRequest,
    DestroyDeviceReply, DestroyDeviceRequest, DestroyExportReply, DestroyExportRequest,
    DestroyPoolReply, DestroyPoolRequest, DestroyVolumeReply, DestroyVolumeRequest, Device,
    DeviceStats, EngineInfo, Export, GetInfoRequest, GetStatsReply, GetStatsRequest, GrowPoolReply,
    GrowPoolRequest, ImportPoolRequest, LatencyBucket, ListDevicesReply, ListDevicesRequest,
    ListExportsReply, ListExportsRequest, ListPoolsReply, ListPoolsRequest, ListVolumesReply,
    ListVolumesRequest, OpStats, Pool, ResizeVolumeRequest, RevertVolumeRequest,
    SetPoolLabelsRequest, SnapshotVolumeRequest, Volume,
};

/// TCP port the engine's management gRPC server listens on by default.
pub const DEFAULT_PORT: u16 = 10124;

/// URL clients use by default to reach a local engine.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:10124";

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn messages_round_trip() {
        let dev = Device {
            name: "d0".into(),
            uri: "malloc:///d0?size=1GiB".into(),
            kind: "malloc".into(),
            size_bytes: 1 << 30,
            block_size: 512,
            read_only: false,
            capabilities: vec!["flush".into()],
        };
        let bytes = dev.encode_to_vec();
        assert_eq!(Device::decode(bytes.as_slice()).unwrap(), dev);
    }

    #[test]
    fn default_endpoint_matches_port() {
        assert!(DEFAULT_ENDPOINT.ends_with(&format!(":{DEFAULT_PORT}")));
    }
}
