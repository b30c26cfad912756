//! The gRPC server over real loopback: health and reflection answer once the engine is up,
//! and a shutdown signal stops it cleanly.

use std::sync::Arc;

use anyhow::Result;
use shenguan::calendar::Calendars;
use shenguan::clock::VirtualClock;
use shenguan::definition::Registry;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[tokio::test]
async fn serves_health_and_reflection_then_stops_on_signal() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = shenguan::server::Options::new(
        shenguan::engine::Config::new(dir.path().join("s.db")),
        Arc::new(Registry::embedded()?),
        Calendars::embedded()?,
        Some(VirtualClock::new(0)),
    );
    let server = tokio::spawn(shenguan::server::run(options, listener, async {
        let _ = stopped.await;
    }));

    // The listener is bound before the server task runs, so connecting cannot race it.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await?
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        ServerReflectionClient::new(channel).server_reflection_info(tokio_stream::iter([request])).await?.into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.transpose()?.and_then(|r| r.message_response)
    else {
        anyhow::bail!("no list of services");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");

    stop.send(()).map_err(|()| anyhow::anyhow!("server gone"))?;
    server.await??;
    assert!(dir.path().join("s.db").is_file());
    Ok(())
}
