//! The HTTP plumbing every role shares, in three parts: [`server`] (binding listeners,
//! serving a router until shutdown, `/health`, `/ready`, `/metrics` and the layers on every
//! router), [`client`] (the client used to reach other nodes) and [`body`] (answers and
//! streamed bodies); [`flush`] holds an aborted answer until what came before it is sent.

pub mod body;
pub mod client;
pub mod flush;
#[cfg(feature = "pprof")]
pub mod pprof;
pub mod server;

pub use body::*;
pub use client::*;
pub use flush::frame_body;
pub use server::*;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::watch;

    use crate::metrics::Metrics;

    #[tokio::test]
    async fn ready_turns_503_when_shutdown_begins_and_requests_are_counted() {
        let metrics = Metrics::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (_all_tx, all_rx) = watch::channel(false);
        let router = instrument(
            common_routes("store", Arc::clone(&metrics), stop_rx, None),
            Arc::clone(&metrics),
        );
        let listener = bind("api", "127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, router, all_rx));
        let c = client();
        let get = |path: &str| {
            let url = format!("http://{addr}{path}");
            let c = c.clone();
            async move {
                let (status, body) = call(
                    &c,
                    hyper::Method::GET,
                    &url,
                    empty_body(),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
                (status.as_u16(), body_text(body).await.unwrap())
            }
        };
        assert_eq!(
            get("/ready").await,
            (200, "{\"ready\":true,\"role\":\"store\"}\n".into())
        );
        stop_tx.send(true).unwrap();
        assert_eq!(get("/ready").await.0, 503);
        let (status, body) = get("/health").await;
        assert_eq!((status, body.contains("\"ready\":false")), (200, true));
        let (_, text) = get("/metrics").await;
        assert!(
            text.contains(
                "oklog_api_request_duration_seconds_count{method=\"GET\",path=\"/ready\",status_code=\"503\"} 1"
            ),
            "{text}"
        );
    }
}
