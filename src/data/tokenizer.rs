//! The CLIP BPE tokenizer (SPEC §1.7), giving exactly open_clip's ids (open_clip_torch 3.3.0, `SimpleTokenizer`
//! with `clean='lower'`), and DeCLIP's variant with a `<|mask|>` token (SPEC §2).
//!
//! Pipeline, as open_clip's `SimpleTokenizer.encode` + `__call__`:
//!
//! 1. Clean ([`clean`]): `ftfy.fix_text` (a port of ftfy 6.3.1's default fixes, see below), `html.unescape` twice,
//!    `strip`, whitespace runs to one space (`" ".join(text.split())`, Python's `str.isspace`), `lower()`.
//! 2. Pre-tokenise with open_clip's pattern: the literal special tokens; `'s 't 're 've 'm 'll 'd` (case-insensitive
//!    as in Python, so `'ſ` counts as `'s`); runs of `\p{L}`; one `\p{N}`; runs of anything else but whitespace.
//!    Characters no alternative matches are dropped, as `re.findall` drops them (e.g. a lone U+0345, which Python's
//!    case-insensitive `[^\s\p{L}\p{N}]` refuses because it folds to ι).
//! 3. Map each UTF-8 byte of a piece to its printable stand-in (GPT-2's `bytes_to_unicode`) and run BPE: `</w>` on the
//!    last symbol, repeatedly merge every occurrence of the adjacent pair of lowest rank (48 894 merges from
//!    `data/bpe_simple_vocab_16e6.txt.gz`, open_clip's file, MIT licence, embedded in the binary).
//! 4. `[SOT] + ids + [EOT]`, zero-padded to the context length; too long: an error, or with truncation cut to the
//!    context length with EOT forced last.
//!
//! Vocabularies: [`Tokenizer::clip`] has 49 408 ids (256 byte symbols, the same with `</w>`, the merges,
//! `<start_of_text>` = 49406, `<end_of_text>` = 49407; open_clip ≥ 3 spells them so, and a text that contains one of
//! these spellings literally gets the special id, as in open_clip). [`Tokenizer::declip`] has 49 409: `<|mask|>` =
//! 49406, `<|startoftext|>` = 49407, `<|endoftext|>` = 49408, and DeCLIP's pattern recognises OpenAI's spellings
//! `<|startoftext|>` / `<|endoftext|>` in text (never `<|mask|>`, which only masking inserts).
//!
//! ftfy: ported in `tokenizer/ftfy.rs` with generated tables (`tokenizer/py_tables.rs`, from
//! `scripts/fixtures/tokenizer.py --rust-tables`): HTML entity unescaping ("auto": not in or after a line with `<`),
//! mojibake detection (ftfy's badness expression) and repair through the ten single-byte codecs ftfy tries (latin-1,
//! sloppy windows-125x, iso-8859-2, macroman, cp437) with `restore_byte_a0`, lossy-sequence replacement, CESU-8,
//! embedded (inconsistent) mojibake, C1 controls, Latin ligatures, full/half-width forms, curly quotes → straight
//! (ftfy's default does this), line breaks, ANSI terminal escapes, control characters, NFC.
//!
//! Pinned to the reference environment (Python 3.11.7, regex 2026.11.15, ftfy 6.3.1, open_clip_torch 3.3.0): the
//! pattern's letter/number/other classes are the `regex` module's (generated, so Rust's own Unicode tables do not
//! decide them), `lower()` and `str.isspace` follow Python's Unicode 14 tables, and NFC leaves alone code points
//! Python's database does not know. Checked against open_clip on the committed fixtures and, during development, on
//! over 100 000 generated texts (random code points from every plane, multi-codec and double mojibake, HTML)
//! with no difference. Known not to match: open_clip run on another Python or `regex` version (its Unicode tables
//! decide which characters are letters and how they lower-case); the DeCLIP variant cleans whitespace with Python's
//! `str.split` definition where DeCLIP uses `regex`'s `\s+`, which differ only on U+1C..U+1F, characters ftfy has
//! already removed.

mod clean;
mod ftfy;
#[rustfmt::skip]
mod py_tables;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::{OnceLock, RwLock};

use regex::Regex;

use crate::error::{Error, Result};

pub use clean::clean;

/// open_clip's default context length (CLIP's 77 positions).
pub const DEFAULT_CONTEXT_LENGTH: usize = 77;

/// The vocabulary file, gzipped, as shipped in open_clip_torch's wheel (see data/LICENSE-open_clip.txt).
static BPE_GZ: &[u8] = include_bytes!("../../data/bpe_simple_vocab_16e6.txt.gz");

/// Number of merges used: lines 1..=48894 of the file (`merges[1:49152-256-2+1]`).
const N_MERGES: usize = 49152 - 256 - 2;

/// Pieces cached per tokenizer before the cache is cleared (open_clip's cache is unbounded).
const CACHE_LIMIT: usize = 1 << 16;

/// A CLIP BPE tokenizer. Build-once shared instances: [`Tokenizer::clip`], [`Tokenizer::declip`].
pub struct Tokenizer {
    /// id → vocabulary string (byte stand-ins, `</w>` suffixes, special tokens).
    decoder: Vec<String>,
    encoder: HashMap<String, u32>,
    /// byte → its printable stand-in.
    byte_encoder: [char; 256],
    byte_decoder: HashMap<char, u8>,
    /// (left id, right id) → (merge rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    pattern: Regex,
    /// Strings that map straight to an id when a piece equals them (open_clip's pre-filled cache).
    specials: HashMap<String, u32>,
    sot: u32,
    eot: u32,
    mask: Option<u32>,
    cache: RwLock<HashMap<String, Vec<u32>>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("sot", &self.sot)
            .field("eot", &self.eot)
            .field("mask", &self.mask)
            .finish_non_exhaustive()
    }
}

/// The byte-level map (GPT-2's `bytes_to_unicode`): the printable stand-in of every byte. Bytes '!'..'~', '¡'..'¬',
/// '®'..'ÿ' stand for themselves, the other 68 for U+0100 + n in byte order.
pub fn byte_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    for (b, c) in bytes_to_unicode() {
        map[b as usize] = c;
    }
    map
}

/// GPT-2's `bytes_to_unicode`: the bytes in vocabulary order (printable ranges first) and their stand-ins.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xa1..=0xac).chain(0xae..=0xff).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter().zip(cs).map(|(b, c)| (b as u8, char::from_u32(c).expect("stand-ins are chars"))).collect()
}

/// The header and the merges used, decompressed once (the rest of the file's 262 145 merges is dropped).
fn merges_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(BPE_GZ), &mut text)
            .expect("the embedded bpe_simple_vocab_16e6.txt.gz decompresses to UTF-8");
        if let Some((end, _)) = text.match_indices('\n').nth(N_MERGES) {
            text.truncate(end);
            text.shrink_to_fit();
        }
        text
    })
}

impl Tokenizer {
    /// open_clip's tokenizer (`open_clip.get_tokenizer('ViT-B-32')`): vocabulary 49408, SOT 49406, EOT 49407.
    pub fn clip() -> &'static Tokenizer {
        static CLIP: OnceLock<Tokenizer> = OnceLock::new();
        CLIP.get_or_init(|| Tokenizer::build(&["<start_of_text>", "<end_of_text>"], &[], None))
    }

    /// DeCLIP's tokenizer: vocabulary 49409 with `<|mask|>` = 49406, SOT 49407, EOT 49408.
    pub fn declip() -> &'static Tokenizer {
        static DECLIP: OnceLock<Tokenizer> = OnceLock::new();
        DECLIP.get_or_init(|| {
            Tokenizer::build(
                &["<|mask|>", "<|startoftext|>", "<|endoftext|>"],
                &["<|startoftext|>", "<|endoftext|>"],
                Some(0),
            )
        })
    }

    /// The tokenizer of a text tower with `vocab_size` rows: DeCLIP's for its 49409 (a model trained with
    /// `--objective declip`), open_clip's otherwise.
    pub fn for_vocab(vocab_size: usize) -> &'static Tokenizer {
        if vocab_size == Tokenizer::declip().vocab_size() {
            Tokenizer::declip()
        } else {
            Tokenizer::clip()
        }
    }

    /// `vocab_tail`: the special tokens appended after the merges, in order (the last two are SOT and EOT);
    /// `in_text`: those the pattern recognises in text (all of `vocab_tail` when empty); `mask`: index in the tail.
    fn build(vocab_tail: &[&str], in_text: &[&str], mask: Option<usize>) -> Tokenizer {
        let table = bytes_to_unicode();
        let byte_encoder = byte_to_unicode();
        let mut decoder: Vec<String> = table.iter().map(|&(_, c)| c.to_string()).collect();
        decoder.extend(table.iter().map(|&(_, c)| format!("{c}</w>")));
        let merge_pairs: Vec<(&str, &str)> = merges_text()
            .split('\n')
            .skip(1)
            .take(N_MERGES)
            .map(|line| {
                let mut parts = line.split_whitespace();
                let pair = (parts.next(), parts.next(), parts.next());
                match pair {
                    (Some(a), Some(b), None) => (a, b),
                    _ => panic!("malformed merge line {line:?} in the embedded vocabulary"),
                }
            })
            .collect();
        assert_eq!(merge_pairs.len(), N_MERGES, "the embedded vocabulary has too few merges");
        decoder.extend(merge_pairs.iter().map(|(a, b)| format!("{a}{b}")));
        decoder.extend(vocab_tail.iter().map(|s| s.to_string()));
        let encoder: HashMap<String, u32> = decoder.iter().enumerate().map(|(i, s)| (s.clone(), i as u32)).collect();
        assert_eq!(encoder.len(), decoder.len(), "the vocabulary has duplicate entries");
        let merges = merge_pairs
            .iter()
            .enumerate()
            .map(|(rank, (a, b))| {
                let id = |s: &str| encoder[s];
                ((id(a), id(b)), (rank as u32, id(&format!("{a}{b}"))))
            })
            .collect();
        let tail_start = decoder.len() - vocab_tail.len();
        let tail_id = |i: usize| (tail_start + i) as u32;
        let n = vocab_tail.len();
        let in_text = if in_text.is_empty() { vocab_tail } else { in_text };
        let alternatives: Vec<String> = in_text.iter().map(|s| regex::escape(s)).collect();
        // The classes are the `regex` module's, as open_clip's case-insensitive pattern matches them (generated;
        // IGNORECASE changes nothing for \p{L} and \p{N} but drops U+0345, which folds to ι, from the negated class).
        // Rust's (?i) would add U+0345 to \p{L}, so it is confined to the literal alternatives.
        let pattern = format!(
            "(?i:{}|'s|'t|'re|'ve|'m|'ll|'d)|{}+|{}|{}+",
            alternatives.join("|"),
            py_tables::REGEX_LETTER,
            py_tables::REGEX_NUMBER,
            py_tables::REGEX_OTHER
        );
        Tokenizer {
            specials: vocab_tail.iter().enumerate().map(|(i, s)| (s.to_string(), tail_id(i))).collect(),
            decoder,
            encoder,
            byte_encoder,
            byte_decoder: table.iter().map(|&(b, c)| (c, b)).collect(),
            merges,
            pattern: Regex::new(&pattern).expect("tokenizer pattern compiles"),
            sot: tail_id(n - 2),
            eot: tail_id(n - 1),
            mask: mask.map(tail_id),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Start-of-text id (49406 for CLIP, 49407 for DeCLIP).
    pub fn sot(&self) -> u32 {
        self.sot
    }

    /// End-of-text id (49407 for CLIP, 49408 for DeCLIP); the text tower pools at its position.
    pub fn eot(&self) -> u32 {
        self.eot
    }

    /// The `<|mask|>` id (DeCLIP: 49406), `None` for plain CLIP.
    pub fn mask(&self) -> Option<u32> {
        self.mask
    }

    /// Number of ids (49408 for CLIP, 49409 for DeCLIP).
    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    /// The vocabulary string of an id (byte stand-ins, `</w>` marking a word end), `None` past the vocabulary.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.decoder.get(id as usize).map(String::as_str)
    }

    /// The id of a vocabulary string, if it is one.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.encoder.get(token).copied()
    }

    /// open_clip's cleaning of a text (ftfy, HTML unescaping, whitespace, lower case), before pre-tokenisation.
    pub fn clean(&self, text: &str) -> String {
        clean::clean(text)
    }

    /// The BPE ids of a text, without SOT/EOT (open_clip's `SimpleTokenizer.encode`).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = clean::clean(text);
        let mut ids = Vec::new();
        for m in self.pattern.find_iter(&text) {
            let piece: String = m.as_str().bytes().map(|b| self.byte_encoder[b as usize]).collect();
            if let Some(&id) = self.specials.get(&piece) {
                ids.push(id);
                continue;
            }
            if let Some(cached) = self.cache.read().expect("tokenizer cache lock").get(&piece) {
                ids.extend_from_slice(cached);
                continue;
            }
            let word = self.bpe(&piece);
            ids.extend_from_slice(&word);
            let mut cache = self.cache.write().expect("tokenizer cache lock");
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(piece, word);
        }
        ids
    }

    /// BPE on one piece (already mapped to byte stand-ins).
    fn bpe(&self, piece: &str) -> Vec<u32> {
        let chars: Vec<char> = piece.chars().collect();
        let last = chars.len() - 1;
        let mut word: Vec<u32> = chars
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let s = if i == last { format!("{c}</w>") } else { c.to_string() };
                self.encoder[&s]
            })
            .collect();
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|w| self.merges.get(&(w[0], w[1])).map(|&(rank, merged)| (rank, w[0], w[1], merged)))
                .min();
            let Some((_, first, second, merged)) = best else { break };
            let mut next = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            word = next;
        }
        word
    }

    /// `[SOT] + encode(text) + [EOT]`, zero-padded to `context_length`. A text that does not fit is an error, or with
    /// `truncate` is cut to `context_length` ids with EOT last (open_clip's behaviour).
    pub fn tokenize(&self, text: &str, context_length: usize, truncate: bool) -> Result<Vec<i32>> {
        if context_length == 0 {
            return Err(Error::Invalid {
                op: "tokenize",
                msg: "context length 0 holds no ids; use at least 1 (CLIP uses 77)".to_string(),
            });
        }
        let ids = self.encode(text);
        let n = ids.len() + 2;
        if n > context_length && !truncate {
            let shown: String = text.chars().take(60).collect();
            let ellipsis = if text.chars().count() > 60 { "…" } else { "" };
            return Err(Error::Invalid {
                op: "tokenize",
                msg: format!(
                    "text {shown:?}{ellipsis} is {n} tokens with SOT and EOT, longer than the context length \
                     {context_length}; shorten it, raise the context length, or enable truncation"
                ),
            });
        }
        Ok(self.row(&ids, context_length))
    }

    /// One padded, truncating row.
    fn row(&self, ids: &[u32], context_length: usize) -> Vec<i32> {
        let mut row = vec![0i32; context_length];
        if context_length == 0 {
            return row;
        }
        row[0] = self.sot as i32;
        let body = ids.len().min(context_length.saturating_sub(2));
        for (slot, &id) in row[1..].iter_mut().zip(&ids[..body]) {
            *slot = id as i32;
        }
        // Untruncated: EOT right after the text; truncated: EOT in the last slot (open_clip's `tokens[-1] = eot`).
        // With a context of 1, open_clip's `tokens[:1]; tokens[-1] = eot` leaves just EOT.
        row[(body + 1).min(context_length - 1)] = self.eot as i32;
        row
    }

    /// Tokenizes every text with truncation: row-major `[texts.len(), context_length]` ids (open_clip's
    /// `tokenize(texts, context_length)`).
    pub fn tokenize_batch(&self, texts: &[&str], context_length: usize) -> Vec<i32> {
        let mut out = Vec::with_capacity(texts.len() * context_length);
        for text in texts {
            out.extend(self.row(&self.encode(text), context_length));
        }
        out
    }

    /// open_clip's `decode`: ids → vocabulary strings → bytes → UTF-8 (invalid sequences become U+FFFD), with every
    /// `</w>` turned into a space. Special tokens come out as their names; ids past the vocabulary as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            match self.decoder.get(id as usize) {
                Some(s) => bytes.extend(s.chars().map(|c| self.byte_decoder.get(&c).copied().unwrap_or(b'?'))),
                None => bytes.extend_from_slice("\u{fffd}".as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).replace("</w>", " ")
    }
}

/// `cliprt tokenize`: one text per input line (the line ending, `\n` or `\r\n`, is not part of the text), one JSON
/// array of `context_length` ids per output line; a line that does not fit is truncated (EOT last) or, without
/// `truncate`, an error naming the line.
pub fn tokenize_lines(
    tokenizer: &Tokenizer,
    input: impl BufRead,
    mut output: impl Write,
    context_length: usize,
    truncate: bool,
) -> Result<()> {
    fn io_err(path: &'static str) -> impl Fn(std::io::Error) -> Error {
        move |source| Error::Io { path: path.to_string(), source }
    }
    let mut input = input;
    let mut line = Vec::new();
    let mut number = 0usize;
    let mut text_out = String::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(io_err("<stdin>"))? == 0 {
            break;
        }
        number += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        let text = std::str::from_utf8(&line).map_err(|e| Error::Invalid {
            op: "tokenize",
            msg: format!("input line {number} is not valid UTF-8 ({e}); convert the input to UTF-8 first"),
        })?;
        let row = tokenizer.tokenize(text, context_length, truncate).map_err(|e| match e {
            Error::Invalid { op, msg } => Error::Invalid { op, msg: format!("input line {number}: {msg}") },
            other => other,
        })?;
        text_out.clear();
        text_out.push('[');
        for (i, id) in row.iter().enumerate() {
            if i > 0 {
                text_out.push(',');
            }
            text_out.push_str(&id.to_string());
        }
        text_out.push_str("]\n");
        match output.write_all(text_out.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other.map_err(io_err("<stdout>"))?,
        }
    }
    match output.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(io_err("<stdout>")),
    }
}
