//! A compiled, validated set of rules and the routing decision for one event.

use std::path::PathBuf;
use std::sync::Arc;

use weir_core::{ColumnType, ColumnValue, Delivery, EndpointSpec, Event, EventSource};

use crate::ast::Seg;
use crate::eval::{eval, walk};
use crate::ir::Ir;
use crate::value::Val;
use crate::view::{EventView, MessageView, TwinSection};

/// A route: a condition over one source, and where matching events go.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    pub source: EventSource,
    pub condition: Ir,
    pub condition_text: String,
    /// Indexes into [`RuleSet::endpoints`].
    pub endpoints: Vec<usize>,
    pub enabled: bool,
    /// 0..=9 (default [`weir_core::DEFAULT_PRIORITY`]).
    pub priority: u8,
}

/// What an enrichment stamps.
#[derive(Debug, Clone, PartialEq)]
pub enum EnrichValue {
    Static(String),
    HubName,
    /// A twin path; `literal` is stamped when the path does not exist.
    Twin {
        section: TwinSection,
        path: Vec<Seg>,
        literal: String,
    },
}

#[derive(Debug, Clone)]
pub struct Enrichment {
    pub key: String,
    pub value: EnrichValue,
}

/// Rules compiled from a directory of files.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub endpoints: Vec<Arc<EndpointSpec>>,
    /// Per endpoint, one expression per typed column.
    pub(crate) columns: Vec<Vec<Ir>>,
    pub routes: Vec<Route>,
    pub fallback: Vec<usize>,
    /// Per endpoint, the enrichments that apply to it.
    pub(crate) enrichments: Vec<Vec<Enrichment>>,
    pub insights: Vec<crate::insight::Insight>,
    /// The top-level body fields the set's expressions read, numbered by
    /// [`RuleSet::number_body_fields`]; `Ir::Field` refers to them by position.
    pub(crate) body_fields: crate::body::FieldTable,
    pub hub_name: String,
    /// The files this set was built from.
    pub files: Vec<PathBuf>,
    /// A short hash of the files' names and contents: the same directory always has the
    /// same version, wherever it is loaded from (see [`crate::load::version_of`]).
    pub version: Arc<str>,
}

/// The route name of deliveries that no route matched.
const FALLBACK: &str = "$fallback";
/// The route name of dead letters.
const DEAD_LETTER: &str = "$deadLetter";

/// One worker's copies of what deliveries share (see [`RuleSet::names`]).
#[derive(Debug, Clone)]
pub struct Names {
    /// The rule set's version.
    pub version: Arc<str>,
    /// Per route, its name.
    pub routes: Vec<Arc<str>>,
    pub fallback: Arc<str>,
    pub dead_letter: Arc<str>,
    /// Per endpoint, its spec.
    pub endpoints: Vec<Arc<EndpointSpec>>,
}

/// The routing decision for one event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Indexes of the routes whose condition was true.
    pub routes: Vec<usize>,
    /// Indexes of the endpoints the event goes to, each once, in ascending order.
    pub endpoints: Vec<usize>,
    /// True when no route matched and the fallback applied.
    pub fallback: bool,
    /// True when the event is a dead letter, addressed to one endpoint whatever the routes.
    pub dead_letter: bool,
}

impl Outcome {
    pub fn clear(&mut self) {
        self.routes.clear();
        self.endpoints.clear();
        self.fallback = false;
        self.dead_letter = false;
    }
}

impl RuleSet {
    pub fn endpoint_index(&self, name: &str) -> Option<usize> {
        self.endpoints.iter().position(|e| &*e.name == name)
    }

    /// Gives every top-level body field that a route, column or insight reads a number,
    /// and has the expressions read it by number (`Ir::Body` → `Ir::Field`). A view made
    /// by [`RuleSet::view`] then finds all of them in the one pass that validates the
    /// body, where searching the body's fields by name for each read was a quarter of the
    /// cost of routing an event.
    pub(crate) fn number_body_fields(&mut self) {
        let fields = &mut self.body_fields;
        let mut number = |ir: &mut Ir| {
            let Ir::Body(path) = ir else { return };
            let Some(Seg::Field(name)) = path.first() else {
                return;
            };
            if let Some(slot) = fields.slot(name) {
                *ir = Ir::Field(slot, std::mem::take(path));
            }
        };
        let routes = self.routes.iter_mut().map(|r| &mut r.condition);
        let columns = self.columns.iter_mut().flatten();
        let insights = self.insights.iter_mut().flat_map(|i| i.exprs_mut());
        for ir in routes.chain(columns).chain(insights) {
            ir.visit_mut(&mut number);
        }
    }

    /// The view of `event` this set's expressions are evaluated against.
    pub fn view<'a>(
        &'a self,
        event: &'a Event,
        directory: &'a dyn weir_core::DeviceDirectory,
    ) -> EventView<'a> {
        EventView::new(event, directory).reading(&self.body_fields)
    }

    /// True when any route or column reads the body, so the engine knows whether a
    /// malformed body matters.
    pub fn reads_body(&self) -> bool {
        self.routes.iter().any(|r| r.condition.reads_body())
            || self.columns.iter().flatten().any(Ir::reads_body)
    }

    /// True when any route condition, typed column or enrichment reads the device's twin
    /// tags: the engine then gives each event the tags as of its position in the log.
    pub fn reads_tags(&self) -> bool {
        self.routes.iter().any(|r| r.condition.reads_tags())
            || self.columns.iter().flatten().any(Ir::reads_tags)
            || self.enrichments.iter().flatten().any(|e| {
                matches!(
                    e.value,
                    EnrichValue::Twin {
                        section: TwinSection::Tags,
                        ..
                    }
                )
            })
    }

    /// Decides where `event` goes: a dead letter to the endpoint it names (when the rules
    /// still define it), anything else as [`RuleSet::evaluate`] says.
    pub fn evaluate_event<M: MessageView + ?Sized>(
        &self,
        view: &M,
        event: &Event,
        out: &mut Outcome,
    ) {
        let Some(target) = &event.dead_letter else {
            return self.evaluate(view, event.source, out);
        };
        out.clear();
        self.dead_letter(target, out);
    }

    /// Decides where `view`'s event goes. A message goes to every endpoint of every
    /// enabled route whose condition is true, once per endpoint; device messages that
    /// match no route go to the fallback endpoints.
    pub fn evaluate<M: MessageView + ?Sized>(
        &self,
        view: &M,
        source: EventSource,
        out: &mut Outcome,
    ) {
        out.clear();
        for (i, r) in self.routes.iter().enumerate() {
            if r.enabled && r.source == source && eval(&r.condition, view).is_true() {
                out.routes.push(i);
                out.endpoints.extend_from_slice(&r.endpoints);
            }
        }
        self.settle(source, out);
    }

    /// Addresses a dead letter to the endpoint it names, when the rules still define it.
    fn dead_letter(&self, target: &str, out: &mut Outcome) {
        out.dead_letter = true;
        out.endpoints.extend(self.endpoint_index(target));
    }

    /// Completes the outcome of an event whose matching routes are in `out`: the fallback
    /// for a device message no route matched, and each endpoint once, in order.
    #[inline]
    fn settle(&self, source: EventSource, out: &mut Outcome) {
        if out.routes.is_empty() && source == EventSource::DeviceMessages {
            out.fallback = !self.fallback.is_empty();
            out.endpoints.extend_from_slice(&self.fallback);
        }
        out.endpoints.sort_unstable();
        out.endpoints.dedup();
    }

    /// [`RuleSet::evaluate_event`] for each of `views` (made by [`RuleSet::view`]), into
    /// `out` (one outcome per view): the same outcomes, but each route's condition is
    /// evaluated over the batch at once (see [`crate::batch`]).
    pub fn evaluate_batch(&self, views: &[EventView<'_>], out: &mut Vec<Outcome>) {
        out.resize_with(views.len(), Outcome::default);
        out.iter_mut().for_each(Outcome::clear);
        // Per source, the events that are not dead letters, by index: a route evaluates
        // its condition on its source's.
        let mut groups: Vec<(EventSource, Vec<usize>, Vec<&EventView<'_>>)> = Vec::new();
        for (i, v) in views.iter().enumerate() {
            let e = v.event();
            if e.dead_letter.is_some() {
                continue;
            }
            match groups.iter_mut().find(|(s, ..)| *s == e.source) {
                Some((_, index, picked)) => {
                    index.push(i);
                    picked.push(v);
                }
                None => groups.push((e.source, vec![i], vec![v])),
            }
        }
        let mut values = Vec::new();
        for (r, route) in self.routes.iter().enumerate() {
            let group = groups.iter().find(|(s, ..)| *s == route.source);
            let (true, Some((_, index, picked))) = (route.enabled, group) else {
                continue;
            };
            crate::batch::eval_batch(&route.condition, picked, &mut values);
            for (&i, v) in index.iter().zip(&values) {
                if let (true, Some(o)) = (v.is_true(), out.get_mut(i)) {
                    o.routes.push(r);
                    o.endpoints.extend_from_slice(&route.endpoints);
                }
            }
        }
        for (v, o) in views.iter().zip(out.iter_mut()) {
            let e = v.event();
            match &e.dead_letter {
                Some(target) => self.dead_letter(target, o),
                None => self.settle(e.source, o),
            }
        }
    }

    /// The highest priority of the routes of `outcome` that send the event to `endpoint`:
    /// what one route wants kept is kept.
    pub fn priority_to(&self, endpoint: usize, outcome: &Outcome) -> u8 {
        outcome
            .routes
            .iter()
            .filter_map(|&r| self.routes.get(r))
            .filter(|r| r.endpoints.contains(&endpoint))
            .map(|r| r.priority)
            .max()
            .unwrap_or(weir_core::DEFAULT_PRIORITY)
    }

    /// The name of the first route of `outcome` that sends the event to `endpoint`, or
    /// `$fallback` (`$deadLetter` for a dead letter), as one of `names`.
    pub fn route_to<'n>(
        &self,
        names: &'n Names,
        endpoint: usize,
        outcome: &Outcome,
    ) -> &'n Arc<str> {
        if outcome.dead_letter {
            return &names.dead_letter;
        }
        outcome
            .routes
            .iter()
            .find(|&&r| {
                self.routes
                    .get(r)
                    .is_some_and(|r| r.endpoints.contains(&endpoint))
            })
            .and_then(|&r| names.routes.get(r))
            .unwrap_or(&names.fallback)
    }

    /// Copies of the strings and endpoint specs every delivery points at, for one worker.
    /// Each delivery clones several of them: with every worker cloning the same `Arc`s,
    /// their reference counts moved between cores on every event.
    pub fn names(&self) -> Names {
        Names {
            version: Arc::from(&*self.version),
            routes: self.routes.iter().map(|r| Arc::from(&*r.name)).collect(),
            fallback: Arc::from(FALLBACK),
            dead_letter: Arc::from(DEAD_LETTER),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| Arc::new(EndpointSpec::clone(e)))
                .collect(),
        }
    }

    /// Builds what `endpoint` receives for this event (as `outcome` decided): its
    /// enrichments, typed columns and the route that sent it. `names` comes from
    /// [`RuleSet::names`] of this rule set.
    pub fn delivery(
        &self,
        names: &Names,
        endpoint: usize,
        outcome: &Outcome,
        view: &EventView<'_>,
        event: &Arc<Event>,
    ) -> Delivery {
        let enrichments = self
            .enrichments
            .get(endpoint)
            .map_or_else(Vec::new, |list| {
                list.iter()
                    .map(|e| (e.key.clone(), self.enrichment_value(&e.value, view)))
                    .collect()
            });
        let columns = match (self.columns.get(endpoint), self.endpoints.get(endpoint)) {
            (Some(exprs), Some(spec)) => exprs
                .iter()
                .zip(&spec.columns)
                .map(|(ir, col)| column_value(col.ty, eval(ir, view)))
                .collect(),
            _ => Vec::new(),
        };
        Delivery {
            event: Arc::clone(event),
            enrichments,
            columns,
            rules_version: Arc::clone(&names.version),
            route: Arc::clone(self.route_to(names, endpoint, outcome)),
            priority: self.priority_to(endpoint, outcome),
        }
    }

    fn enrichment_value(&self, v: &EnrichValue, view: &dyn MessageView) -> String {
        match v {
            EnrichValue::Static(s) => s.clone(),
            EnrichValue::HubName => self.hub_name.clone(),
            EnrichValue::Twin {
                section,
                path,
                literal,
            } => match view.twin(*section).and_then(|t| walk(t, path)) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => literal.clone(),
            },
        }
    }
}

/// Converts an expression value to a typed column value: `Null` when undefined or of
/// the wrong type.
pub fn column_value(ty: ColumnType, v: Val<'_>) -> ColumnValue {
    match (ty, v) {
        (ColumnType::Double, Val::Num(n)) => ColumnValue::Double(n),
        (ColumnType::Int64, Val::Num(n))
            if n.fract() == 0.0 && n >= i64::MIN as f64 && n <= i64::MAX as f64 =>
        {
            ColumnValue::Int64(n as i64)
        }
        (ColumnType::String, Val::Str(s)) => ColumnValue::String(s.into_owned()),
        (ColumnType::Bool, Val::Bool(b)) => ColumnValue::Bool(b),
        (ColumnType::Timestamp, Val::Num(n)) if n.is_finite() => ColumnValue::Timestamp(n as i64),
        (ColumnType::Timestamp, Val::Str(s)) => chrono::DateTime::parse_from_rfc3339(&s)
            .map_or(ColumnValue::Null, |t| {
                ColumnValue::Timestamp(t.timestamp_millis())
            }),
        _ => ColumnValue::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_columns_are_null_when_the_type_is_wrong() {
        assert_eq!(
            column_value(ColumnType::Int64, Val::Num(3.0)),
            ColumnValue::Int64(3)
        );
        assert_eq!(
            column_value(ColumnType::Int64, Val::Num(3.5)),
            ColumnValue::Null
        );
        assert_eq!(
            column_value(ColumnType::Double, Val::Str("3".into())),
            ColumnValue::Null
        );
        assert_eq!(
            column_value(ColumnType::String, Val::Undef),
            ColumnValue::Null
        );
        assert_eq!(
            column_value(
                ColumnType::Timestamp,
                Val::Str("2026-01-02T03:04:05Z".into())
            ),
            ColumnValue::Timestamp(1_767_323_045_000)
        );
    }
}
