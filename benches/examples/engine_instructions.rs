//! The engine benchmark's work, a fixed amount of it, for an instruction count that does
//! not depend on the machine's load: 1000 devices, ten routes, two workers, N rounds of
//! 25 600 events (the argument).
//!
//! ```text
//! cargo build --release -p weir-benches --example engine_instructions
//! valgrind --tool=callgrind target/release/examples/engine_instructions 0
//! valgrind --tool=callgrind target/release/examples/engine_instructions 4
//! ```
//!
//! The difference of the two totals over 4 × 25 600 is the instructions per event, every
//! thread's. Idle workers park rather than spin, so waiting adds little.

use std::sync::atomic::Ordering;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let rounds: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(4);
    let (engine, feed, delivered) = weir_benches::ten_route_engine(2, 1 << 16);
    let _closes = feed.close_on_drop();
    const ROUND: u64 = 25_600;
    for round in 0..rounds {
        for batch in 0..ROUND / 256 {
            let events = (0..256)
                .map(|i| {
                    let seq = round * ROUND + batch * 256 + i;
                    weir_benches::event((seq % 1000) as usize, seq)
                })
                .collect();
            feed.push(events).unwrap_or_else(|e| panic!("{e}"));
        }
        while delivered.load(Ordering::Relaxed) < (round + 1) * ROUND {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    feed.close();
    engine.join().unwrap_or_else(|e| panic!("{e}"));
}
