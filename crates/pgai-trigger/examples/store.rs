//! The library API end to end: open a store from settings (file + environment), create the
//! schema, start the daemon, add texts, search them, print the processing stats.
//!
//! ```sh
//! pgai-trigger up &                       # or any PostgreSQL with pgvector
//! DATABASE_URL=…                          # the DATABASE_URL line `up` printed
//! cargo run --release -p pgai-trigger --example store
//! ```

use std::time::Duration;

use pgai_trigger::Settings;
use pgai_trigger::{NewItem, StoreFactory};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ./pgai-trigger.yaml or $PGAI_CONFIG when present, then DATABASE_URL, PGAI_* variables.
    let settings = Settings::load(None)?;
    let store = StoreFactory::create(&settings).await?;
    println!("mode: {:?}", store.mode());
    store.initialize().await?;

    for (id, text, user) in [
        ("ex-1", "I had coffee with Maria on Tuesday", "maria"),
        ("ex-2", "Maria prefers espresso to filter coffee", "maria"),
        (
            "ex-3",
            "The quarterly revenue grew by ten percent",
            "finance",
        ),
    ] {
        let item = store
            .add_and_wait(
                NewItem::new(text).id(id).metadata(json!({ "user": user })),
                Duration::from_secs(30),
            )
            .await?;
        println!(
            "{} embedded in {:.1} ms",
            item.id,
            item.latency_ms.unwrap_or_default()
        );
    }

    for hit in store.search("coffee with Maria", 3, None).await? {
        println!("{:.3}  {:5}  {}", hit.score, hit.id, hit.content);
    }
    let only_finance = store
        .search("coffee", 3, Some(&json!({ "user": "finance" })))
        .await?;
    println!(
        "filtered: {:?}",
        only_finance.iter().map(|h| &h.id).collect::<Vec<_>>()
    );

    println!(
        "{}",
        serde_json::to_string_pretty(&store.processing_stats().await?)?
    );
    println!("health: {:?}", store.health_status().await.status);
    store.close().await;
    Ok(())
}
