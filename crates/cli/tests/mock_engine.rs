//! End-to-end test of the CLI against an in-process mock of the engine's gRPC
//! server (the real engine is tested elsewhere). Also shows how a server is
//! run: `EngineServer` served on a current-thread runtime, no router needed.

use std::sync::Mutex;

use ballast_api::{
    CheckPoolReply, CheckPoolRequest, CreateDeviceRequest, CreateExportRequest, DestroyDeviceReply,
    DestroyDeviceRequest, DestroyExportReply, DestroyExportRequest, Device, DeviceStats,
    EngineInfo, EngineServer, EngineService, Export, GetInfoRequest, GetStatsReply,
    GetStatsRequest, LatencyBucket, ListDevicesReply, ListDevicesRequest, ListExportsReply,
    ListExportsRequest, OpStats,
};
use ballast_cli::{Cli, CliError};
use clap::Parser as _;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
struct Mock {
    devices: Mutex<Vec<Device>>,
}

fn not_found(name: &str) -> Status {
    Status::not_found(format!("device {name:?} not found"))
}

#[tonic::async_trait]
impl EngineService for Mock {
    async fn get_info(&self, _: Request<GetInfoRequest>) -> Result<Response<EngineInfo>, Status> {
        Ok(Response::new(EngineInfo {
            version: "9.9.9".into(),
            cores: 2,
            poll_mode: "adaptive".into(),
            nbd_address: "127.0.0.1:10809".into(),
            uptime_ms: 3_723_000,
            nvmf_address: String::new(),
        }))
    }

    async fn create_device(
        &self,
        req: Request<CreateDeviceRequest>,
    ) -> Result<Response<Device>, Status> {
        let req = req.into_inner();
        let dev = Device {
            name: req.name,
            uri: req.uri,
            kind: "malloc".into(),
            size_bytes: 1 << 30,
            block_size: 512,
            read_only: false,
            capabilities: vec!["flush".into()],
        };
        self.devices.lock().unwrap().push(dev.clone());
        Ok(Response::new(dev))
    }

    async fn destroy_device(
        &self,
        req: Request<DestroyDeviceRequest>,
    ) -> Result<Response<DestroyDeviceReply>, Status> {
        let name = req.into_inner().name;
        let mut devs = self.devices.lock().unwrap();
        let i = devs.iter().position(|d| d.name == name);
        let i = i.ok_or_else(|| not_found(&name))?;
        devs.remove(i);
        Ok(Response::new(DestroyDeviceReply {}))
    }

    async fn list_devices(
        &self,
        _: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesReply>, Status> {
        let devices = self.devices.lock().unwrap().clone();
        Ok(Response::new(ListDevicesReply { devices }))
    }

    async fn create_export(
        &self,
        req: Request<CreateExportRequest>,
    ) -> Result<Response<Export>, Status> {
        let req = req.into_inner();
        Ok(Response::new(Export {
            uri: format!("nbd://127.0.0.1:10809/{}", req.name),
            name: req.name,
            device: req.device,
            read_only: req.read_only,
            connections: 0,
            protocol: "nbd".into(),
        }))
    }

    async fn destroy_export(
        &self,
        _: Request<DestroyExportRequest>,
    ) -> Result<Response<DestroyExportReply>, Status> {
        Ok(Response::new(DestroyExportReply {}))
    }

    async fn list_exports(
        &self,
        _: Request<ListExportsRequest>,
    ) -> Result<Response<ListExportsReply>, Status> {
        Ok(Response::new(ListExportsReply { exports: vec![] }))
    }

    async fn get_stats(
        &self,
        req: Request<GetStatsRequest>,
    ) -> Result<Response<GetStatsReply>, Status> {
        let device = req.into_inner().device;
        if !device.is_empty() && device != "d0" {
            return Err(not_found(&device));
        }
        let stats = DeviceStats {
            device: "d0".into(),
            read: Some(OpStats {
                ops: 3,
                bytes: 12288,
                errors: 0,
            }),
            latency: vec![LatencyBucket {
                le_ns: 16_384,
                count: 3,
            }],
            latency_mean_ns: 9_000,
            latency_p50_ns: 8_000,
            latency_p99_ns: 16_000,
            ..Default::default()
        };
        Ok(Response::new(GetStatsReply {
            devices: vec![stats],
        }))
    }

    async fn check_pool(
        &self,
        req: Request<CheckPoolRequest>,
    ) -> Result<Response<CheckPoolReply>, Status> {
        let problems = match req.into_inner().name.as_str() {
            "good" => vec![],
            "bad" => vec!["physical cluster 7: 2 references, counted 1".into()],
            n => return Err(Status::not_found(format!("pool {n:?} not found"))),
        };
        Ok(Response::new(CheckPoolReply { problems }))
    }
}

async fn cli(url: &str, args: &[&str]) -> Result<String, CliError> {
    let argv = ["ballast", "--engine", url]
        .into_iter()
        .chain(args.iter().copied());
    ballast_cli::run(&Cli::try_parse_from(argv).unwrap()).await
}

#[test]
fn cli_against_mock_engine() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = format!("http://{}", incoming.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(Server::builder().serve_with_incoming_shutdown(
            EngineServer::new(Mock::default()),
            incoming,
            async {
                let _ = stopped.await;
            },
        ));

        let out = cli(&url, &["engine", "info"]).await.unwrap();
        assert!(out.contains("version       9.9.9\n"), "{out}");
        assert!(out.contains("uptime        1h 02m 03s\n"), "{out}");
        assert!(out.contains("nvmf address  -\n"), "{out}");

        let out = cli(&url, &["device", "create", "d0", "malloc:///d0?size=1GiB"])
            .await
            .unwrap();
        assert!(out.starts_with("NAME  KIND"), "{out}");
        assert!(out.contains("1.0 GiB"), "{out}");

        let out = cli(&url, &["-o", "json", "device", "list"]).await.unwrap();
        assert!(out.starts_with(r#"{"devices":[{"name":"d0","#), "{out}");

        let out = cli(&url, &["export", "create", "e0", "d0", "--read-only"])
            .await
            .unwrap();
        assert!(out.contains("nbd://127.0.0.1:10809/e0"), "{out}");
        assert_eq!(
            cli(&url, &["export", "list"]).await.unwrap(),
            "no exports\n"
        );

        let out = cli(&url, &["stats", "d0"]).await.unwrap();
        assert!(out.contains("p99 16.0 µs"), "{out}");
        let err = cli(&url, &["stats", "nope"]).await.unwrap_err();
        assert_eq!(err.to_string(), r#"device "nope" not found"#);

        assert_eq!(
            cli(&url, &["device", "destroy", "d0"]).await.unwrap(),
            "destroyed device \"d0\"\n"
        );
        let err = cli(&url, &["device", "destroy", "d0"]).await.unwrap_err();
        assert_eq!(err.to_string(), r#"device "d0" not found"#);

        // A pool check passes, or fails with exit status 1 and the problems on stdout.
        assert_eq!(
            cli(&url, &["pool", "check", "good"]).await.unwrap(),
            "pool good: clean\n"
        );
        match cli(&url, &["pool", "check", "bad"]).await.unwrap_err() {
            CliError::Exit {
                stdout,
                stderr,
                code,
            } => {
                assert_eq!(code, 1);
                assert_eq!(
                    stdout,
                    "pool bad: 1 problem(s):\n  physical cluster 7: 2 references, counted 1\n"
                );
                assert_eq!(stderr, "error: pool \"bad\": 1 problem(s) found\n");
            }
            other => panic!("unexpected {other:?}"),
        }
        match cli(&url, &["-o", "json", "pool", "check", "bad"])
            .await
            .unwrap_err()
        {
            CliError::Exit { stdout, code, .. } => {
                assert_eq!(code, 1);
                assert!(
                    stdout.starts_with(r#"{"pool":"bad","problems":["#),
                    "{stdout}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        // Methods the engine does not implement answer UNIMPLEMENTED.
        let err = cli(&url, &["pool", "list"]).await.unwrap_err();
        assert!(
            matches!(&err, CliError::Status(s) if s.code() == tonic::Code::Unimplemented),
            "{err:?}"
        );

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    });
}
