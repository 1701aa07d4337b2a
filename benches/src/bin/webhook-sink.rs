//! The receiver `benches/endpoints.sh` points a webhook endpoint at:
//!
//!   webhook-sink PORT COUNT SECS
//!
//! Answers every POST with 204 and counts its NDJSON lines; once COUNT lines have arrived
//! (or SECS have passed) it prints a JSON line with the count and the rate from the first
//! request to the last line, and exits. It checks nothing else: the e2e tests verify
//! signatures and contents, this only has to be faster than what it measures.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::{Mutex, Notify};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Counter {
    lines: AtomicU64,
    target: u64,
    first: Mutex<Option<Instant>>,
    done: Notify,
}

async fn handle(
    c: Arc<Counter>,
    req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    c.first.lock().await.get_or_insert_with(Instant::now);
    let n = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().iter().filter(|&&b| b == b'\n').count() as u64,
        Err(_) => 0,
    };
    if c.lines.fetch_add(n, Ordering::Relaxed) + n >= c.target {
        c.done.notify_one();
    }
    let mut r = Response::new(Empty::new());
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, port, count, secs] = &args[..] else {
        return Err("usage: webhook-sink PORT COUNT SECS".into());
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>()?)).await?;
    let counter = Arc::new(Counter {
        lines: AtomicU64::new(0),
        target: count.parse()?,
        first: Mutex::new(None),
        done: Notify::new(),
    });
    let c = Arc::clone(&counter);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(Arc::clone(&c), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(secs.parse()?), counter.done.notified()).await;
    let lines = counter.lines.load(Ordering::Relaxed);
    let seconds = counter
        .first
        .lock()
        .await
        .map_or(0.0, |t| t.elapsed().as_secs_f64());
    let rate = if seconds > 0.0 {
        lines as f64 / seconds
    } else {
        0.0
    };
    println!("{{\"lines\": {lines}, \"seconds\": {seconds:.3}, \"rate\": {rate:.0}}}");
    Ok(())
}
