//! Rough speed of OnnxEmbedder on this machine (medians; nothing asserted).
//!
//! cargo run --release -p pgai-embed --example speed [THREADS]

use std::time::{Duration, Instant};

use pgai_embed::{Embedder, ModelFiles, OnnxEmbedder};

fn median(mut f: impl FnMut(), runs: usize) -> Duration {
    f(); // warm-up
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => std::thread::available_parallelism()?.get(),
    };
    let start = Instant::now();
    let mut model = OnnxEmbedder::load(&ModelFiles::locate()?, threads)?;
    println!("load: {:?} ({threads} intra-op threads)", start.elapsed());

    let short = "PostgreSQL sends a notification when a new row is inserted.";
    let long_text =
        "Sentence number 7 talks about memory, retrieval and the cost of embeddings. ".repeat(12);
    println!(
        "short = {} tokens, long = {} tokens",
        model.count_tokens(short)?,
        model.count_tokens(&long_text)?
    );

    let one = median(|| drop(model.embed(&[short]).unwrap()), 50);
    println!("one short sentence: {:.2} ms", one.as_secs_f64() * 1e3);

    let shorts = vec![short; 32];
    let batch = median(|| drop(model.embed(&shorts).unwrap()), 15);
    println!(
        "batch of 32 short: {:.1} ms = {:.0} texts/s",
        batch.as_secs_f64() * 1e3,
        32.0 / batch.as_secs_f64()
    );

    let longs = vec![long_text.as_str(); 32];
    let batch = median(|| drop(model.embed(&longs).unwrap()), 3);
    println!(
        "batch of 32 long: {:.0} ms = {:.1} texts/s",
        batch.as_secs_f64() * 1e3,
        32.0 / batch.as_secs_f64()
    );
    Ok(())
}
