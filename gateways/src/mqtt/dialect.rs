//! What topics mean: the IoT Hub device dialect, behind a trait so the session core can
//! speak another (the provisioning service's) later.

use std::sync::Arc;

use bytes::Bytes;
use rumqttd::protocol::{Connect, Login};
use weir_core::{
    C2dDelivery, DeviceDirectory, DeviceId, DeviceStatus, Feature, Identity, Peer, Provisioning,
    Role, SystemProperties, ToDevice,
};

use super::connect::{Refusal, authenticate, parse_username};
use super::dps;
use super::requests::{self, DeviceRequest};
use super::topic::{DeviceTopic, decode_bag, encode_bag, telemetry};
use super::translate::{self, Translation};

/// What a device's PUBLISH is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<'t> {
    Telemetry {
        bag: &'t str,
        /// The child device an edge publishes for; `None`: the connection's own device.
        child: Option<Child>,
    },
    TwinGet {
        rid: &'t str,
    },
    TwinPatch {
        rid: &'t str,
    },
    MethodResponse {
        rid: &'t str,
        status: i32,
    },
    /// A registration with the provisioning service.
    Register {
        rid: &'t str,
    },
    RegistrationStatus {
        rid: &'t str,
        operation_id: &'t str,
    },
    /// An edge asks for its children (with their credentials).
    ChildrenGet {
        rid: &'t str,
    },
    /// An edge answers a direct method for its child.
    ChildMethodResponse {
        child: DeviceId,
        rid: &'t str,
        status: i32,
    },
}

/// A device behind an edge, which the edge's connection publishes for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub device_id: DeviceId,
    pub generation_id: Arc<str>,
}

/// A PUBLISH to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    /// For cloud-to-device messages: what the device's PUBACK completes.
    pub lock: Option<C2dLock>,
}

/// What a PUBACK of a cloud-to-device message completes: the message with this lock,
/// queued for the connected device or, on an edge's connection, for its `child`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2dLock {
    pub lock: u64,
    pub child: Option<Box<str>>,
}

/// A device dialect of MQTT: how CONNECT authenticates, what topics a device may use and
/// mean, and how the hub's messages are put on the wire.
pub trait Dialect: Send + Sync + 'static {
    fn authenticate(
        &self,
        connect: &Connect,
        login: Option<&Login>,
        peer: &Peer,
        now_secs: i64,
    ) -> Result<Identity, Refusal>;

    /// What a PUBLISH to `topic` is; `None` when the device may not publish there.
    fn classify<'t>(&self, topic: &'t str, id: &Identity) -> Option<Incoming<'t>>;

    /// The system and application properties a telemetry topic carries.
    fn properties(&self, bag: &str) -> Result<(SystemProperties, Vec<(String, String)>), String>;

    /// The feature a subscription filter turns on; `None` when the device may not
    /// subscribe to it.
    fn feature(&self, filter: &str, id: &Identity) -> Option<Feature>;

    fn outbound(&self, m: &ToDevice, id: &Identity) -> Outbound;

    fn twin_response(&self, status: u16, rid: &str, version: Option<u64>) -> String;

    /// Where the answer to an edge's request `rid` for its children goes.
    fn children_response(&self, status: u16, rid: &str) -> String {
        requests::children_response(status, rid)
    }

    /// Where the provisioning service's answer to request `rid` goes.
    fn registration_response(&self, status: u16, rid: &str, retry_after: Option<u32>) -> String {
        dps::response_topic(status, rid, retry_after)
    }
}

/// The Azure IoT Hub device dialect (spec §2), and, when the hub runs the provisioning
/// service, IoT DPS's (spec §4) for connections whose username says so.
pub struct IotHub {
    pub hub_name: String,
    pub directory: Arc<dyn DeviceDirectory>,
    pub provisioning: Option<Arc<dyn Provisioning>>,
    pub translations: Arc<[Translation]>,
}

impl Dialect for IotHub {
    fn authenticate(
        &self,
        connect: &Connect,
        login: Option<&Login>,
        peer: &Peer,
        now_secs: i64,
    ) -> Result<Identity, Refusal> {
        if let (Some(service), Some(l)) = (&self.provisioning, login)
            && dps::parse_username(&l.username).is_some()
        {
            return dps::authenticate(connect, l, peer.client_certs.as_deref(), service, now_secs);
        }
        if let Some(l) = login
            && !self.translations.is_empty()
            && parse_username(&l.username).is_none()
        {
            return translate::authenticate(
                &self.translations,
                &l.username,
                &l.password,
                &*self.directory,
            );
        }
        authenticate(
            connect,
            login,
            peer.client_certs.as_deref(),
            &self.hub_name,
            &*self.directory,
            now_secs,
        )
    }

    fn classify<'t>(&self, topic: &'t str, id: &Identity) -> Option<Incoming<'t>> {
        if id.role == Role::Registration {
            return Some(match dps::parse_request(topic)? {
                dps::Request::Register { rid } => Incoming::Register { rid },
                dps::Request::Status { rid, operation_id } => {
                    Incoming::RegistrationStatus { rid, operation_id }
                }
            });
        }
        if let Role::Translated(i) = id.role {
            let entry = self.translations.get(usize::from(i))?;
            return (entry.device_of(topic)? == id.device_id.as_str()).then_some(
                Incoming::Telemetry {
                    bag: "",
                    child: None,
                },
            );
        }
        if let Some(rid) = requests::children_request(topic) {
            return self.is_edge(id).then_some(Incoming::ChildrenGet { rid });
        }
        if let Some((child, status, rid)) = requests::child_method_response(topic) {
            let ours = self
                .directory
                .get(child)
                .is_some_and(|r| r.parent.as_deref() == Some(id.device_id.as_str()));
            return (ours && self.is_edge(id))
                .then(|| DeviceId::parse(child).ok())
                .flatten()
                .map(|child| Incoming::ChildMethodResponse { child, rid, status });
        }
        if let Some(req) = requests::parse(topic) {
            return Some(match req {
                DeviceRequest::TwinGet { rid } => Incoming::TwinGet { rid },
                DeviceRequest::TwinPatchReported { rid } => Incoming::TwinPatch { rid },
                DeviceRequest::MethodResponse { status, rid } => {
                    Incoming::MethodResponse { rid, status }
                }
            });
        }
        let DeviceTopic::Telemetry { device, bag } = telemetry(topic)?;
        if device == id.device_id.as_str() {
            return Some(Incoming::Telemetry { bag, child: None });
        }
        // An edge publishing for one of its children (the registry names the parent; only
        // an IoT Edge device can be one). Anything else is another device's topic.
        let rec = self.directory.get(device)?;
        let admitted = id.role == Role::Device
            && rec.parent.as_deref() == Some(id.device_id.as_str())
            && rec.status == DeviceStatus::Enabled;
        admitted.then(|| Incoming::Telemetry {
            bag,
            child: DeviceId::parse(device).ok().map(|device_id| Child {
                device_id,
                generation_id: Arc::from(rec.generation_id.as_str()),
            }),
        })
    }

    fn properties(&self, bag: &str) -> Result<(SystemProperties, Vec<(String, String)>), String> {
        decode_bag(bag).map_err(|e| format!("bad property bag: {e}"))
    }

    fn feature(&self, filter: &str, id: &Identity) -> Option<Feature> {
        match id.role {
            Role::Registration => {
                return (filter == dps::RESPONSES).then_some(Feature::Registrations);
            }
            Role::Translated(_) => return None,
            Role::Device => {}
        }
        match filter {
            "$iothub/methods/POST/#" => Some(Feature::Methods),
            "$iothub/twin/res/#" => Some(Feature::TwinResponses),
            "$iothub/twin/PATCH/properties/desired/#" => Some(Feature::DesiredPatches),
            requests::EDGE_FILTER => self.is_edge(id).then_some(Feature::Edge),
            f if f
                .strip_prefix("devices/")
                .and_then(|r| r.strip_prefix(id.device_id.as_str()))
                == Some("/messages/devicebound/#") =>
            {
                Some(Feature::CloudToDevice)
            }
            _ => None,
        }
    }

    fn outbound(&self, m: &ToDevice, id: &Identity) -> Outbound {
        match m {
            ToDevice::DesiredPatch { version, patch } => Outbound {
                topic: format!("$iothub/twin/PATCH/properties/desired/?$version={version}"),
                payload: patch.clone(),
                qos: 0,
                lock: None,
            },
            ToDevice::MethodRequest {
                rid,
                method,
                payload,
            } => Outbound {
                topic: format!("$iothub/methods/POST/{method}/?$rid={rid}"),
                payload: payload.clone(),
                qos: 0,
                lock: None,
            },
            ToDevice::CloudToDevice(c) => Outbound {
                topic: c2d_topic(id.device_id.as_str(), c),
                payload: c.payload.clone(),
                qos: 1,
                lock: Some(C2dLock {
                    lock: c.lock,
                    child: None,
                }),
            },
            ToDevice::ChildCloudToDevice { child, message } => Outbound {
                topic: requests::child_c2d_topic(child, &c2d_bag(child, message)),
                payload: message.payload.clone(),
                qos: 1,
                lock: Some(C2dLock {
                    lock: message.lock,
                    child: Some(child.as_str().into()),
                }),
            },
            ToDevice::ChildMethodRequest {
                child,
                rid,
                method,
                payload,
                timeout_secs,
            } => Outbound {
                topic: requests::child_method_topic(child, method, rid, *timeout_secs),
                payload: payload.clone(),
                qos: 0,
                lock: None,
            },
            ToDevice::ChildDesiredPatch {
                child,
                version,
                patch,
            } => Outbound {
                topic: requests::child_desired_topic(child, *version),
                payload: patch.clone(),
                qos: 0,
                lock: None,
            },
        }
    }

    fn twin_response(&self, status: u16, rid: &str, version: Option<u64>) -> String {
        requests::twin_response(status, rid, version)
    }
}

impl IotHub {
    /// Whether the connection is an IoT Edge device's (registered with `capabilities.iotEdge`).
    fn is_edge(&self, id: &Identity) -> bool {
        id.role == Role::Device
            && self
                .directory
                .get(id.device_id.as_str())
                .is_some_and(|r| r.iot_edge)
    }
}

/// `devices/{id}/messages/devicebound/{bag}`, every key and value percent-encoded but for
/// unreserved characters, as the device SDK expects (spec §2.5).
fn c2d_topic(device: &str, m: &C2dDelivery) -> String {
    format!(
        "devices/{device}/messages/devicebound/{}",
        c2d_bag(device, m)
    )
}

/// The property bag of a cloud-to-device message: system properties, then the
/// application's.
fn c2d_bag(device: &str, m: &C2dDelivery) -> String {
    let to = format!("/devices/{device}/messages/deviceBound");
    let system = [
        ("$.mid", Some(m.message_id.as_str())),
        ("$.to", Some(to.as_str())),
        ("$.cid", m.correlation_id.as_deref()),
        ("$.ct", m.content_type.as_deref()),
        ("$.ce", m.content_encoding.as_deref()),
    ];
    encode_bag(
        system
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .chain(m.properties.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_to_device_topics_escape_what_the_sdk_splits_on() {
        let m = C2dDelivery {
            lock: 1,
            message_id: "m/1".into(),
            correlation_id: None,
            content_type: Some("text/plain".into()),
            content_encoding: None,
            properties: vec![("a&b".into(), "c=d e".into())],
            payload: Bytes::new(),
        };
        assert_eq!(
            c2d_topic("dev1", &m),
            "devices/dev1/messages/devicebound/%24.mid=m%2F1&%24.to=%2Fdevices%2Fdev1%2Fmessages%2FdeviceBound&%24.ct=text%2Fplain&a%26b=c%3Dd%20e"
        );
    }

    fn identity(device: &str) -> Identity {
        Identity {
            role: Role::Device,
            device_id: DeviceId::parse(device).expect("id"),
            generation_id: Arc::from("g"),
            auth: weir_core::AuthMethod::Sas,
            credential: weir_core::Credential::SasKey(0),
            expires: None,
        }
    }

    #[test]
    fn an_edge_publishes_for_its_own_enabled_children_only() {
        let mut devices = std::collections::HashMap::new();
        let mut edge = weir_core::DeviceRecord::with_tags("edge1", serde_json::json!({}));
        edge.iot_edge = true;
        let mut child = weir_core::DeviceRecord::with_tags("c1", serde_json::json!({}));
        child.parent = Some("edge1".into());
        child.generation_id = "gen-c1".into();
        let mut off = child.clone();
        off.device_id = "c2".into();
        off.status = DeviceStatus::Disabled;
        let mut other = child.clone();
        other.device_id = "c3".into();
        other.parent = Some("edge2".into());
        for r in [edge, child, off, other] {
            devices.insert(r.device_id.clone(), Arc::new(r));
        }
        let d = IotHub {
            hub_name: "h".into(),
            directory: Arc::new(devices),
            provisioning: None,
            translations: Arc::from(Vec::new()),
        };
        let id = identity("edge1");
        let Some(Incoming::Telemetry { child: Some(c), .. }) =
            d.classify("devices/c1/messages/events/a=b", &id)
        else {
            panic!("the edge's child is admitted");
        };
        assert_eq!((c.device_id.as_str(), &*c.generation_id), ("c1", "gen-c1"));
        for refused in ["c2", "c3", "nobody"] {
            let topic = format!("devices/{refused}/messages/events/");
            assert_eq!(d.classify(&topic, &id), None, "{refused}");
        }
        // Only an IoT Edge device asks for its children or subscribes for them.
        assert!(d.classify("$weir/edge/children/GET/?$rid=1", &id).is_some());
        assert_eq!(d.feature("$weir/edge/#", &id), Some(Feature::Edge));
        let plain = identity("c1");
        assert_eq!(d.classify("$weir/edge/children/GET/?$rid=1", &plain), None);
        assert_eq!(d.feature("$weir/edge/#", &plain), None);
        assert_eq!(d.classify("devices/c3/messages/events/", &plain), None);
    }
}
