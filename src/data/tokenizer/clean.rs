//! open_clip's text cleaning (`_clean_lower`): `ftfy.fix_text`, `html.unescape` twice, `strip`, whitespace runs to
//! one space (`" ".join(text.split())`), `lower()`; with Python's definitions of whitespace and of `html.unescape`.

use std::sync::OnceLock;

use regex::Regex;

use super::ftfy;
use super::py_tables as tables;

/// Python's `str.isspace` (Unicode 14): what `str.split()` and `str.strip()` break on.
pub(super) fn is_py_space(c: char) -> bool {
    tables::PY_WHITESPACE.binary_search_by(|&(a, b)| ftfy::cmp_range(c as u32, a, b)).is_ok()
}

/// The full cleaning: `whitespace_clean(basic_clean(text)).lower()`.
pub fn clean(text: &str) -> String {
    let fixed = ftfy::fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    let words: Vec<&str> = unescaped.split(is_py_space).filter(|w| !w.is_empty()).collect();
    py_lower(&words.join(" "))
}

/// Python's `str.lower` (Unicode 14): Rust's `to_lowercase` (the same full mappings and final-sigma rule), except
/// for characters whose Rust mapping differs from Python's table (letters added in later Unicode versions, which
/// Python 3.11 leaves alone). The text is split at those: to Python they are neither cased nor case-ignorable, so a
/// final-sigma context ends at them as it ends at a segment boundary.
pub(super) fn py_lower(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    let py =
        |c: char| tables::PY_LOWER.binary_search_by_key(&(c as u32), |&(k, _)| k).ok().map(|i| tables::PY_LOWER[i].1);
    let mut out = String::with_capacity(text.len());
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == '\u{3a3}' {
            continue;
        }
        let differs = match py(c) {
            Some(want) => !c.to_lowercase().eq(want.chars()),
            None => !c.to_lowercase().eq(std::iter::once(c)),
        };
        if differs {
            out.push_str(&text[start..i].to_lowercase());
            match py(c) {
                Some(want) => out.push_str(want),
                None => out.push(c),
            }
            start = i + c.len_utf8();
        }
    }
    out.push_str(&text[start..].to_lowercase());
    out
}

/// Python's `html.unescape`: named references from the HTML5 table (with or without ';', the longest known prefix
/// for names without one), and decimal / hexadecimal references with HTML5's replacements for invalid code points.
pub(super) fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    static CHARREF: OnceLock<Regex> = OnceLock::new();
    let re = CHARREF.get_or_init(|| {
        Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0c <&#;]{1,32};?)").expect("charref regex compiles")
    });
    re.replace_all(text, |c: &regex::Captures| replace_charref(&c[1])).into_owned()
}

fn replace_charref(s: &str) -> String {
    if let Some(num) = s.strip_prefix('#') {
        let num = num.trim_end_matches(';');
        let (digits, radix) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16),
            None => (num, 10),
        };
        // Saturating: anything past 0x10FFFF is replaced the same way, however large.
        let value = digits.chars().fold(0u64, |acc, d| {
            acc.saturating_mul(radix as u64).saturating_add(d.to_digit(radix).expect("regex matched digits") as u64)
        });
        if let Ok(i) = tables::INVALID_CHARREFS.binary_search_by_key(&value, |&(k, _)| k as u64) {
            return tables::INVALID_CHARREFS[i].1.to_string();
        }
        if (0xd800..=0xdfff).contains(&value) || value > 0x10ffff {
            return "\u{fffd}".to_string();
        }
        if tables::INVALID_CODEPOINTS.binary_search(&(value as u32)).is_ok() {
            return String::new();
        }
        return char::from_u32(value as u32).map(String::from).unwrap_or_default();
    }
    if let Some(v) = ftfy::lookup(tables::HTML5_ENTITIES, s) {
        return v.to_string();
    }
    // The longest prefix (of at least 2 characters) that is a known name, the rest kept as written.
    let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
    for x in (2..bounds.len()).rev() {
        if let Some(v) = ftfy::lookup(tables::HTML5_ENTITIES, &s[..bounds[x]]) {
            return format!("{v}{}", &s[bounds[x]..]);
        }
    }
    format!("&{s}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_like_python() {
        assert_eq!(html_unescape("a &amp; b"), "a & b");
        assert_eq!(html_unescape("&amp"), "&");
        assert_eq!(html_unescape("&notit;"), "¬it;");
        assert_eq!(html_unescape("&#128;&#0;&#x41;&#65"), "€\u{fffd}AA");
        assert_eq!(html_unescape("&#1114112;&#xD800;&#11;"), "\u{fffd}\u{fffd}");
        assert_eq!(html_unescape("&bogus; &"), "&bogus; &");
    }

    #[test]
    fn clean_like_open_clip() {
        assert_eq!(clean("  Tom &amp;amp; JERRY\t\n"), "tom & jerry");
        assert_eq!(clean("ΟΔΟΣ"), "οδος");
        assert_eq!(py_lower("İ Σ ΑΣ"), "i\u{307} σ ας");
        // U+A7CB (Unicode 16) is left alone, as Python 3.11 does.
        assert_eq!(py_lower("\u{a7cb}Σ"), "\u{a7cb}σ");
    }
}
