//! The connection of one endpoint in one worker to its broker: a task on the hub's tokio
//! runtime that connects, declares the exchange, and publishes what the sink hands it with
//! publisher confirms, keeping up to [`MAX_IN_FLIGHT`] unconfirmed.
//!
//! The sink and the task share [`Progress`]: the offsets handed over and not yet confirmed,
//! in order, and the error that ended the task. Confirms arrive in publish order on one
//! channel, so the oldest unconfirmed offset is what the endpoint may commit below.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::mpsc;
use weir_core::AmqpOptions;

/// Unconfirmed messages per endpoint and worker.
pub const MAX_IN_FLIGHT: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One message for the broker.
pub struct Outgoing {
    pub offset: u64,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

#[derive(Default)]
struct State {
    /// Offsets handed to the task and not yet confirmed, oldest first.
    unconfirmed: VecDeque<u64>,
    confirmed: u64,
    error: Option<String>,
}

/// What the sink and the task both see.
#[derive(Default)]
pub struct Progress(Mutex<State>);

impl Progress {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        self.0.lock().ok().map(|mut s| f(&mut s))
    }

    /// The oldest offset not yet confirmed.
    pub fn oldest_unconfirmed(&self) -> Option<u64> {
        self.with(|s| s.unconfirmed.front().copied()).flatten()
    }

    pub fn unconfirmed(&self) -> usize {
        self.with(|s| s.unconfirmed.len()).unwrap_or(0)
    }

    /// Messages the broker has confirmed so far.
    pub fn confirmed(&self) -> u64 {
        self.with(|s| s.confirmed).unwrap_or(0)
    }

    /// Why the task ended, if it did.
    pub fn error(&self) -> Option<String> {
        self.with(|s| s.error.clone()).flatten()
    }

    fn fail(&self, e: String) {
        self.with(|s| s.error.get_or_insert(e).clone());
    }
}

/// The sink's handle on the task; dropping it ends the task.
pub struct Link {
    tx: mpsc::Sender<Outgoing>,
    pub progress: Arc<Progress>,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Broker(String),
    #[error("the broker confirmed nothing for {0:?}")]
    Stalled(Duration),
}

impl Link {
    /// Starts the task for `options` on `rt`.
    pub fn open(rt: &tokio::runtime::Handle, options: AmqpOptions, endpoint: String) -> Link {
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let progress = Arc::new(Progress::default());
        let p = Arc::clone(&progress);
        rt.spawn(async move {
            if let Err(e) = run(&options, rx, &p).await {
                tracing::debug!(endpoint, url = %options.url, error = %e, "amqp link ended");
                p.fail(e);
            }
        });
        Link { tx, progress }
    }

    /// Hands `m` to the task, waiting (this is the worker thread) while it has
    /// [`MAX_IN_FLIGHT`] messages unconfirmed, at most `patience`.
    pub fn send(&self, m: Outgoing, patience: Duration) -> Result<(), LinkError> {
        let offset = m.offset;
        self.progress.with(|s| s.unconfirmed.push_back(offset));
        let mut m = m;
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(e) = self.progress.error() {
                return Err(LinkError::Broker(e));
            }
            match self.tx.try_send(m) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(LinkError::Broker(
                        self.progress
                            .error()
                            .unwrap_or_else(|| "the broker connection closed".into()),
                    ));
                }
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(LinkError::Stalled(patience));
                    }
                    m = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Waits up to `limit` until everything handed over is confirmed (or the link failed).
    pub fn drain(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.progress.unconfirmed() > 0
            && self.progress.error().is_none()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

async fn connect(options: &AmqpOptions) -> Result<(Connection, lapin::Channel), String> {
    let conn = tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(options.url.expose(), ConnectionProperties::default()),
    )
    .await
    .map_err(|_| {
        format!(
            "cannot connect to {} within {CONNECT_TIMEOUT:?}",
            options.url
        )
    })?
    .map_err(|e| format!("cannot connect to {}: {e}", options.url))?;
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| format!("cannot open a channel: {e}"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| format!("the broker refused publisher confirms: {e}"))?;
    ch.exchange_declare(
        options.exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|e| {
        format!(
            "cannot declare the durable topic exchange {:?} (does it exist with another type?): {e}",
            options.exchange
        )
    })?;
    Ok((conn, ch))
}

fn check(confirmation: Confirmation, exchange: &str) -> Result<(), String> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => Err(format!(
            "exchange {exchange:?} has no queue bound for routing key {:?} (the message was returned); bind a queue, or set mandatory = false to let the broker drop such messages",
            returned.routing_key.as_str()
        )),
        Confirmation::Nack(None) => Err("the broker refused a message (nack)".into()),
        Confirmation::NotRequested => Ok(()),
    }
}

async fn run(
    options: &AmqpOptions,
    mut rx: mpsc::Receiver<Outgoing>,
    progress: &Progress,
) -> Result<(), String> {
    let (conn, ch) = connect(options).await?;
    let mut pending: VecDeque<PublisherConfirm> = VecDeque::new();
    let publish = BasicPublishOptions {
        mandatory: options.mandatory,
        ..BasicPublishOptions::default()
    };
    loop {
        tokio::select! {
            confirmed = async { pending.front_mut().expect("guarded by the condition").await }, if !pending.is_empty() => {
                pending.pop_front();
                let c = confirmed.map_err(|e| format!("lost the broker before it confirmed: {e}"))?;
                check(c, &options.exchange)?;
                progress.with(|s| {
                    s.unconfirmed.pop_front();
                    s.confirmed += 1;
                });
            }
            next = rx.recv(), if pending.len() < MAX_IN_FLIGHT => {
                let Some(m) = next else { break };
                let confirm = ch
                    .basic_publish(
                        options.exchange.as_str().into(),
                        m.routing_key.as_str().into(),
                        publish,
                        &m.body,
                        m.properties,
                    )
                    .await
                    .map_err(|e| format!("publishing to {:?} failed: {e}", options.exchange))?;
                pending.push_back(confirm);
            }
        }
    }
    let _ = conn.close(200, "weir endpoint closed".into()).await;
    Ok(())
}
