//! The dispatcher: takes due events off the queue and runs them, at most
//! `max_in_flight` at once, then decides each event's fate as AWS does:
//!
//! - success: the `OnSuccess` destination (if any) gets the invocation record; done.
//! - function error (error, timeout, crash, OOM): retried after `retry_delays[n]` (AWS:
//!   about 1 then 2 minutes) up to `MaximumRetryAttempts` (default 2); then the
//!   `OnFailure` destination gets the record (`RetriesExhausted`) and the function's
//!   dead-letter target the original event.
//! - throttled, or a system error: retried with backoff (from `throttle_delay`, doubling
//!   with the event's age, at most `throttle_delay_max`), not counted as an attempt,
//!   until the event is older than `MaximumEventAgeInSeconds`; then `EventAgeExceeded`.
//! - the function is gone: dropped with a warning.
//!
//! A destination that is a function gets the record as a new asynchronous event through
//! the same queue, stored before the original is acknowledged, so a crash in between
//! delivers it again rather than losing it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

use crate::config::{ConfigStore, EventInvokeConfig};
use crate::{BoxFuture, EventQueue, QueuedEvent, now_ms};

/// How one attempt ended.
#[derive(Debug, Clone)]
pub enum Attempt {
    /// The function ran; `function_error` is `Some("Unhandled")` when it failed.
    Finished {
        executed_version: String,
        payload: Bytes,
        function_error: Option<String>,
    },
    /// No capacity now (concurrency limit, host memory): try again later.
    Throttled,
    /// The function (or version) no longer exists.
    FunctionGone,
    /// Lamina failed to run it; retried like a throttle.
    SystemError(String),
}

/// What runs an event: the invoker, as seen from the queue.
pub trait EventInvoker: Send + Sync + std::fmt::Debug + 'static {
    fn invoke(&self, event: &QueuedEvent) -> BoxFuture<'_, Attempt>;
    /// The function's `DeadLetterConfig.TargetArn`, if it has one.
    fn dead_letter_target(&self, event: &QueuedEvent) -> BoxFuture<'_, Option<String>>;
    /// The qualified ARN of the function version the event is for.
    fn function_arn(&self, event: &QueuedEvent) -> String;
    /// A fresh request id for an event the dispatcher creates (a destination's).
    fn new_request_id(&self) -> String;
}

#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// The delay before the first, second, ... retry after a function error.
    pub retry_delays: Vec<Duration>,
    pub throttle_delay: Duration,
    pub throttle_delay_max: Duration,
    /// Attempts running at once, whatever the backlog (the engine's concurrency limits
    /// apply on top).
    pub max_in_flight: usize,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            retry_delays: vec![Duration::from_secs(60), Duration::from_secs(120)],
            throttle_delay: Duration::from_secs(1),
            throttle_delay_max: Duration::from_secs(300),
            max_in_flight: 1000,
        }
    }
}

#[derive(Debug)]
pub struct Dispatcher {
    queue: Arc<dyn EventQueue>,
    configs: Arc<ConfigStore>,
    invoker: Arc<dyn EventInvoker>,
    settings: DispatchSettings,
    /// Set by [`Dispatcher::stop`]: nothing new starts, and outcomes of attempts still
    /// running are not recorded (their events stay stored and run again at the next start).
    stopped: AtomicBool,
    stop: Notify,
}

/// `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]` → (name, qualifier).
pub fn parse_function_arn(arn: &str) -> Option<(String, Option<String>)> {
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", _, "lambda", _, _, "function", name] if !name.is_empty() => {
            Some(((*name).to_owned(), None))
        }
        ["arn", _, "lambda", _, _, "function", name, qualifier] if !name.is_empty() => {
            Some(((*name).to_owned(), Some((*qualifier).to_owned())))
        }
        _ => None,
    }
}

/// AWS's timestamp of a destination record: `2019-11-14T18:16:05.568Z`.
fn record_timestamp() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

fn as_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The record a destination receives (AWS's "invocation record", version 1.0).
/// `response` is (executed version, payload, function error) of the last attempt, absent
/// when the function never ran.
pub fn invocation_record(
    event: &QueuedEvent,
    function_arn: &str,
    condition: &str,
    response: Option<(&str, &Bytes, Option<&str>)>,
) -> Value {
    let mut record = json!({
        "version": "1.0",
        "timestamp": record_timestamp(),
        "requestContext": {
            "requestId": event.id,
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": event.attempts,
        },
        "requestPayload": as_json(&event.payload),
    });
    if let Some((executed_version, payload, function_error)) = response {
        let mut context = json!({ "statusCode": 200, "executedVersion": executed_version });
        if let Some(error) = function_error {
            context["functionError"] = Value::String(error.to_owned());
        }
        record["responseContext"] = context;
        record["responsePayload"] = as_json(payload);
    }
    record
}

impl Dispatcher {
    pub fn new(
        queue: Arc<dyn EventQueue>,
        configs: Arc<ConfigStore>,
        invoker: Arc<dyn EventInvoker>,
        settings: DispatchSettings,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            queue,
            configs,
            invoker,
            settings,
            stopped: AtomicBool::new(false),
            stop: Notify::new(),
        })
    }

    /// Stops dispatching before the engine shuts down: an attempt cut short by the
    /// shutdown must not count as a function error. Then flushes the queue's writes.
    pub async fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop.notify_one();
        self.queue.flush().await;
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Runs until the runtime stops.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let dispatcher = self.clone();
        tokio::spawn(async move { dispatcher.run().await })
    }

    async fn run(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(self.settings.max_in_flight.max(1)));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let event = tokio::select! {
                event = self.queue.next_due() => event,
                _ = self.stop.notified() => return,
            };
            if self.stopped() {
                // Leased but not started: it stays stored and runs at the next start.
                return;
            }
            let dispatcher = self.clone();
            tokio::spawn(async move {
                dispatcher.attempt(event).await;
                drop(slot);
            });
        }
    }

    fn config(&self, event: &QueuedEvent) -> Option<EventInvokeConfig> {
        let qualifier = event.qualifier.as_deref().unwrap_or("$LATEST");
        self.configs.get(&event.function_name, qualifier)
    }

    async fn attempt(&self, mut event: QueuedEvent) {
        let config = self.config(&event);
        let max_age_ms = i64::from(EventInvokeConfig::event_age_seconds(config.as_ref())) * 1000;
        let age_ms = now_ms() - event.enqueued_at_ms;
        if age_ms > max_age_ms {
            tracing::warn!(request_id = %event.id, function = %event.function_name, age_ms,
                "asynchronous event discarded: older than its maximum event age");
            self.failed(event, config.as_ref(), "EventAgeExceeded", None)
                .await;
            return;
        }
        let attempt = self.invoker.invoke(&event).await;
        if self.stopped() {
            return;
        }
        match attempt {
            Attempt::Finished {
                executed_version,
                payload,
                function_error,
            } => {
                event.attempts += 1;
                match function_error {
                    None => {
                        let mut delivered = true;
                        if let Some(target) = config.as_ref().and_then(|c| c.on_success.clone()) {
                            let arn = self.invoker.function_arn(&event);
                            let record = invocation_record(
                                &event,
                                &arn,
                                "Success",
                                Some((&executed_version, &payload, None)),
                            );
                            delivered = self
                                .deliver(&event, &target, record.to_string().into())
                                .await;
                        }
                        self.settle(event, delivered);
                    }
                    Some(error) => {
                        let retries = EventInvokeConfig::retry_attempts(config.as_ref());
                        if event.attempts <= retries {
                            let delays = &self.settings.retry_delays;
                            let delay = delays
                                .get(event.attempts as usize - 1)
                                .or(delays.last())
                                .copied()
                                .unwrap_or_default();
                            tracing::info!(request_id = %event.id, function = %event.function_name,
                                attempt = event.attempts, retry_in_ms = delay.as_millis() as u64,
                                "asynchronous invocation failed; retrying");
                            event.due_at_ms = now_ms() + delay.as_millis() as i64;
                            self.queue.retry_at(event, true);
                        } else {
                            let response = (executed_version, payload, error);
                            self.failed(
                                event,
                                config.as_ref(),
                                "RetriesExhausted",
                                Some((&response.0, &response.1, Some(&response.2))),
                            )
                            .await;
                        }
                    }
                }
            }
            Attempt::Throttled | Attempt::SystemError(_) => {
                // Backoff grows with the event's age: 1 s, then roughly doubling, capped.
                let initial = self.settings.throttle_delay.as_millis() as i64;
                let cap = self.settings.throttle_delay_max.as_millis() as i64;
                let delay = (age_ms / 2).clamp(initial, cap.max(initial));
                event.due_at_ms = now_ms() + delay;
                self.queue.retry_at(event, false);
            }
            Attempt::FunctionGone => {
                tracing::warn!(request_id = %event.id, function = %event.function_name,
                    "asynchronous event dropped: the function no longer exists");
                self.queue.ack(&event.id);
            }
        }
    }

    /// The event will not run again: on-failure destination, dead-letter target, ack.
    async fn failed(
        &self,
        event: QueuedEvent,
        config: Option<&EventInvokeConfig>,
        condition: &str,
        response: Option<(&str, &Bytes, Option<&str>)>,
    ) {
        let mut delivered = true;
        if let Some(target) = config.and_then(|c| c.on_failure.clone()) {
            let arn = self.invoker.function_arn(&event);
            let record = invocation_record(&event, &arn, condition, response);
            delivered &= self
                .deliver(&event, &target, record.to_string().into())
                .await;
        }
        if let Some(target) = self.invoker.dead_letter_target(&event).await {
            // A dead-letter queue receives the event itself, as AWS's SQS and SNS DLQs do.
            delivered &= self.deliver(&event, &target, event.payload.clone()).await;
        }
        self.settle(event, delivered);
    }

    /// Queues a record (or the event) for a destination; false if it could not be stored,
    /// in which case the event must not be acknowledged.
    async fn deliver(&self, event: &QueuedEvent, target: &str, payload: Bytes) -> bool {
        let Some((name, qualifier)) = parse_function_arn(target) else {
            tracing::warn!(request_id = %event.id, %target,
                "destination skipped: only Lamina functions are supported as destinations");
            return true;
        };
        let delivery = QueuedEvent::new(
            self.invoker.new_request_id(),
            name,
            qualifier,
            payload,
            None,
        );
        match self.queue.enqueue(delivery).await {
            Ok(_) => true,
            Err(error) => {
                tracing::error!(request_id = %event.id, %target, %error,
                    "could not queue the event for its destination; it will run again");
                false
            }
        }
    }

    /// Acknowledges an event whose deliveries were stored; otherwise keeps it, to run
    /// (and deliver) again later — at least once, never lost.
    fn settle(&self, mut event: QueuedEvent, delivered: bool) {
        if delivered {
            self.queue.ack(&event.id);
        } else {
            event.due_at_ms = now_ms() + self.settings.throttle_delay.as_millis() as i64;
            self.queue.retry_at(event, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteQueue;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU64;

    /// Runs events by a script keyed on the function name; records what ran.
    #[derive(Debug, Default)]
    struct ScriptedInvoker {
        ran: Mutex<Vec<(String, u32, Bytes)>>,
        throttles_left: AtomicU64,
        ids: AtomicU64,
        dead_letter: Option<String>,
    }

    impl EventInvoker for ScriptedInvoker {
        fn invoke(&self, event: &QueuedEvent) -> BoxFuture<'_, Attempt> {
            let event = event.clone();
            Box::pin(async move {
                if self
                    .throttles_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return Attempt::Throttled;
                }
                self.ran.lock().unwrap().push((
                    event.function_name.clone(),
                    event.attempts,
                    event.payload.clone(),
                ));
                Attempt::Finished {
                    executed_version: "$LATEST".to_owned(),
                    payload: Bytes::from_static(b"{\"ok\":1}"),
                    function_error: event
                        .function_name
                        .starts_with("failing")
                        .then(|| "Unhandled".to_owned()),
                }
            })
        }
        fn dead_letter_target(&self, _: &QueuedEvent) -> BoxFuture<'_, Option<String>> {
            Box::pin(async move { self.dead_letter.clone() })
        }
        fn function_arn(&self, event: &QueuedEvent) -> String {
            format!(
                "arn:aws:lambda:us-east-1:000000000000:function:{}:$LATEST",
                event.function_name
            )
        }
        fn new_request_id(&self) -> String {
            format!("gen-{}", self.ids.fetch_add(1, Ordering::SeqCst))
        }
    }

    fn setup(
        invoker: ScriptedInvoker,
    ) -> (
        tempfile::TempDir,
        Arc<SqliteQueue>,
        Arc<ConfigStore>,
        Arc<ScriptedInvoker>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(SqliteQueue::open(&dir.path().join("q.db")).unwrap());
        let configs = Arc::new(ConfigStore::open(&dir.path().join("q.db")).unwrap());
        let invoker = Arc::new(invoker);
        let settings = DispatchSettings {
            retry_delays: vec![Duration::from_millis(50), Duration::from_millis(100)],
            throttle_delay: Duration::from_millis(20),
            throttle_delay_max: Duration::from_millis(50),
            max_in_flight: 4,
        };
        Dispatcher::new(queue.clone(), configs.clone(), invoker.clone(), settings).spawn();
        (dir, queue, configs, invoker)
    }

    async fn wait_for(mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("condition not reached in 4 s");
    }

    fn event(function: &str) -> QueuedEvent {
        QueuedEvent::new(
            "req-1".to_owned(),
            function.to_owned(),
            None,
            Bytes::from_static(b"{\"n\":1}"),
            None,
        )
    }

    #[tokio::test]
    async fn failures_retry_then_reach_on_failure_and_dead_letter() {
        let (_dir, queue, configs, invoker) = setup(ScriptedInvoker {
            dead_letter: Some("arn:aws:lambda:us-east-1:000000000000:function:dlq".to_owned()),
            ..ScriptedInvoker::default()
        });
        configs
            .put(
                "failing",
                "$LATEST",
                &EventInvokeConfig {
                    maximum_retry_attempts: Some(1),
                    on_failure: Some(
                        "arn:aws:lambda:us-east-1:000000000000:function:sink".to_owned(),
                    ),
                    ..EventInvokeConfig::default()
                },
            )
            .unwrap();
        queue.enqueue(event("failing")).await.unwrap();
        wait_for(|| invoker.ran.lock().unwrap().len() == 4).await;
        let ran = invoker.ran.lock().unwrap().clone();
        let names: Vec<_> = ran.iter().map(|(n, a, _)| (n.as_str(), *a)).collect();
        assert_eq!(&names[..2], [("failing", 0), ("failing", 1)]);
        let sink = ran.iter().find(|(n, _, _)| n == "sink").unwrap();
        let record: Value = serde_json::from_slice(&sink.2).unwrap();
        assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(record["requestContext"]["approximateInvokeCount"], 2);
        assert_eq!(record["requestContext"]["requestId"], "req-1");
        assert_eq!(record["requestPayload"], json!({"n": 1}));
        assert_eq!(record["responseContext"]["functionError"], "Unhandled");
        let dlq = ran.iter().find(|(n, _, _)| n == "dlq").unwrap();
        assert_eq!(&dlq.2[..], b"{\"n\":1}");
        wait_for(|| queue.is_empty()).await;
    }

    #[tokio::test]
    async fn throttles_are_retried_without_counting_as_attempts() {
        let (_dir, queue, _configs, invoker) = setup(ScriptedInvoker {
            throttles_left: AtomicU64::new(3),
            ..ScriptedInvoker::default()
        });
        queue.enqueue(event("fine")).await.unwrap();
        wait_for(|| invoker.ran.lock().unwrap().len() == 1).await;
        assert_eq!(invoker.ran.lock().unwrap()[0].1, 0);
        wait_for(|| queue.is_empty()).await;
    }

    #[tokio::test]
    async fn events_older_than_their_maximum_age_are_not_run() {
        let (_dir, queue, configs, invoker) = setup(ScriptedInvoker::default());
        configs
            .put(
                "old",
                "$LATEST",
                &EventInvokeConfig {
                    maximum_event_age_in_seconds: Some(60),
                    on_failure: Some(
                        "arn:aws:lambda:us-east-1:000000000000:function:sink".to_owned(),
                    ),
                    ..EventInvokeConfig::default()
                },
            )
            .unwrap();
        let mut old = event("old");
        old.enqueued_at_ms -= 61_000;
        queue.enqueue(old).await.unwrap();
        wait_for(|| invoker.ran.lock().unwrap().len() == 1).await;
        let ran = invoker.ran.lock().unwrap().clone();
        assert_eq!(ran[0].0, "sink");
        let record: Value = serde_json::from_slice(&ran[0].2).unwrap();
        assert_eq!(record["requestContext"]["condition"], "EventAgeExceeded");
        assert_eq!(record["requestContext"]["approximateInvokeCount"], 0);
        assert!(record.get("responseContext").is_none());
    }

    #[test]
    fn function_arns_parse() {
        assert_eq!(
            parse_function_arn("arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST"),
            Some(("f".to_owned(), Some("$LATEST".to_owned())))
        );
        assert_eq!(
            parse_function_arn("arn:aws:lambda:us-east-1:000000000000:function:f"),
            Some(("f".to_owned(), None))
        );
        assert_eq!(
            parse_function_arn("arn:aws:sqs:us-east-1:000000000000:q"),
            None
        );
    }
}
