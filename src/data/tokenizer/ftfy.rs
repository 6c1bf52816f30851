//! A port of `ftfy.fix_text` (ftfy 6.3.1, Copyright 2023 Robyn Speer, Apache-2.0, see data/LICENSE-ftfy.txt) with
//! its default configuration, the first step of CLIP's text cleaning.
//!
//! Implemented, in ftfy's order, per line segment (text up to and including each `\n`), repeated until stable:
//!
//! - `unescape_html` ("auto": off from the first segment that contains `<` onward): `&name;` entities from the HTML5
//!   table plus ftfy's all-caps Latin ones (`&EACUTE;`), and numeric references that end in `;`;
//! - `fix_encoding`: the mojibake heuristic (`badness`, ftfy's regular expression over ~400 characters) and the
//!   re-decoding through latin-1, sloppy-windows-1252/1251/1250/1253/1254/1257, iso-8859-2, macroman and cp437, with
//!   `restore_byte_a0`, `replace_lossy_sequences`, the utf-8-variants decoder (CESU-8, Java's `C0 80`),
//!   `decode_inconsistent_utf8` (mojibake embedded in correct text) and the latin-1 → windows-1252 step;
//! - `fix_c1_controls`, `fix_latin_ligatures`, `fix_character_width`, `uncurl_quotes` (yes: ftfy's default turns
//!   ’ into ' and “ ” into "), `fix_line_breaks`, `remove_terminal_escapes`, `remove_control_chars`;
//! - NFC normalisation.
//!
//! The tables and the regular expressions are generated from the Python sources (py_tables.rs), so the character
//! classes are ftfy's own; Python's `\s`, `\w` and `\d` are spelled out as Python 3.11 (Unicode 14) defines them.
//!
//! Known differences: `fix_surrogates` has nothing to do (a Rust `str` cannot hold surrogates). NFC uses the
//! `unicode-normalization` crate, split at the code points Python's Unicode 14 database does not know, so newer
//! characters are left alone as Python 3.11 leaves them; what remains possible is a newer crate changing the
//! normalisation of characters Unicode 14 already had, which Unicode's stability policy rules out.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::bytes::Regex as BytesRegex;
use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use super::py_tables as tables;

/// ftfy's `max_decode_length`: the longest segment fixed at once, in characters.
const MAX_DECODE_LENGTH: usize = 1_000_000;

/// A single-byte codec: ftfy's `CHARMAP_ENCODINGS` entry.
struct Charmap {
    name: &'static str,
    encode: HashMap<char, u8>,
}

impl Charmap {
    /// ftfy's `possible_encoding`: every character is ASCII other than U+1A, or what a byte 0x80..0xFF or 0x1A
    /// decodes to.
    fn possible(&self, text: &str) -> bool {
        text.chars().all(|c| {
            ((c as u32) < 0x80 && c != '\u{1a}') || self.encode.get(&c).is_some_and(|&b| b >= 0x80 || b == 0x1a)
        })
    }

    fn encode(&self, text: &str) -> Vec<u8> {
        text.chars().map(|c| self.encode[&c]).collect()
    }
}

struct Ftfy {
    badness: Regex,
    detector: Regex,
    detector_lookbehind: Regex,
    altered_utf8: BytesRegex,
    lossy_utf8: BytesRegex,
    ansi: Regex,
    html_entity: Regex,
    charmaps: Vec<Charmap>,
    /// sloppy-windows-1252 decoding, for `fix_c1_controls`.
    sloppy_1252: [char; 256],
    width: HashMap<char, &'static str>,
    ligatures: HashMap<char, &'static str>,
}

fn ftfy() -> &'static Ftfy {
    static FTFY: OnceLock<Ftfy> = OnceLock::new();
    FTFY.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("ftfy table regex compiles");
        let bre = |p: &str| BytesRegex::new(p).expect("ftfy table regex compiles");
        let charmaps: Vec<Charmap> = tables::CHARMAPS
            .iter()
            .map(|(name, dec)| Charmap {
                name,
                encode: (0..256).map(|b| (char::from_u32(dec[b]).expect("table holds chars"), b as u8)).collect(),
            })
            .collect();
        let sloppy = tables::CHARMAPS.iter().find(|(n, _)| *n == "sloppy-windows-1252").expect("table").1;
        let map = |t: &'static [(u32, &'static str)]| {
            t.iter().map(|&(c, s)| (char::from_u32(c).expect("table holds chars"), s)).collect()
        };
        Ftfy {
            badness: re(tables::BADNESS_RE),
            detector: re(tables::UTF8_DETECTOR_RE),
            detector_lookbehind: re(tables::UTF8_DETECTOR_LOOKBEHIND),
            altered_utf8: bre(tables::ALTERED_UTF8_RE),
            lossy_utf8: bre(tables::LOSSY_UTF8_RE),
            ansi: re(tables::ANSI_RE),
            html_entity: re("&#?[0-9A-Za-z]{1,24};"),
            charmaps,
            sloppy_1252: std::array::from_fn(|b| char::from_u32(sloppy[b]).expect("table holds chars")),
            width: map(tables::WIDTH_MAP),
            ligatures: map(tables::LIGATURES),
        }
    })
}

/// `ftfy.fix_text(text)` with the default configuration.
pub fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        let mut end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        if let Some((cut, _)) = rest[..end].char_indices().nth(MAX_DECODE_LENGTH) {
            end = cut;
        }
        let segment = &rest[..end];
        // ftfy turns HTML unescaping off for this and every later segment once one contains '<'.
        if unescape && segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
        pos += end;
    }
    out
}

/// `fix_and_explain` on one segment: all fixers in order, repeated until nothing changes.
fn fix_segment(segment: &str, unescape: bool) -> String {
    let f = ftfy();
    let mut text = segment.to_string();
    loop {
        let orig = text.clone();
        if unescape {
            text = unescape_html(&text);
        }
        text = fix_encoding(&text);
        text = fix_c1_controls(&text);
        text = map_chars(&text, &f.ligatures);
        text = map_chars(&text, &f.width);
        text = uncurl_quotes(&text);
        text = fix_line_breaks(&text);
        text = f.ansi.replace_all(&text, "").into_owned();
        text = remove_control_chars(&text);
        text = nfc(&text);
        if text == orig {
            return text;
        }
    }
}

/// `unicodedata.normalize("NFC", text)` as Python 3.11 does it: code points unassigned in its Unicode 14 database
/// are starters that compose with nothing, so the text is normalised in pieces between them (the
/// `unicode-normalization` crate knows newer characters, e.g. combining marks that it would reorder).
fn nfc(text: &str) -> String {
    let unassigned = |c: char| tables::PY_UNASSIGNED.binary_search_by(|&(a, b)| cmp_range(c as u32, a, b)).is_ok();
    let mut out = String::with_capacity(text.len());
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if !c.is_ascii() && unassigned(c) {
            out.extend(text[start..i].nfc());
            out.push(c);
            start = i + c.len_utf8();
        }
    }
    out.extend(text[start..].nfc());
    out
}

/// Orders a range (a..=b) relative to `c`, for binary searches over sorted range tables.
pub(super) fn cmp_range(c: u32, a: u32, b: u32) -> std::cmp::Ordering {
    if b < c {
        std::cmp::Ordering::Less
    } else if a > c {
        std::cmp::Ordering::Greater
    } else {
        std::cmp::Ordering::Equal
    }
}

/// ftfy's `is_bad`: does the text contain a sequence that is likely mojibake?
fn is_bad(text: &str) -> bool {
    ftfy().badness.is_match(text)
}

/// `ftfy.fix_encoding`: one re-decoding step at a time until the text stops changing.
fn fix_encoding(text: &str) -> String {
    let mut text = text.to_string();
    loop {
        let next = fix_encoding_one_step(&text);
        if next == text {
            return text;
        }
        text = next;
    }
}

fn fix_encoding_one_step(text: &str) -> String {
    let f = ftfy();
    if text.is_empty() || text.is_ascii() || !is_bad(text) {
        return text.to_string();
    }
    let mut latin1_possible = false;
    for charmap in &f.charmaps {
        if !charmap.possible(text) {
            continue;
        }
        latin1_possible |= charmap.name == "latin-1";
        let mut bytes = charmap.encode(text);
        if charmap.name != "macroman" && f.altered_utf8.is_match(&bytes) {
            bytes = restore_byte_a0(&bytes);
        }
        if charmap.name.starts_with("sloppy") {
            bytes = f.lossy_utf8.replace_all(&bytes, "\u{fffd}".as_bytes()).into_owned();
        }
        if let Some(fixed) = decode_utf8_variants(&bytes) {
            return fixed;
        }
    }
    if find_detector(text, 0).is_some() {
        let fixed = decode_inconsistent_utf8(text);
        if fixed != text {
            return fixed;
        }
    }
    // ftfy checks for "windows-1252" among the possible encodings, which only ever lists "sloppy-windows-1252",
    // so a latin-1-encodable text is always tried as latin-1 bytes read as (strict) windows-1252.
    if latin1_possible {
        let strict: Option<String> = text.chars().map(|c| char::from_u32(tables::WINDOWS_1252[c as usize])).collect();
        if let Some(fixed) = strict {
            if fixed != text {
                return fixed;
            }
        }
    }
    if text.chars().any(is_c1) {
        return fix_c1_controls(text);
    }
    text.to_string()
}

fn is_c1(c: char) -> bool {
    ('\u{80}'..='\u{9f}').contains(&c)
}

/// The next match of `UTF8_DETECTOR_RE` at or after `from`, honouring its one-character negative lookbehind.
fn find_detector(text: &str, from: usize) -> Option<(usize, usize)> {
    let f = ftfy();
    let mut at = from;
    while at <= text.len() {
        let m = f.detector.find_at(text, at)?;
        let blocked = text[..m.start()]
            .chars()
            .next_back()
            .is_some_and(|c| f.detector_lookbehind.is_match(c.encode_utf8(&mut [0u8; 4])));
        if !blocked {
            return Some((m.start(), m.end()));
        }
        at = m.start() + text[m.start()..].chars().next().map_or(1, char::len_utf8);
    }
    None
}

/// ftfy's `decode_inconsistent_utf8`: fix each UTF-8-looking run that is itself bad and shorter than the text.
fn decode_inconsistent_utf8(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut at = 0;
    while let Some((start, end)) = find_detector(text, at) {
        out.push_str(&text[last..start]);
        let sub = &text[start..end];
        if sub.len() < text.len() && is_bad(sub) {
            out.push_str(&fix_encoding(sub));
        } else {
            out.push_str(sub);
        }
        last = end;
        at = end;
    }
    out.push_str(&text[last..]);
    out
}

/// ftfy's `restore_byte_a0`: put back the 0xA0 bytes that became spaces inside UTF-8 sequences.
fn restore_byte_a0(bytes: &[u8]) -> Vec<u8> {
    // A_GRAVE_WORD_RE = b"\xc3 (?! |quele|quela|quilo|s )" -> b"\xc3\xa0 "
    let mut grave = Vec::with_capacity(bytes.len() + 4);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0xc3 && bytes.get(i + 1) == Some(&b' ') {
            let after = &bytes[i + 2..];
            let excluded = [&b" "[..], b"quele", b"quela", b"quilo", b"s "].iter().any(|p| after.starts_with(p));
            if !excluded {
                grave.extend_from_slice(b"\xc3\xa0 ");
                i += 2;
                continue;
            }
        }
        grave.push(bytes[i]);
        i += 1;
    }
    ftfy()
        .altered_utf8
        .replace_all(&grave, |c: &regex::bytes::Captures| {
            c[0].iter().map(|&b| if b == 0x20 { 0xa0 } else { b }).collect::<Vec<u8>>()
        })
        .into_owned()
}

/// ftfy's "utf-8-variants" codec: strict UTF-8, plus CESU-8 surrogate pairs and Java's `C0 80` for U+0000.
/// `None` where Python raises `UnicodeDecodeError`.
fn decode_utf8_variants(bytes: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest[0] == 0xc0 && rest.len() > 1 && rest[1] == 0x80 {
            out.push('\0');
            i += 2;
            continue;
        }
        if rest[0] == 0xed
            && rest.len() >= 6
            && (0xa0..=0xaf).contains(&rest[1])
            && (0x80..=0xbf).contains(&rest[2])
            && rest[3] == 0xed
            && (0xb0..=0xbf).contains(&rest[4])
            && (0x80..=0xbf).contains(&rest[5])
        {
            let cp = (((rest[1] & 0x0f) as u32) << 16)
                + (((rest[2] & 0x3f) as u32) << 10)
                + (((rest[4] & 0x0f) as u32) << 6)
                + (rest[5] & 0x3f) as u32
                + 0x10000;
            out.push(char::from_u32(cp)?);
            i += 6;
            continue;
        }
        // One ordinary UTF-8 character (std rejects overlong forms and surrogates, as Python does).
        let len = match rest[0] {
            0x00..=0x7f => 1,
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => return None,
        };
        let chunk = rest.get(..len)?;
        out.push_str(std::str::from_utf8(chunk).ok()?);
        i += len;
    }
    Some(out)
}

/// ftfy's `fix_c1_controls`: C1 control characters read as sloppy Windows-1252.
fn fix_c1_controls(text: &str) -> String {
    let f = ftfy();
    text.chars().map(|c| if is_c1(c) { f.sloppy_1252[c as usize] } else { c }).collect()
}

fn map_chars(text: &str, map: &HashMap<char, &'static str>) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match map.get(&c) {
            Some(s) => out.push_str(s),
            None => out.push(c),
        }
    }
    out
}

fn uncurl_quotes(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
            '\u{201c}'..='\u{201f}' => '"',
            _ => c,
        })
        .collect()
}

fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n").replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

fn remove_control_chars(text: &str) -> String {
    text.chars()
        .filter(|&c| tables::CONTROL_CHARS.binary_search_by(|&(a, b)| cmp_range(c as u32, a, b)).is_err())
        .collect()
}

/// ftfy's `unescape_html`: `&name;` (HTML5 names that end in ';', and ftfy's all-caps Latin extras) and numeric
/// references that end in ';'; anything else stays as written.
fn unescape_html(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    ftfy()
        .html_entity
        .replace_all(text, |c: &regex::Captures| {
            let m = &c[0];
            if let Some(v) = lookup(tables::HTML5_ENTITIES, &m[1..]) {
                return v.to_string();
            }
            if let Some(v) = lookup(tables::FTFY_UPPER_ENTITIES, &m[1..]) {
                return v.to_string();
            }
            if m.starts_with("&#") {
                let u = super::clean::html_unescape(m);
                if u.contains(';') {
                    return m.to_string();
                }
                return u;
            }
            m.to_string()
        })
        .into_owned()
}

/// Binary search in a table sorted by the key's bytes.
pub(super) fn lookup(table: &'static [(&'static str, &'static str)], key: &str) -> Option<&'static str> {
    table.binary_search_by(|(k, _)| k.as_bytes().cmp(key.as_bytes())).ok().map(|i| table[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixes_common_mojibake() {
        assert_eq!(fix_text("caf\u{c3}\u{a9}"), "café");
        assert_eq!(fix_text("doesn\u{e2}\u{20ac}\u{2122}t"), "doesn't");
        assert_eq!(fix_text("\u{c3} la mode"), "à la mode");
        assert_eq!(fix_text("ＬＯＵＤ　ＮＯＩＳＥＳ"), "LOUD NOISES");
        assert_eq!(fix_text("P&EACUTE;REZ &amp; co"), "PÉREZ & co");
        assert_eq!(fix_text("<b>&amp;</b>"), "<b>&amp;</b>");
        assert_eq!(fix_text("plain text stays"), "plain text stays");
    }

    #[test]
    fn utf8_variants() {
        assert_eq!(decode_utf8_variants(b"a\xc0\x80b").as_deref(), Some("a\0b"));
        assert_eq!(decode_utf8_variants(b"\xed\xa0\xbd\xed\xb8\x80").as_deref(), Some("\u{1f600}"));
        assert_eq!(decode_utf8_variants(b"\xed\xa0\x80"), None);
        assert_eq!(decode_utf8_variants(b"\xc3"), None);
    }
}
