//! Durable enqueue throughput and enqueue-to-start latency of the SQLite queue.
//!
//! `cargo bench -p lamina-queue --bench enqueue`. Phase 1: 64 concurrent producers
//! enqueue 20,000 events (each awaited until its batch's fsync): durable enqueues/s.
//! Phase 2: the dispatcher with a no-op invoker (no function runs: this isolates the
//! queue) drains a steady stream; the time from calling `enqueue` to the invoker being
//! called, p50/p99, and events completed/s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lamina_queue::{
    Attempt, BoxFuture, ConfigStore, DispatchSettings, Dispatcher, EventInvoker, EventQueue,
    QueuedEvent, SqliteQueue,
};

#[derive(Debug, Default)]
struct NoopInvoker {
    started: Mutex<HashMap<String, Instant>>,
}

impl EventInvoker for NoopInvoker {
    fn invoke(&self, event: &QueuedEvent) -> BoxFuture<'_, Attempt> {
        self.started
            .lock()
            .unwrap()
            .insert(event.id.clone(), Instant::now());
        Box::pin(async {
            Attempt::Finished {
                executed_version: "$LATEST".to_owned(),
                payload: Bytes::from_static(b"null"),
                function_error: None,
            }
        })
    }
    fn dead_letter_target(&self, _: &QueuedEvent) -> BoxFuture<'_, Option<String>> {
        Box::pin(async { None })
    }
    fn function_arn(&self, _: &QueuedEvent) -> String {
        String::new()
    }
    fn new_request_id(&self) -> String {
        String::new()
    }
}

fn event(id: String) -> QueuedEvent {
    QueuedEvent::new(
        id,
        "noop".to_owned(),
        None,
        Bytes::from_static(b"{\"action\":\"noop\"}"),
        None,
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    runtime.block_on(async {
        // Phase 1: enqueue throughput, nothing consuming.
        let queue = Arc::new(SqliteQueue::open(&dir.path().join("bench.db")).unwrap());
        const EVENTS: usize = 20_000;
        const PRODUCERS: usize = 64;
        let started = Instant::now();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let queue = queue.clone();
                tokio::spawn(async move {
                    for i in 0..EVENTS / PRODUCERS {
                        queue.enqueue(event(format!("a-{p}-{i}"))).await.unwrap();
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.await.unwrap();
        }
        let elapsed = started.elapsed();
        let done = EVENTS / PRODUCERS * PRODUCERS;
        println!(
            "durable enqueues: {done} in {:.2} s = {:.0} events/s ({PRODUCERS} producers, \
             each enqueue awaited until its batch's fsync)",
            elapsed.as_secs_f64(),
            done as f64 / elapsed.as_secs_f64()
        );
        drop(queue);

        // Phase 2: dispatch latency on a fresh queue.
        let queue = Arc::new(SqliteQueue::open(&dir.path().join("dispatch.db")).unwrap());
        let configs = Arc::new(ConfigStore::open(&dir.path().join("dispatch.db")).unwrap());
        let invoker = Arc::new(NoopInvoker::default());
        Dispatcher::new(
            queue.clone(),
            configs,
            invoker.clone(),
            DispatchSettings::default(),
        )
        .spawn();
        const STREAM: usize = 5_000;
        let enqueued: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let started = Instant::now();
        let producers: Vec<_> = (0..8)
            .map(|p| {
                let queue = queue.clone();
                let enqueued = enqueued.clone();
                tokio::spawn(async move {
                    for i in 0..STREAM / 8 {
                        let id = format!("d-{p}-{i}");
                        enqueued.lock().unwrap().insert(id.clone(), Instant::now());
                        queue.enqueue(event(id)).await.unwrap();
                        // A steady stream, not a burst: ~8 x 1,000 events/s offered.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.await.unwrap();
        }
        while !queue.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = started.elapsed();
        let enqueued = enqueued.lock().unwrap();
        let started_at = invoker.started.lock().unwrap();
        let mut latencies: Vec<Duration> = enqueued
            .iter()
            .filter_map(|(id, at)| started_at.get(id).map(|s| s.duration_since(*at)))
            .collect();
        latencies.sort();
        println!(
            "dispatch: {} events completed in {:.2} s = {:.0} events/s; enqueue-to-start \
             p50 {:.2} ms, p99 {:.2} ms (includes the fsync; no-op invoker)",
            latencies.len(),
            elapsed.as_secs_f64(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
            percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        );
    });
}
