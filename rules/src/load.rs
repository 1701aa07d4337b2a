//! Reads rules files into a [`RuleSet`], collecting every problem as a [`Diagnostic`].

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use weir_core::{
    ColumnSpec, ColumnType, DeadLetterPolicy, EndpointCatalog, EndpointSpec, EventSource,
};

use crate::compile::compile_str;
use crate::diag::{Diagnostic, string_offsets};
use crate::file::{RawEndpoint, RawFile};
use crate::ir::Ir;
use crate::parse::SyntaxError;
use crate::ruleset::{EnrichValue, Enrichment, Route, RuleSet};

/// One rules file's name (as shown in diagnostics) and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub path: PathBuf,
    pub text: Arc<str>,
}

/// Columns every Parquet file has; typed columns may not reuse these names.
pub const BUILTIN_COLUMNS: [&str; 11] = [
    "device_id",
    "enqueued_time",
    "message_id",
    "correlation_id",
    "content_type",
    "properties",
    "system",
    "body",
    "body_bytes",
    "ingest_offset",
    "rules_version",
];

/// Reads every `*.toml` file in `dir` (sorted by name) and compiles them as one set;
/// endpoints are checked against `catalog`, the kinds the hub can write.
pub fn load_dir(
    dir: &Path,
    hub_name: &str,
    catalog: &dyn EndpointCatalog,
) -> Result<RuleSet, Vec<Diagnostic>> {
    read_dir(dir).and_then(|files| load_sources(&files, hub_name, catalog))
}

/// Lists and reads the rules files of `dir`.
pub fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, Vec<Diagnostic>> {
    let io_diag = |what: String| {
        vec![Diagnostic {
            file: dir.display().to_string(),
            src: Arc::from(""),
            span: 0..0,
            message: what,
            hint: Some("pass an existing directory with --rules".into()),
        }]
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| io_diag(format!("cannot read the rules directory: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        // The default rules directory doubles as the weir-rules crate (docs/decisions/003).
        .filter(|p| p.file_name().is_some_and(|n| n != "Cargo.toml"))
        .collect();
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| io_diag(format!("cannot read {}: {e}", path.display())))?;
        files.push(SourceFile {
            name: path.display().to_string(),
            path,
            text: Arc::from(text),
        });
    }
    Ok(files)
}

/// Compiles already-read files into one rule set.
pub fn load_sources(
    files: &[SourceFile],
    hub_name: &str,
    catalog: &dyn EndpointCatalog,
) -> Result<RuleSet, Vec<Diagnostic>> {
    let mut b = Builder {
        files,
        catalog,
        diags: Vec::new(),
        set: RuleSet {
            hub_name: hub_name.to_owned(),
            files: files.iter().map(|f| f.path.clone()).collect(),
            version: Arc::from(version_of(files)),
            ..RuleSet::default()
        },
        endpoint_names: HashMap::new(),
        route_names: HashMap::new(),
        insight_names: HashMap::new(),
        fallback_at: None,
        dead_letter_refs: Vec::new(),
    };
    let parsed: Vec<Option<RawFile>> = files
        .iter()
        .enumerate()
        .map(|(i, f)| b.parse(i, f))
        .collect();
    for (i, raw) in parsed.iter().enumerate() {
        if let Some(raw) = raw {
            for ep in &raw.endpoint {
                b.endpoint(i, ep);
            }
        }
    }
    b.dead_letters();
    for (i, raw) in parsed.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        for r in raw.route {
            b.route(i, r);
        }
        if let Some(fb) = raw.fallback {
            b.fallback(i, fb);
        }
        for e in raw.enrichment {
            b.enrichment(i, e);
        }
        for insight in raw.insight {
            b.insight(i, insight);
        }
    }
    if b.diags.is_empty() {
        b.set.number_body_fields();
        Ok(b.set)
    } else {
        Err(b.diags)
    }
}

/// The version of a set of rules files: the first 12 hex digits of a SHA-256 over each
/// file's name (without its directory) and text, in name order. Archived rows carry it, so
/// a row can be traced to the exact files that routed it.
pub fn version_of(files: &[SourceFile]) -> String {
    use sha2::{Digest, Sha256};
    let mut named: Vec<(&str, &str)> = files
        .iter()
        .map(|f| {
            let name = f
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(f.name.as_str());
            (name, &*f.text)
        })
        .collect();
    named.sort();
    let mut h = Sha256::new();
    for (name, text) in named {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) struct Builder<'a> {
    pub(crate) files: &'a [SourceFile],
    catalog: &'a dyn EndpointCatalog,
    diags: Vec<Diagnostic>,
    pub(crate) set: RuleSet,
    endpoint_names: HashMap<String, (usize, Range<usize>)>,
    route_names: HashMap<String, (usize, Range<usize>)>,
    pub(crate) insight_names: HashMap<String, (usize, Range<usize>)>,
    fallback_at: Option<(usize, Range<usize>)>,
    /// `dead_letter` of each endpoint that has one, resolved once every endpoint is known.
    dead_letter_refs: Vec<DeadLetterRef>,
}

struct DeadLetterRef {
    file: usize,
    endpoint: usize,
    target: Spanned<String>,
    max_retry: Duration,
}

/// How long an endpoint with a dead-letter endpoint keeps retrying a delivery by default:
/// the hour IoT Hub retries its custom endpoints for.
const DEFAULT_MAX_RETRY_SECS: i64 = 3600;
const MAX_RETRY_SECS_LIMIT: i64 = 7 * 24 * 3600;

impl Builder<'_> {
    pub(crate) fn diag(
        &mut self,
        file: usize,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let f = &self.files[file];
        self.diags.push(Diagnostic {
            file: f.name.clone(),
            src: Arc::clone(&f.text),
            span,
            message: message.into(),
            hint,
        });
    }

    /// Reports a second definition of `what` named `name` (the first is at `prev`).
    pub(crate) fn defined_twice(
        &mut self,
        i: usize,
        span: Range<usize>,
        what: &str,
        name: &str,
        prev: Option<(usize, Range<usize>)>,
    ) -> bool {
        let Some(prev) = prev else {
            return false;
        };
        let at = self.where_is(&prev);
        self.diag(
            i,
            span,
            format!("{what} {name:?} is defined twice"),
            Some(format!("the first definition is at {at}")),
        );
        true
    }

    pub(crate) fn diag_count(&self) -> usize {
        self.diags.len()
    }

    pub(crate) fn where_is(&self, (file, span): &(usize, Range<usize>)) -> String {
        let d = Diagnostic {
            file: self.files[*file].name.clone(),
            src: Arc::clone(&self.files[*file].text),
            span: span.clone(),
            message: String::new(),
            hint: None,
        };
        let (l, c) = d.line_col();
        format!("{}:{l}:{c}", d.file)
    }

    fn parse(&mut self, i: usize, f: &SourceFile) -> Option<RawFile> {
        match toml::from_str::<RawFile>(&f.text) {
            Ok(raw) => Some(raw),
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let msg = e.message().trim().to_owned();
                let hint = if msg.contains("unknown field") {
                    Some("check the key's spelling; tables are [[endpoint]], [[route]], [fallback], [[enrichment]] and [[insight]]".into())
                } else {
                    None
                };
                self.diag(i, span, msg, hint);
                None
            }
        }
    }

    /// Compiles an expression held in a TOML string, mapping error positions into the file.
    pub(crate) fn expr(
        &mut self,
        file: usize,
        s: &Spanned<String>,
        offset_in_value: usize,
        text: &str,
    ) -> Option<Ir> {
        match compile_str(text) {
            Ok(ir) => Some(ir),
            Err(SyntaxError {
                span,
                message,
                hint,
            }) => {
                let map = string_offsets(&self.files[file].text[s.span()], s.span().start);
                let at = |o: usize| {
                    map.get(o + offset_in_value)
                        .copied()
                        .unwrap_or(s.span().end)
                };
                let file_span = at(span.start)..at(span.end).max(at(span.start) + 1);
                self.diag(file, file_span, message, hint);
                None
            }
        }
    }

    fn endpoint(&mut self, i: usize, ep: &RawEndpoint) {
        let name = ep.name.get_ref().clone();
        if !valid_name(&name) {
            self.diag(
                i,
                ep.name.span(),
                format!("invalid endpoint name {name:?}"),
                Some("endpoint names become directory names: use letters, digits, '-' and '_' (at most 64)".into()),
            );
            return;
        }
        let prev = self.endpoint_names.get(&name).cloned();
        if self.defined_twice(i, ep.name.span(), "endpoint", &name, prev) {
            return;
        }
        let kind_name = ep.kind.get_ref().to_ascii_lowercase();
        let kinds = self.catalog.kinds();
        if !kinds.contains(&kind_name.as_str()) {
            self.diag(
                i,
                ep.kind.span(),
                format!("unknown endpoint type {kind_name:?}"),
                Some(format!("supported types: {}", kinds.join(", "))),
            );
            return;
        }
        let options: serde_json::Map<String, serde_json::Value> = ep
            .options
            .iter()
            .map(|(k, v)| {
                let json = serde_json::to_value(v.get_ref()).unwrap_or(serde_json::Value::Null);
                (k.clone(), json)
            })
            .collect();
        let kind = match self.catalog.endpoint(&kind_name, &options) {
            Ok(k) => k,
            Err(e) => {
                let span = e
                    .key
                    .as_ref()
                    .and_then(|k| ep.options.iter().find(|(name, _)| name == k))
                    .map_or(ep.kind.span(), |(_, v)| v.span());
                self.diag(i, span, e.message, e.hint);
                return;
            }
        };
        let Some(max_retry) = self.max_retry(i, ep) else {
            return;
        };
        let mut columns = Vec::new();
        let mut exprs = Vec::new();
        for (col, spec) in &ep.columns.0 {
            if !valid_column(col) {
                self.diag(
                    i,
                    spec.span(),
                    format!("invalid column name {col:?}"),
                    Some("use letters, digits and '_', starting with a letter".into()),
                );
                continue;
            }
            if BUILTIN_COLUMNS.contains(&col.as_str())
                || columns.iter().any(|c: &ColumnSpec| c.name == *col)
            {
                self.diag(
                    i,
                    spec.span(),
                    format!("column {col:?} clashes with another column"),
                    Some(format!(
                        "built-in columns are {}",
                        BUILTIN_COLUMNS.join(", ")
                    )),
                );
                continue;
            }
            let Some((ty_text, expr_text)) = spec.get_ref().split_once(':') else {
                self.diag(
                    i,
                    spec.span(),
                    "a column is written \"type:expression\"",
                    Some(format!(
                        "for example \"double:$body.temp\"; types are {}",
                        ColumnType::NAMES
                    )),
                );
                continue;
            };
            let Some(ty) = ColumnType::parse(ty_text.trim()) else {
                self.diag(
                    i,
                    spec.span(),
                    format!("unknown column type {:?}", ty_text.trim()),
                    Some(format!("types are {}", ColumnType::NAMES)),
                );
                continue;
            };
            if let Some(ir) = self.expr(i, spec, ty_text.len() + 1, expr_text) {
                columns.push(ColumnSpec {
                    name: col.clone(),
                    ty,
                });
                exprs.push(ir);
            }
        }
        self.endpoint_names
            .insert(name.clone(), (i, ep.name.span()));
        if let (Some(target), Some(max_retry)) = (&ep.dead_letter, max_retry) {
            self.dead_letter_refs.push(DeadLetterRef {
                file: i,
                endpoint: self.set.endpoints.len(),
                target: target.clone(),
                max_retry,
            });
        }
        self.set.endpoints.push(Arc::new(EndpointSpec {
            name: Arc::from(name),
            kind,
            columns,
            dead_letter: None,
        }));
        self.set.columns.push(exprs);
        self.set.enrichments.push(Vec::new());
    }

    /// `max_retry_secs` of an endpoint: `Some(None)` without a dead-letter endpoint, `None`
    /// after a diagnostic.
    fn max_retry(&mut self, i: usize, ep: &RawEndpoint) -> Option<Option<Duration>> {
        match (&ep.dead_letter, &ep.max_retry_secs) {
            (None, None) => Some(None),
            (None, Some(secs)) => {
                self.diag(
                    i,
                    secs.span(),
                    "max_retry_secs needs a dead_letter endpoint",
                    Some("without one, what the endpoint cannot deliver waits in the ingest log until it can; add dead_letter = \"<endpoint>\" to hand it on instead".into()),
                );
                None
            }
            (Some(_), Some(secs)) if !(1..=MAX_RETRY_SECS_LIMIT).contains(secs.get_ref()) => {
                self.diag(
                    i,
                    secs.span(),
                    format!("max_retry_secs must be between 1 and {MAX_RETRY_SECS_LIMIT} (7 days)"),
                    None,
                );
                None
            }
            (Some(_), secs) => {
                let secs = secs
                    .as_ref()
                    .map_or(DEFAULT_MAX_RETRY_SECS, |s| *s.get_ref());
                Some(Some(Duration::from_secs(secs.unsigned_abs())))
            }
        }
    }

    /// Resolves every `dead_letter`: an endpoint defined in some file, not the endpoint
    /// itself, and no chain of dead-letter endpoints that comes back to where it started.
    fn dead_letters(&mut self) {
        for r in std::mem::take(&mut self.dead_letter_refs) {
            let Some(target) = self.endpoint_ref(r.file, &r.target) else {
                continue;
            };
            if target == r.endpoint {
                self.diag(
                    r.file,
                    r.target.span(),
                    "an endpoint cannot be its own dead-letter endpoint",
                    Some("name another endpoint, for example a Parquet archive".into()),
                );
                continue;
            }
            let policy = DeadLetterPolicy {
                endpoint: Arc::clone(&self.set.endpoints[target].name),
                max_retry: r.max_retry,
            };
            Arc::make_mut(&mut self.set.endpoints[r.endpoint]).dead_letter = Some(policy);
            let mut chain = vec![Arc::clone(&self.set.endpoints[r.endpoint].name)];
            let mut at = target;
            while let Some(next) = self.set.endpoints[at].dead_letter.clone() {
                chain.push(Arc::clone(&self.set.endpoints[at].name));
                if *next.endpoint == *chain[0] {
                    chain.push(Arc::clone(&next.endpoint));
                    let cycle: Vec<&str> = chain.iter().map(|n| &**n).collect();
                    self.diag(
                        r.file,
                        r.target.span(),
                        format!("dead-letter endpoints form a cycle: {}", cycle.join(" → ")),
                        Some(
                            "the last endpoint of a dead-letter chain must have no dead_letter"
                                .into(),
                        ),
                    );
                    break;
                }
                match self.set.endpoint_index(&next.endpoint) {
                    Some(n) if chain.len() <= self.set.endpoints.len() => at = n,
                    _ => break,
                }
            }
        }
    }

    /// Resolves one endpoint name; reports an unknown one.
    pub(crate) fn endpoint_ref(&mut self, i: usize, n: &Spanned<String>) -> Option<usize> {
        if let Some(ix) = self.set.endpoint_index(n.get_ref()) {
            return Some(ix);
        }
        let known: Vec<&str> = self.set.endpoints.iter().map(|e| &*e.name).collect();
        let hint = if known.is_empty() {
            "no endpoints are defined; add an [[endpoint]] table".to_string()
        } else {
            format!("defined endpoints: {}", known.join(", "))
        };
        self.diag(
            i,
            n.span(),
            format!("unknown endpoint {:?}", n.get_ref()),
            Some(hint),
        );
        None
    }

    /// Resolves endpoint names; reports unknown ones.
    fn endpoint_refs(
        &mut self,
        i: usize,
        list: &Spanned<Vec<Spanned<String>>>,
    ) -> Option<Vec<usize>> {
        if list.get_ref().is_empty() {
            self.diag(
                i,
                list.span(),
                "the endpoint list is empty",
                Some("name at least one [[endpoint]]".into()),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for n in list.get_ref() {
            match self.endpoint_ref(i, n) {
                Some(ix) => out.push(ix),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn route(&mut self, i: usize, r: crate::file::RawRoute) {
        let name = r.name.get_ref().clone();
        if name.trim().is_empty() || name.len() > 64 {
            self.diag(
                i,
                r.name.span(),
                "a route name must be 1 to 64 characters",
                None,
            );
            return;
        }
        let prev = self.route_names.get(&name).cloned();
        if self.defined_twice(i, r.name.span(), "route", &name, prev) {
            return;
        }
        self.route_names.insert(name.clone(), (i, r.name.span()));
        let source = match &r.source {
            None => Some(EventSource::DeviceMessages),
            Some(s) => {
                let parsed = EventSource::parse(s.get_ref());
                if parsed.is_none() {
                    let all: Vec<&str> = EventSource::ALL.iter().map(|s| s.as_str()).collect();
                    self.diag(
                        i,
                        s.span(),
                        format!("unknown source {:?}", s.get_ref()),
                        Some(format!("sources are {}", all.join(", "))),
                    );
                }
                parsed
            }
        };
        let (condition, text) = match &r.condition {
            None => (
                Some(Ir::Const(crate::ir::Const::Bool(true))),
                "true".to_owned(),
            ),
            Some(c) => (self.expr(i, c, 0, c.get_ref()), c.get_ref().clone()),
        };
        let endpoints = self.endpoint_refs(i, &r.endpoints);
        let priority = match &r.priority {
            None => Some(weir_core::DEFAULT_PRIORITY),
            Some(p) => {
                let ok = u8::try_from(*p.get_ref()).ok().filter(|p| *p <= 9);
                if ok.is_none() {
                    self.diag(
                        i,
                        p.span(),
                        format!("priority {} is not 0 to 9", p.get_ref()),
                        Some("an edge drops the lowest priority first when its budget is full; the default is 5".into()),
                    );
                }
                ok
            }
        };
        if let (Some(source), Some(condition), Some(endpoints), Some(priority)) =
            (source, condition, endpoints, priority)
        {
            self.set.routes.push(Route {
                name: name.into(),
                source,
                condition,
                condition_text: text,
                endpoints,
                enabled: r.enabled,
                priority,
            });
        }
    }

    fn fallback(&mut self, i: usize, fb: Spanned<crate::file::RawFallback>) {
        let span = fb.span();
        if let Some(prev) = self.fallback_at.clone() {
            let at = self.where_is(&prev);
            self.diag(
                i,
                span,
                "only one [fallback] is allowed across all rules files",
                Some(format!("another is at {at}")),
            );
            return;
        }
        self.fallback_at = Some((i, span));
        let fb = fb.into_inner();
        if let Some(eps) = self.endpoint_refs(i, &fb.endpoints)
            && fb.enabled
        {
            self.set.fallback = eps;
        }
    }

    fn enrichment(&mut self, i: usize, e: crate::file::RawEnrichment) {
        let key = e.key.get_ref().clone();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.diag(
                i,
                e.key.span(),
                format!("invalid enrichment key {key:?}"),
                Some("keys use letters, digits, '-', '_' and '.'".into()),
            );
            return;
        }
        let text = e.value.get_ref();
        let value = if text.eq_ignore_ascii_case("$iothubname") {
            EnrichValue::HubName
        } else if text.to_ascii_lowercase().starts_with("$twin.") {
            match self.expr(i, &e.value, 0, text) {
                Some(Ir::Twin(section, path)) => EnrichValue::Twin {
                    section,
                    path,
                    literal: text.clone(),
                },
                Some(_) => {
                    self.diag(
                        i,
                        e.value.span(),
                        "an enrichment value is a string, $iothubname or a $twin path",
                        None,
                    );
                    return;
                }
                None => return,
            }
        } else {
            EnrichValue::Static(text.clone())
        };
        let Some(eps) = self.endpoint_refs(i, &e.endpoints) else {
            return;
        };
        for ep in eps {
            self.set.enrichments[ep].push(Enrichment {
                key: key.clone(),
                value: value.clone(),
            });
        }
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub(crate) fn valid_column(n: &str) -> bool {
    n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
