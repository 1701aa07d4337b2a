//! One open Parquet file: written under a hidden temporary name, finished (footer, sync)
//! before its commit, renamed after.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use weir_core::{Delivery, EndpointSpec, SinkError};

use super::batch::{schema, to_batch};
use super::config::ParquetConfig;
use crate::fsutil;

pub(super) fn io(path: &Path, source: std::io::Error) -> SinkError {
    SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(super) fn encode(endpoint: &EndpointSpec, e: impl std::fmt::Display) -> SinkError {
    SinkError::Encode {
        endpoint: endpoint.name.to_string(),
        message: e.to_string(),
    }
}

pub(super) struct OpenFile {
    schema: SchemaRef,
    pub dir: PathBuf,
    pub tmp: PathBuf,
    writer: ArrowWriter<File>,
    /// Deliveries not yet encoded into the writer.
    pub pending: Vec<Delivery>,
    pub rows: usize,
}

impl OpenFile {
    /// Creates `dir` (durably) and a new temporary file in it.
    pub fn create(
        config: &ParquetConfig,
        endpoint: &EndpointSpec,
        dir: PathBuf,
        name: String,
    ) -> Result<OpenFile, SinkError> {
        fsutil::create_dir_durable(&dir).map_err(|e| io(&dir, e))?;
        let tmp = dir.join(name);
        let file = fsutil::create_private(&tmp).map_err(|e| io(&tmp, e))?;
        let level = ZstdLevel::try_new(config.zstd_level).map_err(|e| encode(endpoint, e))?;
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(128 * 1024))
            .set_max_row_group_bytes(Some(config.row_group_bytes))
            .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")));
        // Columns whose values are (nearly) all different: a dictionary, the default, would
        // hash every value to no avail. Offsets and enqueued times only grow, so delta
        // encoding stores them in a few bits each.
        for unique in ["message_id", "body", "body_bytes"] {
            props = props.set_column_dictionary_enabled(ColumnPath::from(unique), false);
        }
        for growing in ["ingest_offset", "enqueued_time"] {
            props = props
                .set_column_dictionary_enabled(ColumnPath::from(growing), false)
                .set_column_encoding(ColumnPath::from(growing), Encoding::DELTA_BINARY_PACKED);
        }
        let props = props.build();
        let schema = schema(endpoint);
        let writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props))
            .map_err(|e| encode(endpoint, e))?;
        Ok(OpenFile {
            schema,
            dir,
            tmp,
            writer,
            pending: Vec::new(),
            rows: 0,
        })
    }

    /// Encodes the buffered deliveries into the file.
    pub fn flush(&mut self, spec: &EndpointSpec) -> Result<(), SinkError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = to_batch(&self.schema, spec, &self.pending).map_err(|e| encode(spec, e))?;
        self.writer.write(&batch).map_err(|e| encode(spec, e))?;
        self.pending.clear();
        Ok(())
    }

    /// Bytes written plus what is buffered for the current row group.
    pub fn size(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size()
    }

    /// Writes the footer and syncs; returns the temporary and final names. The final
    /// name carries the worker and worker count (a worker count names a set of partitions)
    /// and the offsets committed before and by this commit.
    pub fn finish(
        mut self,
        spec: &EndpointSpec,
        worker: usize,
        workers: usize,
        lo: u64,
        hi: u64,
    ) -> Result<(PathBuf, PathBuf), SinkError> {
        self.flush(spec)?;
        for (k, v) in [
            ("weir.endpoint", spec.name.to_string()),
            ("weir.worker", worker.to_string()),
            ("weir.workers", workers.to_string()),
            ("weir.rows", self.rows.to_string()),
            ("weir.offset_lo", lo.to_string()),
            ("weir.offset_hi", hi.to_string()),
        ] {
            self.writer
                .append_key_value_metadata(KeyValue::new(k.into(), v));
        }
        self.writer.finish().map_err(|e| encode(spec, e))?;
        self.writer
            .inner()
            .sync_all()
            .map_err(|e| io(&self.tmp, e))?;
        let done = self.dir.join(format!(
            "part-w{worker}of{workers}-{lo:020}-{hi:020}.parquet"
        ));
        Ok((self.tmp, done))
    }
}
