//! Evaluates the ten-route set over 1024 events, N times (the argument), for an
//! instruction count that does not depend on the machine's load:
//!
//! ```text
//! cargo build --release -p weir-benches --example rule_instructions
//! valgrind --tool=callgrind target/release/examples/rule_instructions 0
//! valgrind --tool=callgrind target/release/examples/rule_instructions 20
//! ```
//!
//! The events are evaluated as one batch of 1024, as the engine does; a second argument
//! `one` evaluates them one at a time.
//!
//! The difference of the two totals over 20 × 1024 is the instructions per event. On a
//! shared VM wall-clock figures moved ±20 % between runs; these do not move.

use std::hint::black_box;

use weir_core::NoDevices;
use weir_rules::Outcome;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    // `one`: an event at a time (`RuleSet::evaluate`), as before the engine evaluated
    // batches.
    let one_at_a_time = std::env::args().nth(2).as_deref() == Some("one");
    let set = weir_benches::ten_routes();
    let events: Vec<_> = (0..1024)
        .map(|i| weir_benches::event(i % 100, i as u64))
        .collect();
    let mut out = Outcome::default();
    let mut outcomes = Vec::new();
    for _ in 0..rounds {
        if one_at_a_time {
            for e in &events {
                let view = set.view(e, &NoDevices);
                set.evaluate(&view, e.source, &mut out);
                black_box(&out);
            }
        } else {
            let views: Vec<_> = events.iter().map(|e| set.view(e, &NoDevices)).collect();
            set.evaluate_batch(&views, &mut outcomes);
            black_box(&outcomes);
        }
    }
}
