//! An ADS service that turns every proxy away with an explanation, for ports where a proxy
//! that dialled them by mistake should learn where to go (global's DP server and KDS ports), instead of
//! gRPC's bare "Operation is not implemented or not supported".

use meshzone_xds::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use meshzone_xds::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Refuses every ADS stream with `FAILED_PRECONDITION` and its reason, which kuma-dp reports
/// and stops on.
#[derive(Debug, Clone)]
pub struct AdsRefuser {
    reason: String,
}

impl AdsRefuser {
    pub fn new(reason: impl Into<String>) -> Self {
        AdsRefuser {
            reason: reason.into(),
        }
    }

    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<AdsRefuser> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsRefuser {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::failed_precondition(self.reason.clone()))
    }

    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::failed_precondition(self.reason.clone()))
    }
}
