//! Turns deliveries into Arrow record batches.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, MapBuilder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use weir_core::{ColumnType, ColumnValue, Delivery, EndpointSpec};

fn properties_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::new(None, StringBuilder::new(), StringBuilder::new())
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The Arrow schema of an endpoint's files: the fixed columns, then its typed columns.
///
/// A body is kept exactly: as text in `body` when it is valid in its declared encoding
/// (UTF-8 unless `$.ce` says UTF-16 or UTF-32), otherwise byte for byte in `body_bytes`;
/// one of the two is null. `ingest_offset` and `rules_version` say where a row came from.
pub fn schema(endpoint: &EndpointSpec) -> SchemaRef {
    let map_type = properties_builder().finish().data_type().clone();
    let mut fields = vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("enqueued_time", timestamp_type(), false),
        Field::new("message_id", DataType::Utf8, true),
        Field::new("correlation_id", DataType::Utf8, true),
        Field::new("content_type", DataType::Utf8, true),
        Field::new("properties", map_type.clone(), false),
        Field::new("system", map_type, false),
        Field::new("body", DataType::Utf8, true),
        Field::new("body_bytes", DataType::Binary, true),
        Field::new("ingest_offset", DataType::Int64, false),
        Field::new("rules_version", DataType::Utf8, false),
    ];
    for c in &endpoint.columns {
        let ty = match c.ty {
            ColumnType::Double => DataType::Float64,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::String => DataType::Utf8,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Timestamp => timestamp_type(),
        };
        fields.push(Field::new(&c.name, ty, true));
    }
    Arc::new(Schema::new(fields))
}

/// Encodes deliveries as one record batch of `schema`.
pub fn to_batch(
    schema: &SchemaRef,
    endpoint: &EndpointSpec,
    rows: &[Delivery],
) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let mut device = StringBuilder::with_capacity(n, n * 16);
    let mut enqueued = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut message_id = StringBuilder::with_capacity(n, n * 16);
    let mut correlation_id = StringBuilder::with_capacity(n, 0);
    let mut content_type = StringBuilder::with_capacity(n, 0);
    let mut props = properties_builder();
    let mut system = properties_builder();
    let mut body = StringBuilder::with_capacity(n, n * 128);
    let mut body_bytes = BinaryBuilder::with_capacity(n, 0);
    let mut offsets = Int64Builder::with_capacity(n);
    let mut version = StringBuilder::with_capacity(n, n * 12);
    for d in rows {
        let e = &d.event;
        device.append_value(e.device_id.as_str());
        enqueued.append_value(e.enqueued_ms);
        message_id.append_option(e.system.message_id.as_deref());
        correlation_id.append_option(e.system.correlation_id.as_deref());
        content_type.append_option(e.system.content_type.as_deref());
        for (k, v) in e.properties.iter().chain(d.enrichments.iter()) {
            props.keys().append_value(k);
            props.values().append_value(v);
        }
        props.append(true)?;
        for (k, v) in e.system.others() {
            system.keys().append_value(k);
            system.values().append_value(v);
        }
        system.append(true)?;
        match weir_core::text::body_text(&e.body, e.system.content_encoding.as_deref()) {
            Some(text) => {
                body.append_value(text);
                body_bytes.append_null();
            }
            None => {
                body.append_null();
                body_bytes.append_value(&e.body);
            }
        }
        offsets.append_value(i64::try_from(e.offset).unwrap_or(i64::MAX));
        version.append_value(&d.rules_version);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(device.finish()),
        Arc::new(enqueued.finish()),
        Arc::new(message_id.finish()),
        Arc::new(correlation_id.finish()),
        Arc::new(content_type.finish()),
        Arc::new(props.finish()),
        Arc::new(system.finish()),
        Arc::new(body.finish()),
        Arc::new(body_bytes.finish()),
        Arc::new(offsets.finish()),
        Arc::new(version.finish()),
    ];
    for (i, c) in endpoint.columns.iter().enumerate() {
        let value = |d: &Delivery| d.columns.get(i).cloned().unwrap_or(ColumnValue::Null);
        let array: ArrayRef = match c.ty {
            ColumnType::Double => {
                let mut b = Float64Builder::with_capacity(n);
                rows.iter().for_each(|d| {
                    b.append_option(match value(d) {
                        ColumnValue::Double(x) => Some(x),
                        _ => None,
                    })
                });
                Arc::new(b.finish())
            }
            ColumnType::Int64 => {
                let mut b = Int64Builder::with_capacity(n);
                rows.iter().for_each(|d| {
                    b.append_option(match value(d) {
                        ColumnValue::Int64(x) => Some(x),
                        _ => None,
                    })
                });
                Arc::new(b.finish())
            }
            ColumnType::String => {
                let mut b = StringBuilder::with_capacity(n, n * 8);
                rows.iter().for_each(|d| {
                    b.append_option(match value(d) {
                        ColumnValue::String(x) => Some(x),
                        _ => None,
                    })
                });
                Arc::new(b.finish())
            }
            ColumnType::Bool => {
                let mut b = BooleanBuilder::with_capacity(n);
                rows.iter().for_each(|d| {
                    b.append_option(match value(d) {
                        ColumnValue::Bool(x) => Some(x),
                        _ => None,
                    })
                });
                Arc::new(b.finish())
            }
            ColumnType::Timestamp => {
                let mut b = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
                rows.iter().for_each(|d| {
                    b.append_option(match value(d) {
                        ColumnValue::Timestamp(x) => Some(x),
                        _ => None,
                    })
                });
                Arc::new(b.finish())
            }
        };
        columns.push(array);
    }
    RecordBatch::try_new(Arc::clone(schema), columns)
}
