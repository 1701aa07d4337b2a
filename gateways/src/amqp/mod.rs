//! The AMQP gateway: consumes device messages from RabbitMQ queues, so fleets and systems
//! that already publish into RabbitMQ feed Weir's pipeline unchanged.
//!
//! A message is a device's when it carries the device's SAS token in the `authorization`
//! header, or (with `trust_user_id`) when RabbitMQ's validated `user_id` names a
//! registered, enabled device (`message.rs`). It is acknowledged to RabbitMQ only once it
//! is durable in the ingest log, so a crash or a lost broker connection redelivers it
//! (Weir's duplicate detection drops the repeat by its message id). A refused message is
//! published to the dead-letter exchange with the reason in the `weir-refused-reason`
//! header, confirmed, and only then acknowledged: nothing is dropped silently.

pub mod message;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Confirmation, Connection, ConnectionProperties, ExchangeKind};
use weir_core::SecretUrl;

use crate::context::{Gateway, GatewayContext};
use crate::metrics::ProtocolMetrics;
use message::{REASON, Rules, to_event};

/// The `protocol` label of this gateway's metrics and the `$weirGateway` of its events.
pub const PROTOCOL: &str = "amqp";

/// The dead-letter exchange (and queue bound to it) when none is configured.
pub const DEFAULT_DEAD_LETTER: &str = "weir.refused";

/// Checks an `amqp://` or `amqps://` URL.
pub fn check_url(url: &str) -> Result<(), String> {
    use std::str::FromStr;
    lapin::uri::AMQPUri::from_str(url).map(|_| ())
}

/// `[amqp]` in weir.toml.
#[derive(Debug, Clone)]
pub struct AmqpGatewayConfig {
    pub url: SecretUrl,
    /// Durable queues to consume, declared when missing.
    pub queues: Vec<String>,
    /// Unacknowledged messages RabbitMQ may hand over at once (per queue consumer).
    pub prefetch: u16,
    pub trust_user_id: bool,
    /// Where refused messages go; the default is declared with a durable queue of the
    /// same name bound to it, so refused messages are kept until someone looks.
    pub dead_letter_exchange: String,
    pub max_message_bytes: usize,
}

/// The gateway: consumes until shutdown, reconnecting with backoff.
pub struct AmqpGateway {
    pub config: AmqpGatewayConfig,
}

impl Gateway for AmqpGateway {
    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn run(
        self: Box<Self>,
        ctx: Arc<GatewayContext>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let metrics = ctx.metrics.protocol(PROTOCOL);
            let mut shutdown = ctx.shutdown.clone();
            let mut attempts = 0u32;
            loop {
                let result = tokio::select! {
                    _ = shutdown.changed() => return,
                    r = consume(&ctx, &self.config, &metrics) => r,
                };
                attempts += 1;
                let wait = Duration::from_secs(1 << attempts.min(5).saturating_sub(1))
                    .min(Duration::from_secs(30));
                match result {
                    Ok(()) => return,
                    Err(e) => {
                        if attempts == 1 || attempts.is_power_of_two() {
                            tracing::warn!(url = %self.config.url, error = %e, retry_in = ?wait, "AMQP gateway disconnected; retrying");
                        }
                    }
                }
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                if attempts > 16 {
                    attempts = 5;
                }
            }
        })
    }
}

async fn declare(ch: &lapin::Channel, cfg: &AmqpGatewayConfig) -> Result<(), String> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for q in &cfg.queues {
        ch.queue_declare(q.as_str().into(), durable, FieldTable::default())
            .await
            .map_err(|e| format!("cannot declare the durable queue {q:?} (if it exists with other arguments, declare it yourself): {e}"))?;
    }
    let x = cfg.dead_letter_exchange.as_str();
    ch.exchange_declare(
        x.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|e| format!("cannot declare the dead-letter exchange {x:?}: {e}"))?;
    if x == DEFAULT_DEAD_LETTER {
        ch.queue_declare(x.into(), durable, FieldTable::default())
            .await
            .map_err(|e| format!("cannot declare the queue {x:?}: {e}"))?;
        ch.queue_bind(
            x.into(),
            x.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("cannot bind the queue {x:?}: {e}"))?;
    }
    Ok(())
}

/// One connection's life: consume every configured queue until shutdown or an error.
async fn consume(
    ctx: &GatewayContext,
    cfg: &AmqpGatewayConfig,
    metrics: &ProtocolMetrics,
) -> Result<(), String> {
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(cfg.url.expose(), ConnectionProperties::default()),
    )
    .await
    .map_err(|_| format!("cannot connect to {} within 10 s", cfg.url))?
    .map_err(|e| format!("cannot connect to {}: {e}", cfg.url))?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    declare(&ch, cfg).await?;
    ch.basic_qos(cfg.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let dead = conn.create_channel().await.map_err(|e| e.to_string())?;
    dead.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumers = Vec::new();
    for (i, q) in cfg.queues.iter().enumerate() {
        let c = ch
            .basic_consume(
                q.as_str().into(),
                format!("weir-{i}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot consume {q:?}: {e}"))?;
        consumers.push(c);
    }
    tracing::info!(url = %cfg.url, queues = ?cfg.queues, "AMQP gateway consuming");
    metrics.opened();
    let _counted = Counted(metrics);
    let mut all = futures_util::stream::select_all(consumers);
    let rules = Rules {
        hub: &ctx.hub_name,
        directory: &*ctx.directory,
        trust_user_id: cfg.trust_user_id,
        max_message_bytes: cfg.max_message_bytes,
    };
    let mut batch = Vec::new();
    let mut acked = Acked::Through(0);
    loop {
        let Some(first) = all.next().await else {
            return Err("the broker cancelled the consumers".into());
        };
        batch.push(first.map_err(|e| e.to_string())?);
        // Whatever else has already arrived goes in the same batch: one log sync for all.
        while batch.len() < usize::from(cfg.prefetch.max(1)) {
            match futures_util::FutureExt::now_or_never(all.next()) {
                Some(Some(d)) => batch.push(d.map_err(|e| e.to_string())?),
                _ => break,
            }
        }
        let b = std::mem::take(&mut batch);
        handle(ctx, &rules, &dead, cfg, metrics, b, &mut acked).await?;
    }
}

/// Whether one multiple acknowledgement may cover a batch: RabbitMQ numbers a channel's
/// deliveries 1, 2, 3, ..., so a batch that continues exactly where the acknowledged ones
/// end can be acknowledged up to its last tag at once. Anything else (deliveries of
/// several queues interleaved) is acknowledged one by one from then on.
enum Acked {
    Through(u64),
    OneByOne,
}

struct Counted<'a>(&'a ProtocolMetrics);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// Ingests the accepted messages of `batch` and acknowledges each once durable; sends the
/// refused ones to the dead-letter exchange first.
async fn handle(
    ctx: &GatewayContext,
    rules: &Rules<'_>,
    dead: &lapin::Channel,
    cfg: &AmqpGatewayConfig,
    metrics: &ProtocolMetrics,
    batch: Vec<lapin::message::Delivery>,
    acked: &mut Acked,
) -> Result<(), String> {
    let now = weir_core::time::now_ms() / 1000;
    let mut tags: Vec<u64> = batch.iter().map(|d| d.delivery_tag).collect();
    tags.sort_unstable();
    let contiguous = match (&*acked, tags.first(), tags.last()) {
        (Acked::Through(t), Some(&lo), Some(&hi)) => {
            lo == t + 1 && hi - lo + 1 == tags.len() as u64
        }
        _ => false,
    };
    let mut pending = Vec::new();
    for d in batch {
        match to_event(&d.properties, &d.data, d.redelivered, rules, now) {
            Ok(event) => {
                let device = event.device_id.clone();
                let stored = match ctx.ingest.ingest(&device, vec![event]).await {
                    Ok(ack) => ack,
                    Err(e) => {
                        let _ = d
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..BasicNackOptions::default()
                            })
                            .await;
                        return Err(format!("the ingest log refused a message: {e}"));
                    }
                };
                pending.push((d, stored));
            }
            Err(reason) => {
                ProtocolMetrics::inc(&metrics.protocol_errors, 1);
                if let Some(suppressed) = ctx.admission.refusals.allow() {
                    tracing::warn!(routing_key = %d.routing_key, %reason, suppressed, "AMQP message refused; sent to the dead-letter exchange");
                }
                dead_letter(dead, cfg, &d, &reason).await?;
                d.ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    let mut durable = Vec::new();
    for (d, stored) in pending {
        match stored.await {
            Ok(()) => {
                ProtocolMetrics::inc(&metrics.messages_in, 1);
                ProtocolMetrics::inc(&metrics.bytes_in, d.data.len() as u64);
                durable.push(d);
            }
            Err(e) => {
                // Nothing of this batch is acknowledged: RabbitMQ delivers it all again,
                // and what did reach the log is dropped then as a repeat.
                let _ = d
                    .nack(BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    })
                    .await;
                return Err(format!("a message could not be made durable: {e}"));
            }
        }
    }
    if contiguous {
        // Every delivery of this channel up to the batch's last tag is durable (or was
        // refused and acknowledged on its own): one acknowledgement covers them all.
        if let Some(d) = durable.iter().max_by_key(|d| d.delivery_tag) {
            d.ack(BasicAckOptions { multiple: true })
                .await
                .map_err(|e| e.to_string())?;
        }
        *acked = Acked::Through(tags.last().copied().unwrap_or_default());
    } else {
        *acked = Acked::OneByOne;
        for d in durable {
            d.ack(BasicAckOptions::default())
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Publishes `d` unchanged to the dead-letter exchange, with the reason in a header, and
/// waits for the broker's confirm.
async fn dead_letter(
    ch: &lapin::Channel,
    cfg: &AmqpGatewayConfig,
    d: &lapin::message::Delivery,
    reason: &str,
) -> Result<(), String> {
    let mut headers = FieldTable::default();
    if let Some(h) = d.properties.headers() {
        // The token is a credential: it does not travel on.
        for (k, v) in h.inner() {
            if !k.as_str().eq_ignore_ascii_case(message::AUTHORIZATION) {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    headers.insert(
        ShortString::from(REASON.to_owned()),
        AMQPValue::LongString(LongString::from(reason.as_bytes().to_vec())),
    );
    let props = d.properties.clone().with_headers(headers);
    let confirm = ch
        .basic_publish(
            cfg.dead_letter_exchange.as_str().into(),
            d.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &d.data,
            props,
        )
        .await
        .map_err(|e| format!("cannot dead-letter a refused message: {e}"))?
        .await
        .map_err(|e| format!("cannot dead-letter a refused message: {e}"))?;
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        _ => Err(format!(
            "the dead-letter exchange {:?} did not take a refused message (is a queue bound to it?); it stays in its queue",
            cfg.dead_letter_exchange
        )),
    }
}
