//! What a condition can see of a message.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::sync::Arc;

use serde_json::Value as Json;
use weir_core::{DeviceDirectory, DeviceRecord, Event};

use crate::ast::Seg;
use crate::body::{FieldTable, LazyBody};
use crate::value::Val;

/// The table of a view that reads fields by name.
static NO_FIELDS: FieldTable = FieldTable::EMPTY;

/// IoT Hub system properties a condition can reference with `$name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SysProp {
    ContentType,
    ContentEncoding,
    ConnectionDeviceId,
    ConnectionModuleId,
    ConnectionDeviceGenerationId,
    ConnectionAuthMethod,
    MessageId,
    CorrelationId,
    UserId,
    EnqueuedTime,
    CreationTimeUtc,
    DtDataschema,
    DtSubject,
    OutputName,
    /// Weir's own: the gateway the message came through.
    WeirGateway,
    /// Weir's own: the insight an `Insights` event is a result of.
    Insight,
    /// Weir's own: the edge device that forwarded the message for its child.
    WeirEdge,
}

impl SysProp {
    /// Resolves `$name` (without the `$`), case-insensitively.
    pub fn parse(name: &str) -> Option<SysProp> {
        const NAMES: [(&str, SysProp); 19] = [
            ("contentType", SysProp::ContentType),
            ("contentEncoding", SysProp::ContentEncoding),
            ("connectionDeviceId", SysProp::ConnectionDeviceId),
            ("connectionModuleId", SysProp::ConnectionModuleId),
            (
                "connectionDeviceGenerationId",
                SysProp::ConnectionDeviceGenerationId,
            ),
            ("connectionAuthMethod", SysProp::ConnectionAuthMethod),
            ("messageId", SysProp::MessageId),
            ("correlationId", SysProp::CorrelationId),
            ("userId", SysProp::UserId),
            ("enqueuedTime", SysProp::EnqueuedTime),
            ("iothub-creation-time-utc", SysProp::CreationTimeUtc),
            ("creationTimeUtc", SysProp::CreationTimeUtc),
            ("dt-dataschema", SysProp::DtDataschema),
            ("dt-subject", SysProp::DtSubject),
            ("outputName", SysProp::OutputName),
            ("iothub-outputname", SysProp::OutputName),
            ("weirGateway", SysProp::WeirGateway),
            ("insight", SysProp::Insight),
            ("weirEdge", SysProp::WeirEdge),
        ];
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, p)| *p)
    }
}

/// Which part of the device twin a `$twin` path reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TwinSection {
    Tags,
    Desired,
    Reported,
}

/// Read access to one message for condition evaluation.
pub trait MessageView {
    fn system(&self, p: SysProp) -> Option<Cow<'_, str>>;
    /// An application property, looked up case-insensitively.
    fn app(&self, name: &str) -> Option<&str>;
    /// The value at a `$body` path; undefined when the body is not JSON or has no such
    /// value.
    fn body_path(&self, path: &[Seg]) -> Val<'_>;
    /// The value at a `$body` path whose first field a rule set numbered `slot` (see
    /// [`crate::RuleSet::view`]).
    fn body_field(&self, slot: usize, path: &[Seg]) -> Val<'_> {
        let _ = slot;
        self.body_path(path)
    }
    fn twin(&self, section: TwinSection) -> Option<&Json>;
}

/// The [`MessageView`] of an [`Event`]: parses the body and fetches the device record at
/// most once, and only when a condition needs them.
pub struct EventView<'a> {
    event: &'a Event,
    directory: &'a dyn DeviceDirectory,
    /// The top-level fields the rule set reads, by number (empty: read by name).
    fields: &'a FieldTable,
    body: OnceCell<Option<LazyBody<'a>>>,
    record: OnceCell<Option<Arc<DeviceRecord>>>,
}

impl<'a> EventView<'a> {
    pub fn new(event: &'a Event, directory: &'a dyn DeviceDirectory) -> Self {
        EventView {
            event,
            directory,
            fields: &NO_FIELDS,
            body: OnceCell::new(),
            record: OnceCell::new(),
        }
    }

    /// Reads the body's `fields` into slots as it validates it, for expressions that refer
    /// to them by number (`Ir::Field`).
    pub(crate) fn reading(mut self, fields: &'a FieldTable) -> Self {
        self.fields = fields;
        self
    }

    fn body(&self) -> Option<&LazyBody<'a>> {
        self.body
            .get_or_init(|| {
                if !body_may_be_json(self.event) {
                    return None;
                }
                LazyBody::parse(&self.event.body, self.fields)
            })
            .as_ref()
    }

    pub fn event(&self) -> &Event {
        self.event
    }

    /// True when the body was needed, was declared (or assumed) JSON, and did not parse.
    pub fn body_is_malformed(&self) -> bool {
        matches!(self.body.get(), Some(None)) && body_may_be_json(self.event)
    }

    fn record(&self) -> Option<&Arc<DeviceRecord>> {
        self.record
            .get_or_init(|| self.directory.get(self.event.device_id.as_str()))
            .as_ref()
    }
}

/// IoT Hub only looks into bodies declared `application/json` in UTF-8/16/32. Plain MQTT
/// clients declare nothing, so Weir also tries bodies that declare no content type.
fn body_may_be_json(e: &Event) -> bool {
    // `application/json` (as the SDKs send it) without searching it.
    let ct_ok = e.system.content_type.as_deref().is_none_or(|ct| {
        ct == "application/json"
            || ct
                .as_bytes()
                .windows(4)
                .any(|w| w.eq_ignore_ascii_case(b"json"))
    });
    let ce_ok = e.system.content_encoding.as_deref().is_none_or(|ce| {
        ce.is_empty()
            || ["utf-8", "utf8", "utf-16", "utf-32"]
                .iter()
                .any(|ok| ce.eq_ignore_ascii_case(ok))
    });
    ct_ok && ce_ok
}

/// Formats milliseconds since the epoch as RFC 3339 with milliseconds, UTC.
pub fn rfc3339_ms(ms: i64) -> String {
    // `to_rfc3339_opts`, not `format`: it does not parse a format string per call (insight
    // results format two timestamps each).
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

impl<'a> MessageView for EventView<'a> {
    fn system(&self, p: SysProp) -> Option<Cow<'_, str>> {
        let e = self.event;
        let s = &e.system;
        let b = |o: &'a Option<Box<str>>| o.as_deref().map(Cow::Borrowed);
        match p {
            SysProp::ContentType => b(&s.content_type),
            SysProp::ContentEncoding => b(&s.content_encoding),
            SysProp::ConnectionDeviceId => Some(Cow::Borrowed(e.device_id.as_str())),
            SysProp::ConnectionModuleId => e.module_id.as_deref().map(Cow::Borrowed),
            SysProp::ConnectionDeviceGenerationId => e.generation_id.as_deref().map(Cow::Borrowed),
            SysProp::ConnectionAuthMethod => Some(Cow::Owned(format!(
                "{{\"scope\":\"device\",\"type\":\"{}\",\"issuer\":\"iothub\",\"acceptingIpFilterRule\":null}}",
                e.auth_method.as_str()
            ))),
            SysProp::MessageId => b(&s.message_id),
            SysProp::CorrelationId => b(&s.correlation_id),
            SysProp::UserId => b(&s.user_id),
            SysProp::EnqueuedTime => Some(Cow::Owned(rfc3339_ms(e.enqueued_ms))),
            SysProp::CreationTimeUtc => b(&s.creation_time_utc),
            SysProp::DtDataschema => b(&s.dt_dataschema),
            SysProp::DtSubject => b(&s.dt_subject),
            SysProp::OutputName => b(&s.output_name),
            SysProp::WeirGateway => e.gateway.as_deref().map(Cow::Borrowed),
            SysProp::WeirEdge => b(&s.edge_id),
            SysProp::Insight => (e.source == weir_core::EventSource::Insights)
                .then(|| e.property("insight"))
                .flatten()
                .map(Cow::Borrowed),
        }
    }

    fn app(&self, name: &str) -> Option<&str> {
        self.event.property(name)
    }

    fn body_path(&self, path: &[Seg]) -> Val<'_> {
        self.body().map_or(Val::Undef, |b| b.get(path))
    }

    fn body_field(&self, slot: usize, path: &[Seg]) -> Val<'_> {
        debug_assert!(
            self.fields.is_empty()
                || matches!((self.fields.names().get(slot), path.first()),
                    (Some(f), Some(Seg::Field(n))) if **f == **n),
            "an expression of one rule set evaluated with another's view"
        );
        self.body().map_or(Val::Undef, |b| b.get_field(slot, path))
    }

    fn twin(&self, section: TwinSection) -> Option<&Json> {
        let r = self.record()?;
        match section {
            TwinSection::Tags => Some(&r.tags),
            TwinSection::Desired => Some(&r.desired.values),
            TwinSection::Reported => Some(&r.reported.values),
        }
    }
}
