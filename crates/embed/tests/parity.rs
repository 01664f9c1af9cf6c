//! Parity with sentence-transformers (PyTorch) on the reference texts, alone and batched.
//! Needs the model: `make setup` (found through `ModelFiles::locate`).

use pgai_embed::{EmbedError, Embedder, ModelFiles, OnnxEmbedder, DIM, MAX_TOKENS};
use serde::Deserialize;
use std::path::Path;

const MIN_COSINE: f64 = 0.9999;

#[derive(Deserialize)]
struct Reference {
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    text: String,
    tokens: usize,
    embedding: Vec<f64>,
}

fn reference() -> Vec<Row> {
    let json = include_str!("fixtures/minilm_reference.json");
    serde_json::from_str::<Reference>(json)
        .expect("fixture parses")
        .rows
}

fn embedder() -> OnnxEmbedder {
    let files = ModelFiles::locate().unwrap_or_else(|e| panic!("{e}"));
    OnnxEmbedder::load(&files, 2).unwrap_or_else(|e| panic!("{e}"))
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * y).sum();
    let na = a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Smallest cosine between `vectors` and the reference rows `order` points at.
fn min_cosine(rows: &[Row], order: &[usize], vectors: &[Vec<f32>]) -> f64 {
    assert_eq!(vectors.len(), order.len());
    let mut min = f64::INFINITY;
    for (&i, v) in order.iter().zip(vectors) {
        assert_eq!(v.len(), DIM);
        let c = cosine(v, &rows[i].embedding);
        assert!(c >= MIN_COSINE, "cosine {c} for {:?}", rows[i].text);
        min = min.min(c);
    }
    min
}

#[test]
fn matches_sentence_transformers_alone_batched_and_shuffled() {
    let rows = reference();
    let mut model = embedder();
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();

    for row in &rows {
        assert_eq!(
            model.count_tokens(&row.text).unwrap(),
            row.tokens,
            "tokens of {:?}",
            row.text
        );
    }

    let in_order: Vec<usize> = (0..rows.len()).collect();
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| model.embed(&[t]).unwrap().remove(0))
        .collect();
    let alone_min = min_cosine(&rows, &in_order, &alone);

    let batched_min = min_cosine(&rows, &in_order, &model.embed(&texts).unwrap());

    // A fixed permutation (7 is coprime with the row count) plus repeats: long and short texts
    // mixed, so padding and masking are exercised in both directions.
    assert!(
        !rows.len().is_multiple_of(7),
        "7 must be coprime with the row count"
    );
    let mut shuffled: Vec<usize> = (0..rows.len()).map(|i| i * 7 % rows.len()).collect();
    shuffled.extend([5, 26, 0, 27]);
    let mixed: Vec<&str> = shuffled.iter().map(|&i| texts[i]).collect();
    let shuffled_min = min_cosine(&rows, &shuffled, &model.embed(&mixed).unwrap());

    let min = alone_min.min(batched_min).min(shuffled_min);
    println!(
        "min cosine vs sentence-transformers over {} texts: {min:.10} (1 - cos = {:.1e}; \
         alone {alone_min:.10}, one batch {batched_min:.10}, shuffled batch {shuffled_min:.10})",
        rows.len(),
        1.0 - min
    );
}

#[test]
fn odd_texts_embed_to_unit_vectors() {
    let mut model = embedder();
    let long = "word ".repeat(1000);
    let texts = [
        "",
        " ",
        "   \n\t ",
        "🚀",
        "🚀🔥🎉",
        "\u{200b}",
        "a",
        long.as_str(),
    ];
    let vectors = model.embed(&texts).unwrap();
    assert_eq!(vectors.len(), texts.len());
    for (text, v) in texts.iter().zip(&vectors) {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            v.iter().all(|x| x.is_finite()) && (norm - 1.0).abs() < 1e-4,
            "{text:?}: norm {norm}"
        );
    }
    assert_eq!(model.count_tokens("").unwrap(), 2);
    assert_eq!(model.count_tokens("  \n ").unwrap(), 2);
    assert_eq!(model.count_tokens(&long).unwrap(), MAX_TOKENS);
    // Whitespace is stripped by the tokenizer: it embeds exactly like the empty string.
    assert_eq!(vectors[0], vectors[1]);
    assert!(model.embed(&[]).unwrap().is_empty());
}

#[test]
fn missing_model_dir_is_one_permanent_line_naming_setup_and_path() {
    let dir = Path::new("/nonexistent/pgai-embed-model");
    let err = ModelFiles::from_dir(dir, Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, EmbedError::MissingFiles { .. }));
    assert!(err.is_permanent());
    assert!(!msg.contains('\n'), "{msg}");
    assert!(
        msg.contains("make setup") && msg.contains("/nonexistent/pgai-embed-model"),
        "{msg}"
    );
}
