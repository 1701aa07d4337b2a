//! Publishing to RabbitMQ for one endpoint in one worker: connect, declare the exchange,
//! publish with confirms, keeping up to [`MAX_IN_FLIGHT`] unconfirmed; the broker confirms
//! in publish order on one channel.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind, PublisherConfirm,
};
use tokio::sync::mpsc;
use weir_core::AmqpOptions;

use crate::link::{Link, MAX_IN_FLIGHT, Outgoing, Progress};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One AMQP message.
pub struct Message {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// Starts publishing for `endpoint` with `options` on `rt`.
pub fn open(rt: &tokio::runtime::Handle, options: AmqpOptions, endpoint: String) -> Link<Message> {
    Link::spawn(rt, endpoint, move |rx, progress| async move {
        run(&options, rx, &progress).await
    })
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
    mut rx: mpsc::Receiver<Outgoing<Message>>,
    progress: &Arc<Progress>,
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
                progress.confirm_oldest();
            }
            next = rx.recv(), if pending.len() < MAX_IN_FLIGHT => {
                let Some(Outgoing { message: m, .. }) = next else { break };
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
