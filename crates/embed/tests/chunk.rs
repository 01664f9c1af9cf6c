//! The chunker with the model's real tokenizer: every chunk, re-encoded alone, fits; chunks
//! cover the text in order with the requested overlap; cuts fall where the text allows.
//! Needs the model: `make setup` (found through `ModelFiles::locate`).

use pgai_embed::{Chunk, ChunkOptions, Chunker, Embedder, ModelFiles, OnnxEmbedder, MAX_TOKENS};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

const LICENCES: &str = "/usr/share/common-licenses";

fn chunker() -> &'static Chunker {
    static CHUNKER: OnceLock<Chunker> = OnceLock::new();
    CHUNKER.get_or_init(|| {
        let files = ModelFiles::locate().unwrap_or_else(|e| panic!("{e}"));
        Chunker::from_files(&files).unwrap_or_else(|e| panic!("{e}"))
    })
}

fn opts(max_tokens: usize, overlap_tokens: usize) -> ChunkOptions {
    ChunkOptions::new(max_tokens, overlap_tokens).unwrap_or_else(|e| panic!("{e}"))
}

fn licence(name: &str) -> String {
    let path = Path::new(LICENCES).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every licence text once (the directory has links to some of them).
fn licences() -> Vec<(PathBuf, String)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(LICENCES)
        .unwrap_or_else(|e| panic!("{LICENCES}: {e}"))
        .map(|e| e.unwrap().path().canonicalize().unwrap())
        .collect();
    paths.sort();
    paths.dedup();
    let texts: Vec<(PathBuf, String)> = paths
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(&p).ok().map(|t| (p, t)))
        .collect();
    assert!(texts.len() >= 10, "{LICENCES} has too few texts");
    texts
}

fn tokens(text: &str) -> usize {
    chunker().count_tokens(text).unwrap()
}

/// Splits `text` and checks what holds for every text: each chunk is its slice of the text,
/// trimmed, and fits when encoded alone; chunks advance; consecutive chunks share at most
/// `overlap_tokens` pieces (and some, when asked and the text has a boundary there); every
/// non-whitespace byte is in a chunk; splitting again gives the same chunks.
fn check(text: &str, opts: &ChunkOptions) -> Vec<Chunk> {
    let chunks = chunker().split(text, opts).unwrap();
    assert!(!chunks.is_empty());
    assert_eq!(
        chunker().split(text, opts).unwrap(),
        chunks,
        "deterministic"
    );
    let mut covered = vec![false; text.len()];
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk.text, &text[chunk.start..chunk.end], "chunk {i}");
        assert_eq!(chunk.text, chunk.text.trim(), "chunk {i} is trimmed");
        let n = tokens(&chunk.text);
        assert!(
            n <= opts.max_tokens(),
            "chunk {i} has {n} > {} pieces: {:?}",
            opts.max_tokens(),
            chunk.text
        );
        covered[chunk.start..chunk.end].fill(true);
    }
    for pair in chunks.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        assert!(
            next.start > prev.start && next.end > prev.end,
            "{prev:?} {next:?}"
        );
        if next.start < prev.end {
            let shared = tokens(&text[next.start..prev.end]) - 2;
            assert!(
                shared <= opts.overlap_tokens(),
                "{shared} pieces shared > {}: {:?}",
                opts.overlap_tokens(),
                &text[next.start..prev.end]
            );
        }
    }
    for (i, ch) in text.char_indices() {
        assert!(
            ch.is_whitespace() || covered[i],
            "byte {i} ({ch:?}) is in no chunk"
        );
    }
    chunks
}

/// Pieces consecutive chunks share, one entry per pair.
fn overlaps(text: &str, chunks: &[Chunk]) -> Vec<usize> {
    chunks
        .windows(2)
        .map(|p| {
            if p[1].start < p[0].end {
                tokens(&text[p[1].start..p[0].end]) - 2
            } else {
                0
            }
        })
        .collect()
}

/// Every chunk starts and ends next to whitespace (or the text's edge).
fn assert_word_aligned(text: &str, chunks: &[Chunk]) {
    assert_aligned(text, chunks, false);
}

/// Every chunk starts and ends next to whitespace, or, with `symbols`, inside a run of
/// punctuation or symbols, where texts like MPL's `-----` and `*****` lines leave no choice.
fn assert_aligned(text: &str, chunks: &[Chunk], symbols: bool) {
    let fine = |at: usize| {
        let before = text[..at].chars().next_back();
        let after = text[at..].chars().next();
        let (Some(before), Some(after)) = (before, after) else {
            return true;
        };
        before.is_whitespace()
            || after.is_whitespace()
            || symbols && !before.is_alphanumeric() && !after.is_alphanumeric()
    };
    for c in chunks {
        assert!(
            fine(c.start) && fine(c.end),
            "not at word boundaries: {:?} | {:?} | {:?}",
            &text[c.start.saturating_sub(10)..c.start],
            c.text,
            &text[c.end..(c.end + 10).min(text.len())]
        );
    }
}

/// Whether `end` closes a paragraph or a sentence of `text`.
fn at_sentence_end(text: &str, end: usize) -> bool {
    let (before, after) = text.split_at(end);
    let closers = ['"', '\'', ')', ']', '\u{201D}', '\u{2019}'];
    let last = before.trim_end_matches(closers).chars().next_back();
    let rest = after.trim_start_matches([' ', '\t', '\r']);
    let blank_line = rest.starts_with('\n')
        && rest[1..]
            .trim_start_matches([' ', '\t', '\r'])
            .starts_with('\n');
    let stop = matches!(last, Some('.' | '!' | '?' | '\u{061F}'))
        && after.chars().next().is_none_or(char::is_whitespace)
        || matches!(last, Some('\u{3002}' | '\u{FF01}' | '\u{FF1F}'));
    blank_line || stop || after.starts_with('\u{000C}')
}

fn sentence_end_share(text: &str, chunks: &[Chunk]) -> f64 {
    let inner = &chunks[..chunks.len() - 1];
    let ends = inner
        .iter()
        .filter(|c| at_sentence_end(text, c.end))
        .count();
    ends as f64 / inner.len() as f64
}

#[test]
fn licences_split_within_the_limit_in_order_covering_everything() {
    for (path, text) in licences() {
        for opts in [opts(256, 32), opts(128, 16), opts(64, 0), opts(48, 20)] {
            let chunks = check(&text, &opts);
            assert_aligned(&text, &chunks, true);
            let shared = overlaps(&text, &chunks);
            if opts.overlap_tokens() == 0 {
                assert!(shared.iter().all(|&s| s == 0), "{}", path.display());
            } else {
                // Less than asked where the window is all symbols (MPL's `-----` lines).
                assert!(shared.iter().any(|&s| s > 0), "{}", path.display());
            }
            if tokens(&text) <= opts.max_tokens() {
                assert_eq!(chunks.len(), 1);
            }
        }
    }
}

#[test]
fn long_licences_end_chunks_at_sentences_and_paragraphs() {
    for name in ["GPL-3", "Apache-2.0", "LGPL-2.1"] {
        let text = licence(name);
        for opts in [ChunkOptions::default(), opts(128, 16)] {
            let chunks = check(&text, &opts);
            let share = sentence_end_share(&text, &chunks);
            let shared = overlaps(&text, &chunks);
            let mean_overlap = shared.iter().sum::<usize>() as f64 / shared.len() as f64;
            let sizes: Vec<usize> = chunks.iter().map(|c| tokens(&c.text)).collect();
            println!(
                "{name} max {} overlap {}: {} chunks, {:.0}% end a sentence or paragraph, mean \
                 overlap {mean_overlap:.1} pieces, sizes {sizes:?}",
                opts.max_tokens(),
                opts.overlap_tokens(),
                chunks.len(),
                share * 100.0
            );
            assert!(chunks.len() > 10, "{name}");
            // Snapped to a sentence start in the first half of the window or to the first word
            // start in it.
            assert!(
                shared.iter().all(|&s| s >= opts.overlap_tokens() / 2),
                "{name}: {shared:?}"
            );
            assert!(share >= 0.8, "{name}: only {share:.2} at sentence ends");
        }
    }
}

#[test]
fn the_model_sees_every_piece_of_every_chunk() {
    let files = ModelFiles::locate().unwrap_or_else(|e| panic!("{e}"));
    let model = OnnxEmbedder::load(&files, 1).unwrap_or_else(|e| panic!("{e}"));
    let text = licence("GPL-3");
    assert!(
        tokens(&text) > 10 * MAX_TOKENS,
        "count_tokens does not truncate"
    );
    let chunks = check(&text, &ChunkOptions::default());
    let full = chunks
        .iter()
        .filter(|c| tokens(&c.text) == MAX_TOKENS)
        .count();
    for c in &chunks {
        // The model's count stops at its window; equal counts mean nothing was cut off.
        assert_eq!(model.count_tokens(&c.text).unwrap(), tokens(&c.text));
    }
    println!(
        "{} chunks, {full} exactly {MAX_TOKENS} pieces",
        chunks.len()
    );
}

/// Deterministic prose: sentences of 4 to 24 words, paragraphs of 1 to 6 sentences.
fn synthetic(bytes: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "vector",
        "column",
        "embedding",
        "is",
        "written",
        "back",
        "after",
        "a",
        "claim",
        "daemon",
        "retries",
        "failures",
        "with",
        "backoff",
        "and",
        "every",
        "row",
        "keeps",
        "its",
        "content",
        "version",
        "tokenizer",
        "splits",
        "long",
        "documents",
        "into",
        "chunks",
        "internationalization",
        "PostgreSQL",
        "pgvector",
        "lease",
        "2024",
        "x86_64",
    ];
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut text = String::with_capacity(bytes + 200);
    while text.len() < bytes {
        for _ in 0..1 + next(6) {
            let len = 4 + next(21);
            for w in 0..len {
                let word = WORDS[next(WORDS.len())];
                if w == 0 {
                    let mut cs = word.chars();
                    let first = cs.next().unwrap().to_uppercase();
                    text.extend(first.chain(cs));
                } else {
                    text.push_str(word);
                }
                text.push_str(if w + 1 == len { ". " } else { " " });
            }
        }
        text.push_str("\n\n");
    }
    text
}

#[test]
fn splits_long_documents_in_linear_time() {
    let gpl = licence("GPL-3");
    let big = synthetic(1 << 20);
    for (name, text) in [("GPL-3", &gpl), ("synthetic 1 MiB", &big)] {
        let opts = ChunkOptions::default();
        let started = Instant::now();
        let chunks = chunker().split(text, &opts).unwrap();
        let took = started.elapsed();
        // For scale: one plain encoding of the whole text, which the chunker cannot beat.
        let started = Instant::now();
        let pieces = tokens(text) - 2;
        let encode = started.elapsed();
        println!(
            "{name}: {} bytes, {pieces} pieces -> {} chunks: split {took:?} (one encode {encode:?})",
            text.len(),
            chunks.len()
        );
        check(text, &opts);
    }
}

#[test]
fn empty_and_whitespace_texts_are_one_empty_chunk() {
    for text in ["", " ", "\n\n\t  \r\n", "\u{3000}\u{00A0}"] {
        let chunks = check(text, &ChunkOptions::default());
        assert_eq!(
            chunks,
            [Chunk {
                text: String::new(),
                start: 0,
                end: 0
            }]
        );
    }
}

#[test]
fn fitting_texts_are_one_chunk_equal_to_the_trimmed_text() {
    for text in [
        "word",
        "  word\n",
        "Hello, world! How are you?",
        &licence("GPL-3")[..1_000],
    ] {
        assert!(tokens(text) <= MAX_TOKENS);
        let chunks = check(text, &ChunkOptions::default());
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].text, text.trim());
        assert_eq!(chunks[0].start, text.len() - text.trim_start().len());
    }
}

#[test]
fn a_text_exactly_at_the_limit_is_one_chunk_and_one_more_piece_splits() {
    for max in [MAX_TOKENS, 64, 3] {
        let opts = opts(max, 0);
        let at_limit = "word ".repeat(max - 2);
        assert_eq!(tokens(&at_limit), max);
        assert_eq!(check(&at_limit, &opts).len(), 1, "max {max}");
        let over = format!("{at_limit}word");
        let chunks = check(&over, &opts);
        assert_eq!(chunks.len(), 2, "max {max}");
        assert_word_aligned(&over, &chunks);
    }
}

#[test]
fn huge_runs_without_spaces_make_progress_and_fit() {
    let default = ChunkOptions::default();
    // Longer than a word may be: the tokenizer makes it a single [UNK], so it fits whole.
    let unk = "x".repeat(50_000);
    assert_eq!(tokens(&unk), 3);
    assert_eq!(check(&unk, &default).len(), 1);
    // 50,000 characters of 25,000 pre-tokens ("abc/abc/..."): cut between them.
    let path = "abc/".repeat(12_500);
    let chunks = check(&path, &default);
    assert!(chunks.len() > 100, "{}", chunks.len());
    // The same inside prose: the prose still splits at word boundaries.
    let prose = licence("GPL-3");
    let mixed = format!("{}{path}\n\n{}", &prose[..5_000], &prose[..5_000]);
    let chunks = check(&mixed, &default);
    let outside = chunks
        .iter()
        .filter(|c| c.end < 5_000 || c.start > 5_000 + path.len());
    assert_word_aligned(&mixed, &outside.cloned().collect::<Vec<_>>());
    // Words of many pieces with a budget smaller than one word: cut inside, still fits.
    let long_words =
        "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism ".repeat(200);
    for opts in [opts(8, 2), opts(3, 0), opts(16, 4)] {
        let chunks = check(&long_words, &opts);
        assert!(chunks.len() > 200);
    }
}

#[test]
fn emoji_cjk_combining_marks_and_right_to_left_texts_split_on_character_boundaries() {
    let opts = opts(64, 8);
    let emoji = "Deploy \u{1F680} done \u{1F44D}\u{1F3FD}! Family \u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467} ok. "
        .repeat(300);
    let chunks = check(&emoji, &opts);
    assert_word_aligned(&emoji, &chunks);
    let emoji_only = "\u{1F600}".repeat(20_000);
    check(&emoji_only, &opts);

    // Chinese and Japanese without spaces: cut after full stops.
    let cjk = "\u{5411}\u{91CF}\u{5217}\u{5728}\u{6BCF}\u{6B21}\u{66F4}\u{65B0}\u{540E}\u{91CD}\u{65B0}\u{8BA1}\u{7B97}\u{3002}\u{957F}\u{6587}\u{6863}\u{88AB}\u{5207}\u{6210}\u{5C0F}\u{5757}\u{FF0C}\u{6BCF}\u{5757}\u{4E00}\u{4E2A}\u{5411}\u{91CF}\u{FF01}\u{6587}\u{5B57}\u{306F}\u{5206}\u{5272}\u{3055}\u{308C}\u{307E}\u{3059}\u{3002}"
        .repeat(300);
    let chunks = check(&cjk, &opts);
    let share = sentence_end_share(&cjk, &chunks);
    println!(
        "CJK: {} chunks, {:.0}% at full stops",
        chunks.len(),
        share * 100.0
    );
    assert!(share >= 0.9, "{share}");

    // Decomposed accents and a letter under many combining marks: never cut from its base.
    let marks = "Cafe\u{301} na\u{308}ive re\u{301}sume\u{301}. Z\u{335}\u{321}\u{327}\u{31B}\u{34E}\u{339}\u{353}a\u{334}\u{30D}\u{352}lgo te\u{300}xt. "
        .repeat(300);
    let chunks = check(&marks, &opts);
    assert_word_aligned(&marks, &chunks);
    for c in &chunks {
        let first = c.text.chars().next().unwrap();
        assert!(!('\u{300}'..='\u{36F}').contains(&first), "{:?}", c.text);
    }

    // Arabic and Hebrew, right to left, with their own question mark.
    let rtl = "\u{0645}\u{0631}\u{062D}\u{0628}\u{0627} \u{0628}\u{0627}\u{0644}\u{0639}\u{0627}\u{0644}\u{0645}\u{061F} \u{0647}\u{0630}\u{0627} \u{0646}\u{0635} \u{0637}\u{0648}\u{064A}\u{0644}. \u{05E9}\u{05DC}\u{05D5}\u{05DD} \u{05E2}\u{05D5}\u{05DC}\u{05DD}. "
        .repeat(400);
    let chunks = check(&rtl, &opts);
    assert_word_aligned(&rtl, &chunks);
    assert!(sentence_end_share(&rtl, &chunks) >= 0.9);
}

#[test]
fn many_short_paragraphs_split_between_paragraphs() {
    let text: String = (0..3_000)
        .map(|i| format!("Paragraph {i} is short."))
        .collect::<Vec<_>>()
        .join("\n\n");
    let chunks = check(&text, &ChunkOptions::default());
    assert!(chunks.len() > 30);
    for c in &chunks {
        assert!(
            c.start == 0 || text[..c.start].ends_with("\n\n"),
            "{:?}",
            c.text
        );
        assert!(c.end == text.len() || text[c.end..].starts_with("\n\n"));
    }
}

#[test]
fn chunker_is_shareable_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Chunker>();
}
