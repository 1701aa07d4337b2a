//! The bare publisher the AMQP sink is measured against, and the queue bookkeeping of
//! `benches/amqp.sh`:
//!
//!   amqp-bench setup URL EXCHANGE QUEUE       declare both, bind QUEUE to `#`, purge it
//!   amqp-bench publish URL EXCHANGE COUNT     publish COUNT messages with confirms
//!   amqp-bench feed URL QUEUE COUNT TOKEN     COUNT device messages (SAS header) into QUEUE
//!   amqp-bench wait URL QUEUE COUNT SECS      until QUEUE holds COUNT messages
//!   amqp-bench delete URL EXCHANGE QUEUE
//!
//! The bare publisher sends exactly what Weir's sink would for the same delivery (the
//! properties come from `weir_brokers::amqp::properties`), persistent, with at most 4096
//! unconfirmed, as the sink does; it prints a JSON line with its rate.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use weir_core::Delivery;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

async fn channel(url: &str) -> Res<(Connection, lapin::Channel)> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Keeps at most 4096 publishes unconfirmed, as Weir's sink does.
async fn window(
    pending: &mut VecDeque<lapin::PublisherConfirm>,
    c: lapin::PublisherConfirm,
) -> Res<()> {
    pending.push_back(c);
    if pending.len() >= 4096
        && let Some(c) = pending.pop_front()
    {
        c.await?;
    }
    Ok(())
}

/// Waits for the last confirms and prints the rate.
async fn finish(
    pending: VecDeque<lapin::PublisherConfirm>,
    count: u64,
    started: Instant,
) -> Res<()> {
    for c in pending {
        c.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        r#"{{"sent": {count}, "seconds": {secs:.3}, "rate": {:.0}}}"#,
        count as f64 / secs
    );
    Ok(())
}

async fn setup(url: &str, exchange: &str, queue: &str) -> Res<()> {
    let (_c, ch) = channel(url).await?;
    let opts = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        opts,
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(queue.into(), durable(), FieldTable::default())
        .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    Ok(())
}

async fn publish(url: &str, exchange: &str, count: u64) -> Res<()> {
    let (_c, ch) = channel(url).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let opts = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let started = Instant::now();
    let mut pending = VecDeque::new();
    for seq in 0..count {
        let mut event = weir_benches::event((seq % 100) as usize, seq);
        event.offset = seq;
        let key = format!("everything.{}", event.device_id);
        let d = Delivery {
            event: Arc::new(event),
            enrichments: Vec::new(),
            columns: Vec::new(),
            priority: 5,
            rules_version: Arc::from("bench"),
            route: Arc::from("everything"),
        };
        let props = weir_brokers::amqp::properties(&d);
        let c = ch
            .basic_publish(
                exchange.into(),
                key.as_str().into(),
                opts,
                &d.event.body,
                props,
            )
            .await?;
        window(&mut pending, c).await?;
    }
    finish(pending, count, started).await
}

/// Device messages for the AMQP gateway: the device's SAS token in `authorization`, a
/// message id each, persistent, into `queue` through the default exchange.
async fn feed(url: &str, queue: &str, count: u64, token: &str) -> Res<()> {
    use lapin::types::{AMQPValue, LongString, ShortString};
    let (_c, ch) = channel(url).await?;
    ch.queue_declare(queue.into(), durable(), FieldTable::default())
        .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let started = Instant::now();
    let mut pending = VecDeque::new();
    for seq in 0..count {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("authorization".to_owned()),
            AMQPValue::LongString(LongString::from(token.as_bytes().to_vec())),
        );
        headers.insert(
            ShortString::from("site".to_owned()),
            AMQPValue::LongString(LongString::from(b"plant-7".to_vec())),
        );
        let props = lapin::BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers)
            .with_message_id(ShortString::from(format!("m{seq}")))
            .with_content_type(ShortString::from("application/json".to_owned()));
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &weir_benches::body(seq),
                props,
            )
            .await?;
        window(&mut pending, c).await?;
    }
    finish(pending, count, started).await
}

async fn wait(url: &str, queue: &str, count: u32, secs: u64) -> Res<()> {
    let (_c, ch) = channel(url).await?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..durable()
                },
                FieldTable::default(),
            )
            .await?;
        if q.message_count() >= count || Instant::now() > deadline {
            println!("{}", q.message_count());
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn delete(url: &str, exchange: &str, queue: &str) -> Res<()> {
    let (_c, ch) = channel(url).await?;
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    ch.exchange_delete(exchange.into(), Default::default())
        .await?;
    Ok(())
}

fn main() -> Res<()> {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize| a.get(i).map(String::as_str).unwrap_or_default();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        match arg(1) {
            "setup" => setup(arg(2), arg(3), arg(4)).await,
            "publish" => publish(arg(2), arg(3), arg(4).parse()?).await,
            "feed" => feed(arg(2), arg(3), arg(4).parse()?, arg(5)).await,
            "wait" => wait(arg(2), arg(3), arg(4).parse()?, arg(5).parse()?).await,
            "delete" => delete(arg(2), arg(3), arg(4)).await,
            _ => {
                Err("usage: amqp-bench setup|publish|feed|wait|delete ... (see the source)".into())
            }
        }
    })
}
