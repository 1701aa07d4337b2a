//! Evaluates a condition over a batch of events at once.
//!
//! Walking a condition's tree once per event cost more than what the nodes compute: each
//! node is a call, a match on its kind and a 32-byte value moved out. Here each node is
//! visited once per batch and does its work in a loop over the batch's events.
//!
//! Every event sees exactly what [`eval`] would give it, including which parts of a
//! condition are evaluated at all: the right side of `AND` (`OR`) is evaluated only for the
//! events whose left side is not `false` (not `true`). A body is therefore parsed, and a
//! malformed one noticed, for the same events as before.

use std::borrow::Cow;

use crate::ast::BinOp;
use crate::eval::eval;
use crate::ir::Ir;
use crate::value::{self, Val};
use crate::view::MessageView;

/// Sets `out[i]` to `ir`'s value for `views[i]`.
pub fn eval_batch<'a, M: MessageView + ?Sized>(
    ir: &'a Ir,
    views: &[&'a M],
    out: &mut Vec<Val<'a>>,
) {
    out.clear();
    match ir {
        Ir::Field(slot, path) => out.extend(views.iter().map(|v| v.body_field(*slot, path))),
        Ir::Body(path) => out.extend(views.iter().map(|v| v.body_path(path))),
        Ir::Sys(p) => out.extend(
            views
                .iter()
                .map(|v| v.system(*p).map_or(Val::Undef, Val::Str)),
        ),
        Ir::App(name) => out.extend(views.iter().map(|v| {
            v.app(name)
                .map_or(Val::Undef, |s| Val::Str(Cow::Borrowed(s)))
        })),
        Ir::NumRight(op, a, n) => {
            eval_batch(a, views, out);
            for v in out.iter_mut() {
                *v = match v {
                    Val::Num(x) => value::numbers(*op, *x, *n),
                    _ => Val::Undef,
                };
            }
        }
        Ir::StrRight(op, a, s) => {
            eval_batch(a, views, out);
            for v in out.iter_mut() {
                *v = match v {
                    Val::Str(x) => value::strings(*op, x, s),
                    _ => Val::Undef,
                };
            }
        }
        Ir::Not(a) => {
            eval_batch(a, views, out);
            for v in out.iter_mut() {
                *v = match v {
                    Val::Bool(b) => Val::Bool(!*b),
                    _ => Val::Undef,
                };
            }
        }
        Ir::Bin(op @ (BinOp::And | BinOp::Or), a, b) => {
            eval_batch(a, views, out);
            // The events whose left side does not decide the result alone.
            let open = |v: &Val| match op {
                BinOp::And => !matches!(v, Val::Bool(false)),
                _ => !v.is_true(),
            };
            let pick: Vec<usize> = (0..out.len()).filter(|&i| open(&out[i])).collect();
            if pick.is_empty() {
                return;
            }
            let rest: Vec<&'a M> = pick.iter().filter_map(|&i| views.get(i).copied()).collect();
            let mut right = Vec::with_capacity(rest.len());
            eval_batch(b, &rest, &mut right);
            for (&i, r) in pick.iter().zip(&right) {
                if let Some(l) = out.get_mut(i) {
                    *l = match op {
                        BinOp::And => value::and(l, r),
                        _ => value::or(l, r),
                    };
                }
            }
        }
        // The rest (calls, `IN`, twin paths, system properties, generic operators) one
        // event at a time.
        _ => out.extend(views.iter().map(|v| eval(ir, *v))),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use weir_core::{DeviceId, Event, NoDevices};

    use super::*;
    use crate::compile::compile_str;
    use crate::view::EventView;

    #[test]
    fn a_batch_gives_each_event_what_one_at_a_time_gives_it() {
        let bodies = [
            r#"{"temp": 31, "hum": 20, "site": "plant-1", "status": "hot"}"#,
            r#"{"temp": 12.5, "hum": 70}"#,
            r#"{"temp": "31", "site": 7}"#,
            "not json",
            r#"{"Temp": 40, "temp": null}"#,
            "[1, 2]",
        ];
        let events: Vec<Event> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let id = DeviceId::parse(&format!("d{i}")).expect("id");
                let mut e = Event::telemetry(id, 0, Bytes::copy_from_slice(b.as_bytes()));
                if i % 2 == 0 {
                    e.properties = vec![("level".into(), "critical".into())];
                }
                e
            })
            .collect();
        let views: Vec<EventView> = events
            .iter()
            .map(|e| EventView::new(e, &NoDevices))
            .collect();
        let refs: Vec<&EventView> = views.iter().collect();
        for text in [
            "$body.temp > 30",
            "$body.Temp >= 30 OR level = 'critical'",
            "level = 'critical' AND $body.hum < 25",
            "NOT ($body.site = 'plant-1') AND true",
            "$body.temp * 9 / 5 + 32 > 95",
            "STARTS_WITH($body.site, 'plant-') AND $body.status != 'nominal'",
            "IS_DEFINED($body.missing) OR $body.temp IN [31, 40]",
            "$body.temp < $body.hum",
            "false AND $body.temp",
            "true OR $body.temp",
        ] {
            let ir = compile_str(text).unwrap_or_else(|e| panic!("{}", e.message));
            let mut out = Vec::new();
            eval_batch(&ir, &refs, &mut out);
            let one_by_one: Vec<Val> = views.iter().map(|v| eval(&ir, v)).collect();
            assert_eq!(out, one_by_one, "{text}");
        }
    }

    #[test]
    fn the_right_side_of_and_is_not_read_where_the_left_decides() {
        let id = DeviceId::parse("d1").expect("id");
        let mut info = Event::telemetry(id.clone(), 0, Bytes::from_static(b"{broken"));
        info.properties = vec![("level".into(), "info".into())];
        let mut critical = info.clone();
        critical.properties = vec![("level".into(), "critical".into())];
        let (a, b) = (
            EventView::new(&info, &NoDevices),
            EventView::new(&critical, &NoDevices),
        );
        let ir = compile_str("level = 'critical' AND $body.temp > 1").expect("compiles");
        let mut out = Vec::new();
        eval_batch(&ir, &[&a, &b], &mut out);
        assert_eq!(out, vec![Val::Bool(false), Val::Undef]);
        assert!(
            !a.body_is_malformed(),
            "its left side was false: body not read"
        );
        assert!(b.body_is_malformed(), "its body was read and is not JSON");
    }
}
