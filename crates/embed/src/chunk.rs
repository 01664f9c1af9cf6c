//! Token-aware chunking: splits a long text into chunks the model embeds whole, so the model's
//! window never truncates anything silently.
//!
//! The text is tokenized once, without truncation or padding; every decision then works on the
//! word pieces' byte offsets. Between pieces of different words (pre-tokens) the pieces of a
//! chunk are exactly the pieces it gets when encoded alone: the model's (BERT) tokenizer
//! normalises character by character and splits words at whitespace and punctuation before
//! looking them up, so counts add up across those cuts. A cut inside a word breaks that (`##ing` alone re-tokenizes as
//! `ing`, maybe in other pieces), so chunks with such an edge are re-encoded and shrunk until
//! they fit. That is the only re-tokenization, and it only happens for words longer than a
//! chunk.
//!
//! # Rules
//!
//! - A chunk holds at most `max_tokens` word pieces once encoded with `[CLS]` and `[SEP]`.
//! - A chunk ends at the strongest boundary in the last half of what fits (the latest one among
//!   equals): paragraph (blank line), sentence end (`.`, `!`, `?`, `…`, `؟`, `۔`, `।` followed by
//!   whitespace, maybe after closing quotes or brackets; CJK `。！？．｡` need no whitespace),
//!   line break, word (whitespace). Without any of those in the last half, the strongest in
//!   the first half; without any at all, between pre-tokens without whitespace next to a letter
//!   (`a|.b`, CJK characters), then inside a run of symbols (`---|---`), the last half first;
//!   only as the last resort inside a word, between its word pieces. Every chunk adds pieces
//!   the one before lacks.
//! - The next chunk starts at most `overlap_tokens` pieces before the previous end: at the
//!   first sentence start among the first half of that window, else the first word start in it,
//!   else the first pre-token start next to a letter (CJK), else right at the previous end (no
//!   overlap). The overlap is dropped when keeping it would force the chunk to end inside a
//!   word and dropping it would not.
//! - A chunk's text is the original text between its first and last word piece, with whatever
//!   makes no word piece around them (control characters, stray combining marks) up to the
//!   surrounding whitespace: `text == &original[start..end]` and it never starts or ends with
//!   whitespace. A text that fits is one chunk: the text, trimmed. A text that is empty or only
//!   whitespace is one chunk of the empty string (`0..0`).
//! - Chunks come in order, each starts and ends later than the one before, and together they
//!   cover every non-whitespace character.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::one_line;
use crate::{tokenize, EmbedError, ModelFiles, MAX_TOKENS};

/// `[CLS]` and `[SEP]`, added to every encoded chunk.
const SPECIALS: usize = 2;
/// Bytes tokenized at once.
const SEGMENT_BYTES: usize = 32 * 1024;
/// Default overlap between consecutive chunks, in word pieces (an eighth of the window).
pub const DEFAULT_OVERLAP_TOKENS: usize = 32;

/// How big chunks get and how much consecutive chunks share. Always valid: built by
/// [`ChunkOptions::new`] (or [`Default`]: the whole window, [`DEFAULT_OVERLAP_TOKENS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkOptions {
    max_tokens: usize,
    overlap_tokens: usize,
}

impl ChunkOptions {
    /// `max_tokens`: word pieces per chunk including `[CLS]` and `[SEP]`, from 3 to
    /// [`MAX_TOKENS`]. `overlap_tokens`: pieces consecutive chunks share at most, less than half
    /// of `max_tokens - 2` (so every chunk moves on by more than it repeats).
    pub fn new(max_tokens: usize, overlap_tokens: usize) -> Result<Self, ChunkOptionError> {
        if max_tokens <= SPECIALS {
            return Err(ChunkOptionError::new(
                "max_tokens",
                format!(
                    "max_tokens {max_tokens} is too small: it must leave room for [CLS], [SEP] \
                     and one word piece (at least {})",
                    SPECIALS + 1
                ),
            ));
        }
        if max_tokens > MAX_TOKENS {
            return Err(ChunkOptionError::new(
                "max_tokens",
                format!(
                    "max_tokens {max_tokens} exceeds the model window of {MAX_TOKENS} word pieces \
                     (including [CLS] and [SEP])"
                ),
            ));
        }
        let content = max_tokens - SPECIALS;
        if overlap_tokens * 2 >= content {
            return Err(ChunkOptionError::new(
                "overlap_tokens",
                format!(
                    "overlap_tokens {overlap_tokens} must be less than half of the {content} word \
                     pieces a chunk holds besides [CLS] and [SEP] (at most {} for max_tokens \
                     {max_tokens})",
                    (content - 1) / 2
                ),
            ));
        }
        Ok(Self {
            max_tokens,
            overlap_tokens,
        })
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn overlap_tokens(&self) -> usize {
        self.overlap_tokens
    }
}

impl Default for ChunkOptions {
    fn default() -> Self {
        Self {
            max_tokens: MAX_TOKENS,
            overlap_tokens: DEFAULT_OVERLAP_TOKENS,
        }
    }
}

/// An invalid [`ChunkOptions`] value; the message names the option and its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ChunkOptionError {
    option: &'static str,
    message: String,
}

impl ChunkOptionError {
    fn new(option: &'static str, message: String) -> Self {
        Self { option, message }
    }

    /// `max_tokens` or `overlap_tokens`.
    pub fn option(&self) -> &'static str {
        self.option
    }
}

/// One chunk of a text: `text == &original[start..end]` (byte offsets), never starting or ending
/// with whitespace; the empty string at `0..0` for an empty or blank text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub text: String,
    pub start: usize,
    pub end: usize,
}

/// Splits texts into chunks that fit the model's window, using the model's own tokenizer.
pub struct Chunker {
    tokenizer: Tokenizer,
    /// Pieces the tokenizer adds around every text (`[CLS]`, `[SEP]`).
    specials: usize,
}

impl Chunker {
    /// The tokenizer of the model in `files`.
    pub fn from_files(files: &ModelFiles) -> Result<Self, EmbedError> {
        Self::from_tokenizer_file(&files.tokenizer)
    }

    /// A `tokenizer.json`; its truncation and padding settings are ignored.
    pub fn from_tokenizer_file(path: &Path) -> Result<Self, EmbedError> {
        let tokenizer = tokenize::load_untruncated(path)?;
        let specials = tokenizer
            .encode("", true)
            .map_err(|e| EmbedError::BadModel {
                path: path.to_path_buf(),
                reason: one_line(e),
            })?
            .len();
        Ok(Self {
            tokenizer,
            specials,
        })
    }

    /// Word pieces of `text` including `[CLS]` and `[SEP]`, without truncation: what the model
    /// would see if its window were unlimited.
    pub fn count_tokens(&self, text: &str) -> Result<usize, EmbedError> {
        Ok(self.encode(text, true)?.len())
    }

    /// Splits `text` into chunks of at most `opts.max_tokens()` word pieces each (see the module
    /// documentation for the rules). Deterministic; tokenizes the text once.
    pub fn split(&self, text: &str, opts: &ChunkOptions) -> Result<Vec<Chunk>, EmbedError> {
        let pieces = self.pieces(text)?;
        let limits = Limits {
            max_tokens: opts.max_tokens,
            specials: self.specials,
            overlap: opts.overlap_tokens,
        };
        plan(text, &pieces, limits, |chunk| self.count_tokens(chunk))
    }

    /// Word pieces of the whole text. Encoded in segments cut at ASCII whitespace, in parallel:
    /// the tokenizer splits words there anyway, and memory stays bounded for huge texts.
    fn pieces(&self, text: &str) -> Result<Vec<Piece>, EmbedError> {
        let segments = segments(text, SEGMENT_BYTES);
        let encodings = self
            .tokenizer
            .encode_batch(segments.iter().map(|&(_, s)| s).collect(), false)
            .map_err(|e| EmbedError::Tokenizer(one_line(e)))?;
        let mut pieces = Vec::with_capacity(encodings.iter().map(|e| e.len()).sum());
        let mut words = 0;
        for (&(at, _), encoding) in segments.iter().zip(&encodings) {
            let mut next_words = words;
            for (&(start, end), &word) in encoding.get_offsets().iter().zip(encoding.get_word_ids())
            {
                // Word ids restart in every segment.
                let word = word.map(|w| w + words);
                next_words = next_words.max(word.map_or(0, |w| w + 1));
                pieces.push(Piece {
                    start: at + start,
                    end: at + end,
                    word,
                });
            }
            words = next_words;
        }
        Ok(pieces)
    }

    fn encode(&self, text: &str, specials: bool) -> Result<tokenizers::Encoding, EmbedError> {
        self.tokenizer
            .encode(text, specials)
            .map_err(|e| EmbedError::Tokenizer(one_line(e)))
    }
}

/// Segments of about `size` bytes, `(offset, text)`, cut before a space, tab or line break
/// (other whitespace, like form feeds, the tokenizer may delete rather than split at). A run
/// without such whitespace stays whole.
fn segments(text: &str, size: usize) -> Vec<(usize, &str)> {
    let bytes = text.as_bytes();
    let split = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let mut segments = Vec::with_capacity(text.len() / size + 1);
    let mut p = 0;
    while p < text.len() {
        let q = if p + size >= text.len() {
            text.len()
        } else if let Some(i) = bytes[p + 1..=p + size].iter().rposition(split) {
            p + 1 + i
        } else {
            let after = &bytes[p + size..];
            after
                .iter()
                .position(split)
                .map_or(text.len(), |i| p + size + i)
        };
        segments.push((p, &text[p..q]));
        p = q;
    }
    segments
}

/// A word piece of the whole text: byte offsets and the pre-token (word) it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    start: usize,
    end: usize,
    word: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_tokens: usize,
    specials: usize,
    overlap: usize,
}

/// How good a cut between two pieces is, weakest first. Every level but `Piece` separates
/// pre-tokens, where piece counts add up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    /// Inside a word (or the tokenizer gave no word ids): the chunk must be re-encoded.
    Piece,
    /// Between pre-tokens without whitespace, inside a run of punctuation or symbols (`-----`).
    Symbol,
    /// Between pre-tokens without whitespace, next to a letter or digit: `a|.b`, CJK characters.
    Token,
    Word,
    Line,
    Sentence,
    Paragraph,
}

/// Chunks of `text` given its word `pieces`. `count` encodes a chunk alone (with specials); it is
/// called only for chunks with an edge inside a word.
fn plan(
    text: &str,
    pieces: &[Piece],
    limits: Limits,
    mut count: impl FnMut(&str) -> Result<usize, EmbedError>,
) -> Result<Vec<Chunk>, EmbedError> {
    let n = pieces.len();
    let budget = limits.max_tokens.saturating_sub(limits.specials).max(1);
    if n <= budget {
        let start = text.len() - text.trim_start().len();
        let end = text.trim_end().len().max(start);
        let (start, end) = if start == end { (0, 0) } else { (start, end) };
        return Ok(vec![chunk(text, start, end)]);
    }
    let min_fill = budget.div_ceil(2);
    // ChunkOptions keeps the overlap below half; a tokenizer with more specials could not.
    let overlap = limits.overlap.min(min_fill - 1);
    let levels = levels(text, pieces);
    let mut chunks = Vec::new();
    // Chunk `a..c`; every piece before `done` is in a chunk already.
    let (mut a, mut done) = (0, 0);
    loop {
        // `a <= done`; a cut before `done + 1` would repeat what the last chunk holds.
        let lo = done + 1;
        let mut hi = (a + budget).min(n);
        if a < done && levels[next_cut(&levels, a, lo, hi, min_fill)] < Level::Word {
            // Keeping the overlap forces a cut inside a word; without it one may fit whole.
            let alone = (done + budget).min(n);
            if levels[next_cut(&levels, done, lo, alone, min_fill)] >= Level::Word {
                (a, hi) = (done, alone);
            }
        }
        loop {
            let c = next_cut(&levels, a, lo, hi, min_fill);
            let (s, e) = span(text, pieces, a, c);
            let tokens = if levels[a] > Level::Piece && levels[c] > Level::Piece {
                c - a + limits.specials
            } else {
                count(&text[s..e])?
            };
            if tokens <= limits.max_tokens {
                chunks.push(chunk(text, s, e));
                done = c;
                break;
            }
            if c == a + 1 {
                // One word piece re-encodes to more than a chunk holds: cut it by characters.
                by_chars(text, s, e, limits.max_tokens, &mut count, &mut chunks)?;
                done = c;
                break;
            }
            if c == lo {
                // Even one new piece does not fit after the overlap: drop the overlap.
                a = lo - 1;
            } else {
                hi = c.saturating_sub(tokens - limits.max_tokens).max(lo);
            }
        }
        if done == n {
            return Ok(chunks);
        }
        a = next_start(&levels, a, done, overlap);
    }
}

fn chunk(text: &str, start: usize, end: usize) -> Chunk {
    Chunk {
        text: text[start..end].to_owned(),
        start,
        end,
    }
}

/// Chunks of `text[s..e]` (one word piece) as long as fit, at least one character each. Binary
/// search over character boundaries: a piece of a foreign tokenizer may be long.
fn by_chars(
    text: &str,
    s: usize,
    e: usize,
    max_tokens: usize,
    count: &mut impl FnMut(&str) -> Result<usize, EmbedError>,
    chunks: &mut Vec<Chunk>,
) -> Result<(), EmbedError> {
    // Where each character of the piece ends.
    let ends: Vec<usize> = text[s..e]
        .char_indices()
        .map(|(i, ch)| s + i + ch.len_utf8())
        .collect();
    let (mut p, mut first) = (s, 0);
    while first < ends.len() {
        let (mut lo, mut hi) = (first, ends.len() - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if count(&text[p..ends[mid]])? <= max_tokens {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        chunks.push(chunk(text, p, ends[lo]));
        (p, first) = (ends[lo], lo + 1);
    }
    Ok(())
}

/// `levels[c]`: the cut before piece `c`; the text's edges (`0`, `n`) count as paragraphs.
fn levels(text: &str, pieces: &[Piece]) -> Vec<Level> {
    let mut levels = Vec::with_capacity(pieces.len() + 1);
    levels.push(Level::Paragraph);
    levels.extend(pieces.windows(2).map(|w| level(text, &w[0], &w[1])));
    levels.push(Level::Paragraph);
    levels
}

fn level(text: &str, prev: &Piece, next: &Piece) -> Level {
    let separate = matches!((prev.word, next.word), (Some(p), Some(q)) if p != q);
    if !separate || next.start < prev.end {
        return Level::Piece;
    }
    let gap = &text[prev.end..next.start];
    let (mut space, mut line, mut blank, mut newline_before) = (false, false, false, false);
    for ch in gap.chars() {
        match ch {
            '\n' | '\u{2028}' => {
                blank |= newline_before;
                newline_before = true;
                line = true;
            }
            // Form feed (pages of old licence texts) and the paragraph separator.
            '\u{000C}' | '\u{2029}' => {
                blank = true;
                line = true;
            }
            c if c.is_whitespace() => {}
            _ => newline_before = false,
        }
        space |= ch.is_whitespace();
    }
    if blank {
        Level::Paragraph
    } else if ends_sentence(&text[..prev.end], space) {
        Level::Sentence
    } else if line {
        Level::Line
    } else if space {
        Level::Word
    } else {
        let left = text[..prev.end].chars().next_back();
        let right = text[next.start..].chars().next();
        if left.is_some_and(char::is_alphanumeric) || right.is_some_and(char::is_alphanumeric) {
            Level::Token
        } else {
            Level::Symbol
        }
    }
}

/// Whether `before` ends a sentence, `space` being whether whitespace follows.
fn ends_sentence(before: &str, space: bool) -> bool {
    const CLOSERS: &[char] = &[
        '"', '\'', ')', ']', '}', '\u{2019}', '\u{201D}', '\u{00BB}', '\u{300D}', '\u{300F}',
        '\u{FF09}',
    ];
    // A few closing quotes or brackets may follow the full stop: `"Stop." Then`.
    let mut chars = before.chars().rev();
    let mut last = chars.next();
    for _ in 0..3 {
        match last {
            Some(c) if CLOSERS.contains(&c) => last = chars.next(),
            _ => break,
        }
    }
    match last {
        Some('.' | '!' | '?' | '\u{2026}' | '\u{061F}' | '\u{06D4}' | '\u{0964}' | '\u{0965}') => {
            space
        }
        // CJK full stops: no whitespace follows them.
        Some('\u{3002}' | '\u{FF01}' | '\u{FF1F}' | '\u{FF0E}' | '\u{FF61}') => true,
        _ => false,
    }
}

/// Where the chunk starting at piece `a` ends, given that pieces `a..hi` fit and that it must
/// end at `lo` or later: `n` when the rest fits. Else, in order: a word boundary or better in
/// the last half of the chunk (from `a + min_fill`), then one anywhere, then a `Token` cut (again
/// the last half first), then a `Symbol` cut, then a `Piece` cut; the strongest level of the
/// first kind found, the latest among equals.
fn next_cut(levels: &[Level], a: usize, lo: usize, hi: usize, min_fill: usize) -> usize {
    let n = levels.len() - 1;
    if hi >= n {
        return n;
    }
    let upper = a + min_fill;
    (lo..=hi)
        .max_by_key(|&c| {
            let level = levels[c];
            (level.min(Level::Word), c >= upper, level, c)
        })
        .unwrap_or(hi)
}

/// Where the chunk after the one `a..c` starts: the first sentence start among the first half of
/// the overlap window `c - overlap .. c`, else the first word start in it, else the first
/// `Token` start, else `c`. Always after `a`.
fn next_start(levels: &[Level], a: usize, c: usize, overlap: usize) -> usize {
    let lo = c.saturating_sub(overlap).max(a + 1);
    if lo >= c {
        return c;
    }
    let half = (c - overlap / 2).min(c - 1);
    let first = |range: std::ops::Range<usize>, at_least: Level| {
        range.into_iter().find(|&j| levels[j] >= at_least)
    };
    first(lo..half + 1, Level::Sentence)
        .or_else(|| first(lo..c, Level::Word))
        .or_else(|| first(lo..c, Level::Token))
        .unwrap_or(c)
}

/// Byte range of the chunk of pieces `a..c`: from the first piece's start to the last piece's
/// end, widened to the first non-whitespace character after the piece before and the last one
/// before the piece after (characters that make no piece, which both neighbours then share).
fn span(text: &str, pieces: &[Piece], a: usize, c: usize) -> (usize, usize) {
    let (first, last) = (&pieces[a], &pieces[c - 1]);
    let before = if a == 0 {
        0
    } else {
        pieces[a - 1].end.min(first.start)
    };
    let after = if c == pieces.len() {
        text.len()
    } else {
        pieces[c].start.max(last.end)
    };
    let start = first.start - text[before..first.start].trim_start().len();
    let end = last.end + text[last.end..after].trim_end().len();
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of a toy tokenizer: every run of alphanumerics is one word, split into pieces of
    /// at most 3 characters; every other non-whitespace character is a word of its own.
    fn toy_pieces(text: &str) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut word = 0;
        let mut chars = text.char_indices().peekable();
        while let Some((i, ch)) = chars.next() {
            if ch.is_whitespace() {
                continue;
            }
            if !ch.is_alphanumeric() {
                pieces.push(Piece {
                    start: i,
                    end: i + ch.len_utf8(),
                    word: Some(word),
                });
                word += 1;
                continue;
            }
            let (mut start, mut len, mut end) = (i, 1, i + ch.len_utf8());
            while let Some(&(j, c)) = chars.peek() {
                if !c.is_alphanumeric() {
                    break;
                }
                chars.next();
                if len == 3 {
                    pieces.push(Piece {
                        start,
                        end,
                        word: Some(word),
                    });
                    (start, len) = (j, 0);
                }
                len += 1;
                end = j + c.len_utf8();
            }
            pieces.push(Piece {
                start,
                end,
                word: Some(word),
            });
            word += 1;
        }
        pieces
    }

    /// Counting as the toy tokenizer would encode `chunk` alone, plus two specials.
    fn toy_count(chunk: &str) -> Result<usize, EmbedError> {
        Ok(toy_pieces(chunk).len() + SPECIALS)
    }

    fn toy_split(text: &str, max_tokens: usize, overlap: usize) -> Vec<Chunk> {
        let limits = Limits {
            max_tokens,
            specials: SPECIALS,
            overlap,
        };
        plan(text, &toy_pieces(text), limits, toy_count).unwrap()
    }

    fn texts(chunks: &[Chunk]) -> Vec<&str> {
        chunks.iter().map(|c| c.text.as_str()).collect()
    }

    #[test]
    fn segments_cut_before_spaces_and_keep_long_runs_whole() {
        let text = "ab cd\u{c}ef\tgh xxxxxxxx i";
        let segs = segments(text, 4);
        assert_eq!(
            segs,
            [
                (0, "ab"),
                (2, " cd\u{c}ef"),
                (8, "\tgh"),
                (11, " xxxxxxxx"),
                (20, " i")
            ]
        );
        assert_eq!(segments("", 4), []);
        assert_eq!(segments("abc", 4), [(0, "abc")]);
        assert_eq!(
            segments("\u{e9}\u{e9}\u{e9} \u{e9}", 2),
            [(0, "\u{e9}\u{e9}\u{e9}"), (6, " \u{e9}")]
        );
    }

    #[test]
    fn options_name_the_option_and_the_limit() {
        assert_eq!(ChunkOptions::new(256, 126).unwrap().max_tokens(), 256);
        assert_eq!(ChunkOptions::new(3, 0).unwrap().overlap_tokens(), 0);
        let err = ChunkOptions::new(2, 0).unwrap_err();
        assert_eq!(err.option(), "max_tokens");
        assert!(err.to_string().contains("at least 3"), "{err}");
        let err = ChunkOptions::new(257, 0).unwrap_err();
        assert_eq!(err.option(), "max_tokens");
        assert!(err.to_string().contains("256"), "{err}");
        let err = ChunkOptions::new(256, 127).unwrap_err();
        assert_eq!(err.option(), "overlap_tokens");
        assert!(err.to_string().contains("at most 126"), "{err}");
        assert!(ChunkOptions::new(4, 1).is_err());
        assert_eq!(ChunkOptions::default().max_tokens(), MAX_TOKENS);
    }

    #[test]
    fn levels_rank_paragraph_sentence_line_word_token_symbol_piece() {
        let text = "One two.\n\nThree four. Five\nsix\u{3002}\u{4E03} a,b --- seventeen";
        let pieces = toy_pieces(text);
        let words: Vec<&str> = pieces.iter().map(|p| &text[p.start..p.end]).collect();
        assert_eq!(
            words,
            [
                "One", "two", ".", "Thr", "ee", "fou", "r", ".", "Fiv", "e", "six", "\u{3002}",
                "\u{4E03}", "a", ",", "b", "-", "-", "-", "sev", "ent", "een"
            ]
        );
        let levels = levels(text, &pieces);
        use Level::*;
        assert_eq!(
            levels,
            [
                Paragraph, Word, Token, Paragraph, Piece, Word, Piece, Token, Sentence, Piece,
                Line, Token, Sentence, Word, Token, Token, Word, Symbol, Symbol, Word, Piece,
                Piece, Paragraph
            ]
        );
    }

    #[test]
    fn sentence_ends_allow_closers_and_need_space_except_cjk() {
        assert!(ends_sentence("He said \"stop.\"", true));
        assert!(ends_sentence("(Really?)", true));
        assert!(!ends_sentence("3.", false));
        assert!(!ends_sentence("e.g", true));
        assert!(ends_sentence("\u{597D}\u{3002}", false));
        assert!(ends_sentence(
            "\u{0645}\u{0631}\u{062D}\u{0628}\u{0627}\u{061F}",
            true
        ));
        assert!(!ends_sentence("", true));
    }

    #[test]
    fn cut_prefers_the_strongest_boundary_in_the_last_half_latest_first() {
        use Level::*;
        let levels = [
            Paragraph, Word, Paragraph, Word, Sentence, Word, Sentence, Word, Word, Token,
            Paragraph,
        ];
        // Pieces 0..8 fit; the paragraph at 2 is in the first half: the later sentence wins.
        assert_eq!(next_cut(&levels, 0, 1, 8, 4), 6);
        assert_eq!(next_cut(&levels, 0, 1, 8, 1), 2);
        assert_eq!(next_cut(&levels, 0, 1, 10, 5), 10);
        assert_eq!(next_cut(&levels, 7, 8, 9, 1), 8);
        // Must end at 7 or later: the sentence at 6 is out.
        assert_eq!(next_cut(&levels, 0, 7, 9, 4), 8);
        // Nothing but pieces: as far as fits.
        assert_eq!(
            next_cut(&[Paragraph, Piece, Piece, Piece, Paragraph], 0, 1, 3, 2),
            3
        );
        // A word boundary in the first half beats other cuts in the second; a `Token` cut in
        // the first half beats `Symbol` and `Piece` cuts in the second.
        let run = [
            Paragraph, Token, Word, Token, Piece, Symbol, Piece, Symbol, Piece, Paragraph,
        ];
        assert_eq!(next_cut(&run, 0, 1, 8, 4), 2);
        assert_eq!(next_cut(&run, 0, 3, 8, 4), 3);
        assert_eq!(next_cut(&run, 0, 4, 8, 4), 7);
        assert_eq!(next_cut(&run, 0, 4, 6, 5), 5);
        assert_eq!(next_cut(&run, 0, 4, 4, 4), 4);
    }

    #[test]
    fn overlap_starts_at_a_sentence_then_a_word_never_more_than_asked() {
        use Level::*;
        let levels = [
            Paragraph, Word, Word, Sentence, Word, Piece, Word, Sentence, Word, Word, Paragraph,
        ];
        // Window 9-4 = 5..9, first half 5..=7: the sentence start at 7.
        assert_eq!(next_start(&levels, 0, 9, 4), 7);
        // Window 3..9: the sentence start at 3.
        assert_eq!(next_start(&levels, 0, 9, 6), 3);
        // Window 6..9, first half 6..=8 has the sentence at 7; a word at 6 loses to it.
        assert_eq!(next_start(&levels, 0, 9, 3), 7);
        // Window 8..9: a word start.
        assert_eq!(next_start(&levels, 0, 9, 1), 8);
        assert_eq!(next_start(&levels, 0, 9, 0), 9);
        // Never at or before the previous start.
        assert_eq!(next_start(&levels, 8, 9, 4), 9);
        assert_eq!(
            next_start(&[Paragraph, Piece, Piece, Paragraph], 0, 2, 1),
            2
        );
    }

    #[test]
    fn spans_are_trimmed_and_keep_characters_without_pieces() {
        let text = "  ab \u{1}cd\u{0} ef  ";
        let pieces = [
            Piece {
                start: 2,
                end: 4,
                word: Some(0),
            },
            Piece {
                start: 6,
                end: 8,
                word: Some(1),
            },
            Piece {
                start: 10,
                end: 12,
                word: Some(2),
            },
        ];
        assert_eq!(span(text, &pieces, 0, 3), (2, 12));
        assert_eq!(span(text, &pieces, 1, 2), (5, 9));
        // The control character belongs to both neighbours: nothing but whitespace is dropped.
        assert_eq!(span(text, &pieces, 0, 1), (2, 6));
    }

    #[test]
    fn fitting_and_empty_texts_are_one_trimmed_chunk() {
        assert_eq!(toy_split("", 5, 0), [chunk("", 0, 0)]);
        assert_eq!(toy_split(" \n\t ", 5, 0), [chunk("", 0, 0)]);
        assert_eq!(toy_split("  a b c \n", 5, 0), [chunk("  a b c \n", 2, 7)]);
        assert_eq!(texts(&toy_split("a b c d", 5, 0)), ["a b c", "d"]);
    }

    #[test]
    fn paragraphs_win_over_sentences_and_words() {
        let text = "aa bb. cc dd\n\nee ff gg. hh ii jj kk";
        assert_eq!(
            texts(&toy_split(text, 8, 0)),
            ["aa bb. cc dd", "ee ff gg.", "hh ii jj kk"]
        );
    }

    #[test]
    fn overlap_repeats_whole_words_up_to_the_limit() {
        let text = "a b c d e f g h i j k l m n o p";
        let chunks = toy_split(text, 8, 2);
        assert_eq!(
            texts(&chunks),
            ["a b c d e f", "e f g h i j", "i j k l m n", "m n o p"]
        );
        for pair in chunks.windows(2) {
            assert!(pair[1].start < pair[0].end && pair[1].end > pair[0].end);
        }
    }

    #[test]
    fn words_longer_than_a_chunk_are_cut_between_pieces_and_fit_re_encoded() {
        // The toy re-encodes a cut word differently ("abcdefg" → abc|def|g, but "bcdefg" alone
        // → bcd|efg): every chunk is checked by `count`.
        let text = "x abcdefghijklmnopqrstuvwxyz y";
        for max in 3..8 {
            let chunks = toy_split(text, max, 0);
            let joined: String = chunks.iter().map(|c| c.text.as_str()).collect();
            assert_eq!(joined.replace(' ', ""), text.replace(' ', ""), "max {max}");
            for c in &chunks {
                assert!(toy_count(&c.text).unwrap() <= max, "{c:?} max {max}");
                assert_eq!(c.text, &text[c.start..c.end]);
            }
        }
    }

    #[test]
    fn a_piece_that_re_encodes_too_long_is_cut_by_characters() {
        // A counter that sees every character as a piece: the toy's 3-character pieces never
        // fit in one piece of room once cut out of their word. "gh" is a whole word: trusted.
        let text = "abcdef gh";
        let limits = Limits {
            max_tokens: 3,
            specials: SPECIALS,
            overlap: 0,
        };
        let chars = |chunk: &str| Ok(chunk.chars().count() + SPECIALS);
        let chunks = plan(text, &toy_pieces(text), limits, chars).unwrap();
        assert_eq!(texts(&chunks), ["a", "b", "c", "d", "e", "f", "gh"]);
    }

    #[test]
    fn pieces_without_whitespace_cut_between_pre_tokens_first() {
        let text = "abcdef.ghijkl.mnopqr";
        // Pieces: abc def . ghi jkl . mno pqr; 4 fit: the cuts around the '.' beat the one
        // inside "ghijkl".
        assert_eq!(
            texts(&toy_split(text, 6, 0)),
            ["abcdef.", "ghijkl.", "mnopqr"]
        );
    }
}
