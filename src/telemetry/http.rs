//! `/metrics`, `/healthz` (the process runs) and `/readyz` (the model is loaded and the next hop
//! answers), on `metrics.listen`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// Answers whether mailgrip can take mail now; `Err` says why not.
pub type Health = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Brings gauges that are read from disk (the review queue) up to date before a scrape.
pub type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Health,
    refresh: Refresh,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        let refresh = refresh.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let ready = ready.clone();
                let refresh = refresh.clone();
                async move { Ok::<_, Infallible>(route(req.uri().path(), &metrics, &ready, &refresh).await) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn route(path: &str, metrics: &Metrics, ready: &Health, refresh: &Refresh) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" => {
            refresh(metrics);
            (StatusCode::OK, "text/plain; version=0.0.4", metrics.render())
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => match ready().await {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_string()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {why}\n")),
        },
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
    };
    Response::builder().status(status).header("content-type", ctype).body(Full::new(Bytes::from(body))).unwrap()
}
