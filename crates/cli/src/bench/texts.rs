//! The two text profiles: short (one sentence, ~15 word pieces) and long (~200 words, near the
//! model's 256-token limit). Texts are generated from word lists with a seeded generator: the
//! same run always inserts the same texts, and every text of a set is distinct (no cache or
//! deduplication anywhere can make a row cheaper than it is).

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A text profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Short,
    Long,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Short => "short",
            Profile::Long => "long",
        }
    }

    /// `n` distinct texts of this profile; `seed` picks the set.
    pub fn texts(self, seed: u64, n: usize) -> Vec<String> {
        match self {
            Profile::Short => short(seed, n),
            Profile::Long => long(seed, n),
        }
    }
}

const SUBJECTS: &[&str] = &[
    "Maria",
    "My brother",
    "The new neighbour",
    "Our team lead",
    "Grandpa",
    "The landlord",
    "A colleague from Berlin",
    "The doctor",
    "My daughter",
    "The bus driver",
    "An old friend",
    "The project manager",
    "Tom",
    "The librarian",
    "Aunt Ruth",
    "The delivery person",
    "Our customer in Lyon",
    "The physics teacher",
    "Sam",
    "The barista",
];
const VERBS: &[&str] = &[
    "talked about",
    "complained about",
    "asked me about",
    "recommended",
    "forgot",
    "brought up",
    "laughed at",
    "wrote a note about",
    "explained",
    "was worried about",
    "finally fixed",
    "showed me",
    "argued about",
    "sent a photo of",
    "remembered",
    "paid for",
    "cancelled",
    "planned",
    "borrowed",
    "returned",
];
const OBJECTS: &[&str] = &[
    "the broken dishwasher",
    "a book on Roman history",
    "the quarterly budget",
    "their trip to Norway",
    "the leaking roof",
    "a recipe for lentil soup",
    "the late invoice",
    "the concert tickets",
    "a bicycle with a flat tyre",
    "the database migration",
    "the garden fence",
    "a job offer in Madrid",
    "the dentist appointment",
    "a lost umbrella",
    "the wedding playlist",
    "the flu vaccine",
    "a chess opening",
    "the noisy heating",
    "the school fundraiser",
    "an unpaid parking fine",
];
const PLACES: &[&str] = &[
    "at the café",
    "on the train",
    "over the phone",
    "in the kitchen",
    "at the office",
    "after the meeting",
    "in the park",
    "at the market",
    "by email",
    "during lunch",
    "at the station",
    "in the waiting room",
    "on the balcony",
    "at the gym",
    "in the car",
];
const TIMES: &[&str] = &[
    "this morning",
    "yesterday",
    "last Tuesday",
    "on Friday evening",
    "two weeks ago",
    "before the holidays",
    "at midnight",
    "over the weekend",
    "in March",
    "just now",
];
const CONNECTORS: &[&str] = &[
    "Later",
    "After that",
    "Meanwhile",
    "Then",
    "Because of that",
    "Surprisingly",
    "Of course",
    "In the end",
    "Before leaving",
    "Somehow",
];

fn pick<'a>(rng: &mut StdRng, words: &[&'a str]) -> &'a str {
    words[rng.random_range(0..words.len())]
}

fn sentence(rng: &mut StdRng) -> String {
    format!(
        "{} {} {} {} {}.",
        pick(rng, SUBJECTS),
        pick(rng, VERBS),
        pick(rng, OBJECTS),
        pick(rng, PLACES),
        pick(rng, TIMES)
    )
}

fn distinct(seed: u64, n: usize, mut make: impl FnMut(&mut StdRng) -> String) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let t = make(&mut rng);
        if seen.insert(t.clone()) {
            out.push(t);
        }
    }
    out
}

/// One sentence each (10–16 words).
pub fn short(seed: u64, n: usize) -> Vec<String> {
    distinct(seed, n, sentence)
}

/// About 200 words each: sentences joined by connectors.
pub fn long(seed: u64, n: usize) -> Vec<String> {
    distinct(seed ^ 0x5eed_1046, n, |rng| {
        let mut text = sentence(rng);
        while text.split_whitespace().count() < 195 {
            let mut s = sentence(rng);
            // "The doctor" becomes "the doctor" after a connector; names keep their capital.
            if ["The ", "My ", "Our ", "A ", "An "]
                .iter()
                .any(|p| s.starts_with(p))
            {
                s = format!("{}{}", s[..1].to_lowercase(), &s[1..]);
            }
            text.push_str(&format!(" {}, {s}", pick(rng, CONNECTORS)));
        }
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_and_sized() {
        let s = short(1, 500);
        assert_eq!(s.iter().collect::<HashSet<_>>().len(), 500);
        assert!(
            s.iter()
                .all(|t| (8..=20).contains(&t.split_whitespace().count())),
            "{s:?}"
        );
        let l = long(1, 20);
        assert!(l
            .iter()
            .all(|t| (195..=225).contains(&t.split_whitespace().count())));
        assert_eq!(short(7, 3), short(7, 3), "seeded");
        assert_ne!(short(7, 3), short(8, 3));
    }
}
