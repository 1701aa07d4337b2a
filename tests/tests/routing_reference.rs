//! The engine (compiled rules inside the timely dataflow, two workers) must route every
//! event exactly as the naive reference evaluator says, for random rules and events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};
use weir_core::{DeviceId, DeviceRecord, Event};
use weir_rules::ast::{BinOp, Expr, ExprKind, Lit, Seg};
use weir_rules::interp::{RefMessage, routes};
use weir_rules::{SourceFile, load_sources, parse::parse};

fn e(kind: ExprKind) -> Expr {
    Expr { kind, span: 0..0 }
}

fn lit() -> impl Strategy<Value = Lit> {
    prop_oneof![
        (-1i32..6).prop_map(|n| Lit::Num(n as f64)),
        (0u8..4).prop_map(|n| Lit::Num(n as f64 + 0.5)),
        prop::sample::select(vec![
            "high",
            "low",
            "d1",
            "application/json",
            "",
            "HIGH",
            "m1",
            "hi\"gh"
        ])
        .prop_map(|s| Lit::Str(s.into())),
        any::<bool>().prop_map(Lit::Bool),
        Just(Lit::Null),
        Just(Lit::Undefined),
    ]
}

fn field(s: &str) -> Seg {
    Seg::Field(s.into())
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        lit().prop_map(|l| e(ExprKind::Lit(l))),
        prop::sample::select(vec!["level", "Level", "a", "b", "missing"])
            .prop_map(|n| e(ExprKind::App(n.into()))),
        prop::sample::select(vec![
            "messageId",
            "contentType",
            "connectionDeviceId",
            "CONTENTTYPE",
            "level",
            "correlationId"
        ])
        .prop_map(|n| e(ExprKind::Sys(n.into()))),
        prop::sample::select(vec![
            vec![field("temp")],
            vec![field("Temp")],
            vec![field("hum")],
            vec![field("nested"), field("x")],
            vec![field("arr"), Seg::Index(0)],
            vec![field("arr"), Seg::Index(5)],
            vec![field("label")],
            vec![field("nested")],
        ])
        .prop_map(|p| e(ExprKind::Body(p))),
        prop::sample::select(vec!["site", "floor", "Site"])
            .prop_map(|t| e(ExprKind::Twin(vec![field("tags"), field(t)]))),
    ]
}

fn comparison_op() -> impl Strategy<Value = BinOp> {
    let ops: Vec<BinOp> = BinOp::ALL
        .into_iter()
        .filter(|o| o.is_comparison())
        .collect();
    prop::sample::select(ops)
}

/// A reference compared with a literal: the shape most real conditions have, and the one
/// where off-by-one mistakes in comparisons show.
fn comparison() -> impl Strategy<Value = Expr> {
    let op = comparison_op();
    (leaf(), op, lit()).prop_map(|(a, op, l)| {
        e(ExprKind::Bin(
            op,
            Box::new(a),
            Box::new(e(ExprKind::Lit(l))),
        ))
    })
}

/// A numeric field against a nearby number: boundaries (equal values) come up often.
fn numeric_comparison() -> impl Strategy<Value = Expr> {
    let op = comparison_op();
    let lhs =
        prop::sample::select(vec!["temp", "hum"]).prop_map(|f| e(ExprKind::Body(vec![field(f)])));
    (lhs, op, 0i32..4).prop_map(|(a, op, n)| {
        e(ExprKind::Bin(
            op,
            Box::new(a),
            Box::new(e(ExprKind::Lit(Lit::Num(n as f64)))),
        ))
    })
}

fn expr() -> impl Strategy<Value = Expr> {
    let base = prop_oneof![2 => comparison(), 1 => leaf()];
    base.prop_recursive(4, 24, 3, |inner| {
        let binop = prop::sample::select(BinOp::ALL.to_vec());
        let unary_fn = prop::sample::select(vec![
            "ABS",
            "EXP",
            "SQUARE",
            "CEILING",
            "FLOOR",
            "SIGN",
            "SQRT",
            "AS_NUMBER",
            "IS_ARRAY",
            "IS_BOOL",
            "IS_DEFINED",
            "IS_NULL",
            "IS_NUMBER",
            "IS_OBJECT",
            "IS_PRIMITIVE",
            "IS_STRING",
            "LENGTH",
            "lower",
            "Upper",
        ]);
        let binary_fn = prop::sample::select(vec![
            "POWER",
            "INDEX_OF",
            "STARTS_WITH",
            "ENDS_WITH",
            "CONTAINS",
            "CONCAT",
            "SUBSTRING",
        ]);
        prop_oneof![
            (binop, inner.clone(), inner.clone()).prop_map(|(op, a, b)| e(ExprKind::Bin(
                op,
                Box::new(a),
                Box::new(b)
            ))),
            inner.clone().prop_map(|a| e(ExprKind::Not(Box::new(a)))),
            inner.clone().prop_map(|a| e(ExprKind::Neg(Box::new(a)))),
            (unary_fn, inner.clone()).prop_map(|(f, a)| e(ExprKind::Call(f.into(), vec![a]))),
            (binary_fn, inner.clone(), inner.clone())
                .prop_map(|(f, a, b)| e(ExprKind::Call(f.into(), vec![a, b]))),
            (
                inner.clone(),
                prop::collection::vec(
                    lit().prop_filter("no undefined in lists", |l| *l != Lit::Undefined),
                    0..4
                ),
                any::<bool>()
            )
                .prop_map(|(a, items, neg)| e(ExprKind::In(Box::new(a), items, neg))),
            (inner.clone(), inner.clone(), inner)
                .prop_map(|(a, b, c)| e(ExprKind::Call("SUBSTRING".into(), vec![a, b, c]))),
        ]
    })
}

#[derive(Debug, Clone)]
struct Msg {
    device: String,
    props: Vec<(String, String)>,
    content_type: Option<String>,
    message_id: Option<String>,
    body: Vec<u8>,
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let num = prop_oneof![3 => (0i32..4).prop_map(|n| json!(n)), 1 => (-1i32..6).prop_map(|n| json!(n)), 1 => (0u8..9).prop_map(|n| json!(n as f64 / 2.0)), 1 => Just(json!("3")), 1 => Just(json!(null))];
    prop_oneof![
        (
            num.clone(),
            num,
            prop::option::of(prop::sample::select(vec![
                "high",
                "low",
                "HIGH",
                "hi\"gh",
                "back\\slash"
            ])),
            any::<bool>()
        )
            .prop_map(|(t, h, label, nested)| {
                let mut m = serde_json::Map::new();
                m.insert("temp".into(), t);
                m.insert("hum".into(), h);
                if let Some(l) = label {
                    m.insert("label".into(), json!(l));
                }
                if nested {
                    m.insert("nested".into(), json!({"x": 3}));
                    m.insert("arr".into(), json!([1, "two", null]));
                }
                Value::Object(m).to_string().into_bytes()
            }),
        Just(b"not json".to_vec()),
        Just(b"[1,2]".to_vec()),
        // Keys that repeat or differ only in case: the last of equal keys counts, and a
        // path matches its exact key first, else the smallest that differs in case.
        prop::sample::select(vec![
            r#"{"temp": 1, "Temp": 2}"#,
            r#"{"TEMP": 3, "Temp": 2, "temp": 1}"#,
            r#"{"Temp": 1, "TEMP": 2, "Temp": 3}"#,
            r#"{"temp": 1, "temp": 2, "HUM": 0}"#,
            r#"{"Nested": {"x": 1}, "nested": {"x": 3}, "NESTED": 2}"#,
        ])
        .prop_map(|b| b.as_bytes().to_vec()),
    ]
}

fn msg() -> impl Strategy<Value = Msg> {
    (
        prop::sample::select(vec!["d1", "d2", "d3", "lab-1"]),
        prop::collection::vec(
            (
                prop::sample::select(vec!["level", "a", "b", "LEVEL"]),
                prop::sample::select(vec!["high", "low", "1", "HIGH", ""]),
            ),
            0..3,
        ),
        prop::option::of(prop::sample::select(vec![
            "application/json",
            "text/plain",
            "Application/JSON; charset=utf-8",
        ])),
        prop::option::of(prop::sample::select(vec!["m1", "m2"])),
        body(),
    )
        .prop_map(|(device, props, content_type, message_id, body)| {
            let mut seen: Vec<(String, String)> = Vec::new();
            for (k, v) in props {
                if !seen.iter().any(|(s, _)| s.eq_ignore_ascii_case(k)) {
                    seen.push((k.to_string(), v.to_string()));
                }
            }
            Msg {
                device: device.into(),
                props: seen,
                content_type: content_type.map(Into::into),
                message_id: message_id.map(Into::into),
                body,
            }
        })
}

fn tags() -> HashMap<String, Value> {
    HashMap::from([
        ("d1".to_string(), json!({"site": "plant-1", "floor": 3})),
        ("d2".to_string(), json!({"site": "berlin"})),
    ])
}

fn reference(m: &Msg) -> RefMessage {
    let mut system = BTreeMap::new();
    system.insert("connectiondeviceid".to_string(), m.device.clone());
    if let Some(ct) = &m.content_type {
        system.insert("contenttype".to_string(), ct.clone());
    }
    if let Some(id) = &m.message_id {
        system.insert("messageid".to_string(), id.clone());
    }
    let json_allowed = m
        .content_type
        .as_ref()
        .is_none_or(|c| c.to_lowercase().contains("json"));
    RefMessage {
        system,
        app: m.props.clone(),
        body: if json_allowed {
            serde_json::from_slice(&m.body).ok()
        } else {
            None
        },
        tags: tags().get(&m.device).cloned(),
        desired: None,
        reported: None,
    }
}

fn toml_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// Conditions shaped like real ones: boolean combinations of comparisons and predicates,
/// with an arbitrary expression thrown in now and then.
fn condition() -> impl Strategy<Value = Expr> {
    let predicate = prop_oneof![
        4 => comparison(),
        4 => numeric_comparison(),
        1 => (expr(), prop::sample::select(vec![BinOp::Eq, BinOp::Lt, BinOp::Ge]), lit())
            .prop_map(|(a, op, l)| e(ExprKind::Bin(op, Box::new(a), Box::new(e(ExprKind::Lit(l)))))),
        1 => (prop::sample::select(vec!["IS_DEFINED", "IS_NUMBER", "IS_STRING", "is_null"]), leaf())
            .prop_map(|(f, a)| e(ExprKind::Call(f.into(), vec![a]))),
        1 => (prop::sample::select(vec!["STARTS_WITH", "CONTAINS", "ENDS_WITH"]), leaf(), lit())
            .prop_map(|(f, a, l)| e(ExprKind::Call(f.into(), vec![a, e(ExprKind::Lit(l))]))),
        1 => (leaf(), prop::collection::vec(lit().prop_filter("no undefined", |l| *l != Lit::Undefined), 1..4), any::<bool>())
            .prop_map(|(a, items, neg)| e(ExprKind::In(Box::new(a), items, neg))),
        1 => expr(),
    ];
    predicate.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| e(ExprKind::Bin(
                BinOp::And,
                Box::new(a),
                Box::new(b)
            ))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| e(ExprKind::Bin(
                BinOp::Or,
                Box::new(a),
                Box::new(b)
            ))),
            inner.prop_map(|a| e(ExprKind::Not(Box::new(a)))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn engine_routes_like_the_reference(
        conditions in prop::collection::vec(condition(), 1..5),
        targets in prop::collection::vec(prop::collection::btree_set(0usize..3, 1..3), 4),
        fallback in any::<bool>(),
        msgs in prop::collection::vec(msg(), 1..24),
    ) {
        let mut text = String::new();
        for i in 0..4 {
            text += &format!("[[endpoint]]\nname = \"e{i}\"\ntype = \"parquet\"\n");
        }
        for (i, c) in conditions.iter().enumerate() {
            let eps: Vec<String> = targets[i].iter().map(|t| format!("\"e{t}\"")).collect();
            text += &format!("[[route]]\nname = \"r{i}\"\ncondition = {}\nendpoints = [{}]\n", toml_string(&c.to_string()), eps.join(", "));
        }
        if fallback {
            text += "[fallback]\nendpoints = [\"e3\"]\n";
        }
        let set = load_sources(&[SourceFile { name: "p.toml".into(), path: "p.toml".into(), text: Arc::from(text.as_str()) }], "hub", &weir_storage::Catalog)
            .map_err(|d| TestCaseError::fail(format!("{}\n{text}", d[0])))?;
        // What the printed condition parses back to is what the reference evaluates.
        let parsed: Vec<Expr> = conditions.iter().map(|c| parse(&c.to_string()).expect("printed conditions parse")).collect();

        let directory: HashMap<String, Arc<DeviceRecord>> = tags()
            .into_iter()
            .map(|(id, t)| (id.clone(), Arc::new(DeviceRecord::with_tags(&id, t))))
            .collect();
        let events: Vec<Event> = msgs.iter().enumerate().map(|(i, m)| {
            let mut ev = Event::telemetry(DeviceId::parse(&m.device).expect("id"), 1_700_000_000_000 + i as i64, Bytes::from(m.body.clone()));
            ev.offset = i as u64;
            ev.properties = m.props.clone();
            ev.system.content_type = m.content_type.as_deref().map(Box::from);
            ev.system.message_id = m.message_id.as_deref().map(Box::from);
            ev
        }).collect();
        let out = weir_engine::harness::run(events, set, Arc::new(directory), 2).expect("engine runs");
        prop_assert_eq!(out.traces.len(), msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            let r = reference(m);
            let matched: Vec<usize> = parsed.iter().enumerate().filter(|(_, c)| routes(c, &r)).map(|(j, _)| j).collect();
            let mut endpoints: Vec<usize> = matched.iter().flat_map(|j| targets[*j].iter().copied()).collect();
            let fell_back = matched.is_empty() && fallback;
            if fell_back {
                endpoints.push(3);
            }
            endpoints.sort_unstable();
            endpoints.dedup();
            let t = &out.traces[i];
            let got_routes: Vec<String> = t.routes.clone();
            let want_routes: Vec<String> = matched.iter().map(|j| format!("r{j}")).collect();
            prop_assert_eq!(&got_routes, &want_routes, "event {:?}\nconditions {:?}", m, conditions.iter().map(ToString::to_string).collect::<Vec<_>>());
            let want_eps: Vec<String> = endpoints.iter().map(|x| format!("e{x}")).collect();
            prop_assert_eq!(&t.endpoints, &want_eps);
            prop_assert_eq!(t.fallback, fell_back);
            let delivered = out.deliveries.iter().filter(|d| d.delivery.event.offset == i as u64).count();
            prop_assert_eq!(delivered, want_eps.len());
        }
    }
}
