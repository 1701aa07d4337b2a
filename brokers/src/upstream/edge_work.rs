//! What the hub sends an edge about its children (on `$weir/edge/...`), applied in the
//! order it came by one task.

use weir_gateways::mqtt::codec;
use weir_gateways::mqtt::requests::{self, ToEdge};
use weir_gateways::mqtt::topic::decode_bag;
use weir_hub::NewC2dMessage;
use weir_storage::c2d::AckMode;

use super::children::Children;
use super::link::Uplink;

/// One thing the hub sent.
pub(crate) enum EdgeWork {
    Children(Vec<serde_json::Value>),
    Desired {
        child: String,
        patch: bytes::Bytes,
    },
    Method {
        child: String,
        method: String,
        rid: String,
        timeout_secs: u64,
        payload: bytes::Bytes,
    },
    /// A cloud-to-device message for a child, to be acknowledged (packet `pkid` of
    /// connection `conn`) once the edge's own queue holds it.
    C2d {
        message: NewC2dMessage,
        conn: u64,
        pkid: u16,
    },
}

/// What goes back to the hub on the link.
pub(crate) enum Reply {
    /// A QoS 0 publish: (topic, payload).
    Publish(String, bytes::Bytes),
    /// The PUBACK of the hub's packet `pkid`, if connection `conn` is still the live one
    /// (on a later one the packet id means another message).
    PubAck { conn: u64, pkid: u16 },
}

/// A cloud-to-device message as the hub sent it for a child: its properties in `bag`.
fn c2d_message(child: &str, bag: &str, payload: bytes::Bytes) -> Option<NewC2dMessage> {
    let (sys, app) = match decode_bag(bag) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(device = child, error = %e, "a cloud-to-device message from the hub has a malformed property bag");
            return None;
        }
    };
    let text = |v: Option<Box<str>>| v.map(String::from);
    Some(NewC2dMessage {
        device_id: child.to_owned(),
        message_id: text(sys.message_id),
        correlation_id: text(sys.correlation_id),
        content_type: text(sys.content_type),
        content_encoding: text(sys.content_encoding),
        // `$.to` and the like are the hub's; the edge sets its own.
        properties: app
            .into_iter()
            .filter(|(k, _)| !k.starts_with("$."))
            .collect(),
        payload,
        expiry_ms: None,
        ack: AckMode::None,
    })
}

/// Runs a direct method the hub sent for a child on the edge's own hub library (the child
/// is connected here, or it is not online) and answers for it.
async fn method(
    children: Children,
    replies: tokio::sync::mpsc::UnboundedSender<Reply>,
    w: (String, String, String, u64, bytes::Bytes),
) {
    let (child, method, rid, timeout_secs, payload) = w;
    let payload = serde_json::from_slice(&payload).unwrap_or(serde_json::Value::Null);
    let timeout = std::time::Duration::from_secs(timeout_secs.clamp(1, 300));
    let (status, body) = match children
        .hub
        .invoke(&child, &method, &payload, timeout)
        .await
    {
        Ok((status, body)) => (status, body),
        Err(e) => (
            i32::from(e.status()),
            serde_json::json!({ "message": e.to_string() }),
        ),
    };
    let topic = requests::child_method_response_topic(&child, status, &rid);
    let _ = replies.send(Reply::Publish(topic, bytes::Bytes::from(body.to_string())));
}

pub(crate) async fn apply(
    children: Children,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<EdgeWork>,
    replies: tokio::sync::mpsc::UnboundedSender<Reply>,
) {
    while let Some(work) = rx.recv().await {
        match work {
            EdgeWork::Method {
                child,
                method: name,
                rid,
                timeout_secs,
                payload,
            } => {
                tokio::spawn(method(
                    children.clone(),
                    replies.clone(),
                    (child, name, rid, timeout_secs, payload),
                ));
            }
            EdgeWork::Children(list) => match children.sync(&list).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    children = list.len(),
                    changes = n,
                    "children synced from the hub"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot keep the children the hub listed"),
            },
            EdgeWork::Desired { child, patch } => {
                if let Err(e) = children.desired(&child, &patch).await {
                    tracing::warn!(device = child, error = %e, "cannot pass a desired patch on");
                }
            }
            EdgeWork::C2d {
                message,
                conn,
                pkid,
            } => {
                let child = message.device_id.clone();
                match children.hub.send_c2d(message).await {
                    Ok(()) => {
                        let _ = replies.send(Reply::PubAck { conn, pkid });
                    }
                    // Unacknowledged, the hub sends it again on the next connection.
                    Err(e) => tracing::warn!(
                        device = child,
                        error = %e,
                        "cannot keep a cloud-to-device message from the hub for a child"
                    ),
                }
            }
        }
    }
}

impl Uplink {
    /// Hands what the hub sent on `$weir/edge/...` to the children's keeper.
    pub(crate) fn hub_sent(&self, p: &codec::Publish, conn: u64) {
        let (Some(tx), Ok(topic)) = (&self.edge_tx, p.topic_str()) else {
            return;
        };
        let work = match requests::to_edge(topic) {
            Some(ToEdge::Children { status: 200, .. }) => {
                match serde_json::from_slice::<Vec<serde_json::Value>>(&p.payload) {
                    Ok(list) => EdgeWork::Children(list),
                    Err(e) => {
                        tracing::warn!(error = %e, "the hub's list of children is not a JSON array");
                        return;
                    }
                }
            }
            Some(ToEdge::Children { status, .. }) => {
                tracing::warn!(
                    status,
                    "the hub refused to list the edge's children: is the edge registered with --edge?"
                );
                return;
            }
            Some(ToEdge::ChildMethod {
                child,
                method,
                rid,
                timeout_secs,
            }) => EdgeWork::Method {
                child: child.to_owned(),
                method: method.to_owned(),
                rid: rid.to_owned(),
                timeout_secs,
                payload: p.payload.clone(),
            },
            Some(ToEdge::ChildDesired { child }) => EdgeWork::Desired {
                child: child.to_owned(),
                patch: p.payload.clone(),
            },
            Some(ToEdge::ChildC2d { child, bag }) => {
                let Some(message) = c2d_message(child, bag, p.payload.clone()) else {
                    return;
                };
                EdgeWork::C2d {
                    message,
                    conn,
                    pkid: p.pkid,
                }
            }
            None => return,
        };
        let _ = tx.send(work);
    }
}
