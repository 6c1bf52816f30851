//! The CLIP BPE tokenizer against open_clip (tests/fixtures/tokenizer.json, made by scripts/make_fixtures.py with
//! open_clip_torch 3.3.0), plus unit-level checks of the vocabulary, the byte map and the API.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use cliprt::data::tokenizer::{byte_to_unicode, clean, tokenize_lines, Tokenizer, DEFAULT_CONTEXT_LENGTH};
use serde_json::Value;

fn fixture() -> &'static Value {
    static FIXTURE: OnceLock<Value> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer.json");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    })
}

/// One expected row: the text, the context length and the padded ids.
struct Case {
    text: String,
    clean: Option<String>,
    context_length: usize,
    ids: Vec<i32>,
}

fn cases(key: &str) -> Vec<Case> {
    let default = fixture()["context_length"].as_u64().expect("context_length") as usize;
    fixture()[key]
        .as_array()
        .unwrap_or_else(|| panic!("fixture has no `{key}` list"))
        .iter()
        .map(|e| {
            let context_length = match key {
                "context_16" => 16,
                _ => e.get("context_length").and_then(Value::as_u64).map_or(default, |c| c as usize),
            };
            let mut ids: Vec<i32> =
                e["ids"].as_array().expect("ids").iter().map(|v| v.as_i64().expect("id") as i32).collect();
            assert!(ids.len() <= context_length);
            ids.resize(context_length, 0);
            Case {
                text: e["text"].as_str().expect("text").to_string(),
                clean: e.get("clean").and_then(Value::as_str).map(str::to_string),
                context_length,
                ids,
            }
        })
        .collect()
}

/// Tokenizes every case (with truncation) and fails listing every mismatch.
fn check(tokenizer: &Tokenizer, key: &str, min_cases: usize) {
    let cases = cases(key);
    assert!(cases.len() >= min_cases, "`{key}` has {} cases, expected at least {min_cases}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let got = tokenizer.tokenize(&case.text, case.context_length, true).expect("truncating never fails");
        if got != case.ids {
            let strip = |v: &[i32]| {
                let n = v.iter().rposition(|&i| i != 0).map_or(0, |p| p + 1);
                v[..n].to_vec()
            };
            failures.push(format!(
                "text {:?} (context {}): clean {:?}\n  open_clip {:?}\n  cliprt    {:?}",
                case.text,
                case.context_length,
                tokenizer.clean(&case.text),
                strip(&case.ids),
                strip(&got)
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} `{key}` rows differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn open_clip_cleaning_matches_on_corpus() {
    let mut failures = Vec::new();
    let cases = cases("corpus");
    for case in &cases {
        let want = case.clean.as_deref().expect("corpus rows carry open_clip's cleaned text");
        let got = clean(&case.text);
        if got != want {
            failures.push(format!("text {:?}\n  open_clip {want:?}\n  cliprt    {got:?}", case.text));
        }
    }
    assert!(failures.is_empty(), "{} of {} cleanings differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn open_clip_corpus_ids_match() {
    check(Tokenizer::clip(), "corpus", 150);
}

#[test]
fn open_clip_held_out_ids_match() {
    check(Tokenizer::clip(), "held_out", 40);
}

#[test]
fn open_clip_context_length_16_matches() {
    check(Tokenizer::clip(), "context_16", 5);
}

#[test]
fn open_clip_declip_mask_variant_matches() {
    let tokenizer = Tokenizer::declip();
    check(tokenizer, "declip", 100);
    // Outside literal special tokens, DeCLIP's rows are open_clip's with SOT/EOT moved up by one.
    let clip = Tokenizer::clip();
    let row = clip.tokenize("a photo of a cat", 77, false).unwrap();
    let remapped: Vec<i32> = row.iter().map(|&i| if i == 49406 || i == 49407 { i + 1 } else { i }).collect();
    assert_eq!(tokenizer.tokenize("a photo of a cat", 77, false).unwrap(), remapped);
}

#[test]
fn open_clip_truncation_keeps_eot_last() {
    let clip = Tokenizer::clip();
    let mut truncated = 0;
    for case in cases("corpus").iter().chain(&cases("held_out")) {
        if clip.encode(&case.text).len() + 2 <= case.context_length {
            continue;
        }
        truncated += 1;
        let row = clip.tokenize(&case.text, case.context_length, true).unwrap();
        assert_eq!(row, case.ids, "{:?}", case.text);
        assert_eq!(row[0], 49406);
        assert_eq!(*row.last().unwrap(), 49407, "{:?}", case.text);
        assert!(row.iter().all(|&i| i != 0), "a truncated row has no padding: {:?}", case.text);
        // The kept ids are the text's first 75.
        let ids = clip.encode(&case.text);
        assert_eq!(row[1..76].iter().map(|&i| i as u32).collect::<Vec<_>>(), ids[..75]);
    }
    assert!(truncated >= 6, "the fixtures hold only {truncated} texts that need truncation");
    // Exactly 75 tokens fit; 76 do not.
    let fits = "word ".repeat(74) + "end";
    assert_eq!(clip.encode(&fits).len(), 75);
    let row = clip.tokenize(&fits, 77, false).unwrap();
    assert_eq!(row[76], 49407);
    assert!(clip.tokenize(&("word ".repeat(75) + "end"), 77, false).is_err());
}

/// Runs `cliprt tokenize` with `args` on `input`, returning stdout lines (stderr and status on failure).
fn run_cli(args: &[&str], input: &str) -> (bool, Vec<String>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cliprt"))
        .arg("tokenize")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cliprt runs");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("cliprt finishes");
    writer.join().unwrap().ok();
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    (out.status.success(), stdout.lines().map(str::to_string).collect(), String::from_utf8_lossy(&out.stderr).into())
}

fn cli_matches(key: &str, args: &[&str]) {
    let cases = cases(key);
    let cases: Vec<&Case> = cases.iter().filter(|c| !c.text.contains(['\n', '\r'])).collect();
    assert!(cases.len() >= 10);
    let input: String = cases.iter().map(|c| format!("{}\n", c.text)).collect();
    let (ok, lines, stderr) = run_cli(args, &input);
    assert!(ok, "cliprt tokenize failed: {stderr}");
    assert_eq!(lines.len(), cases.len(), "one output line per input line");
    for (case, line) in cases.iter().zip(&lines) {
        let got: Vec<i32> = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not a JSON array: {e}"));
        assert_eq!(got, case.ids, "cliprt tokenize {args:?} on {:?}", case.text);
    }
}

#[test]
fn open_clip_cli_tokenize_agrees_on_held_out() {
    cli_matches("held_out", &[]);
}

#[test]
fn open_clip_cli_tokenize_context_length_16() {
    cli_matches("context_16", &["--context-length", "16"]);
}

#[test]
fn open_clip_cli_tokenize_declip() {
    let (ok, lines, stderr) = run_cli(&["--declip", "--context-length", "8"], "a photo of a cat\n\n");
    assert!(ok, "{stderr}");
    assert_eq!(lines, ["[49407,320,1125,539,320,2368,49408,0]", "[49407,49408,0,0,0,0,0,0]"]);
}

#[test]
fn cli_tokenize_empty_line_and_crlf() {
    let (ok, lines, stderr) = run_cli(&["--context-length", "6"], "\nA cat\r\nlast line without newline");
    assert!(ok, "{stderr}");
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], "[49406,49407,0,0,0,0]");
    assert_eq!(lines[1], "[49406,320,2368,49407,0,0]");
    assert_eq!(lines[2], "[49406,952,1148,2193,1218,49407]", "truncated, EOT last");
}

#[test]
fn cli_tokenize_no_truncate_fails_naming_the_line() {
    let (ok, lines, stderr) = run_cli(&["--context-length", "5", "--no-truncate"], "a cat\na b c d e f\n");
    assert!(!ok);
    assert_eq!(lines, ["[49406,320,2368,49407,0]"]);
    assert!(
        stderr.contains("line 2") && stderr.contains("8 tokens") && stderr.contains("context length 5"),
        "{stderr}"
    );
    let (ok, _, stderr) = run_cli(&[], "ok\n\u{0}\n");
    assert!(ok, "{stderr}");
}

#[test]
fn cli_tokenize_rejects_invalid_utf8() {
    let mut out = Vec::new();
    let err = tokenize_lines(Tokenizer::clip(), &b"fine\n\xff\xfe\n"[..], &mut out, 77, true).unwrap_err();
    assert!(err.to_string().contains("line 2") && err.to_string().contains("UTF-8"), "{err}");
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
}

#[test]
fn byte_map_is_a_bijection_over_256_bytes() {
    let map = byte_to_unicode();
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    for (b, &c) in map.iter().enumerate() {
        assert!(seen.insert(c), "byte {b} maps to {c:?} twice");
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        if printable {
            assert_eq!(c as usize, b);
        } else {
            assert_eq!(c as u32, 256 + n, "byte {b}");
            n += 1;
        }
    }
    assert_eq!(n, 68);
    // Every stand-in is a vocabulary entry, alone and with `</w>`, and the ids are 0..512.
    let clip = Tokenizer::clip();
    let mut ids: Vec<u32> = map.iter().map(|c| clip.id(&c.to_string()).unwrap()).collect();
    ids.extend(map.iter().map(|c| clip.id(&format!("{c}</w>")).unwrap()));
    ids.sort_unstable();
    assert_eq!(ids, (0..512).collect::<Vec<u32>>());
}

#[test]
fn vocabulary_sizes_and_special_ids() {
    let clip = Tokenizer::clip();
    assert_eq!(clip.vocab_size(), 49408);
    assert_eq!((clip.sot(), clip.eot(), clip.mask()), (49406, 49407, None));
    assert_eq!(clip.token(49406), Some("<start_of_text>"));
    assert_eq!(clip.token(49407), Some("<end_of_text>"));
    assert_eq!(clip.token(49405), Some("jekyll</w>"), "the last merge, line 48894");
    assert_eq!(clip.token(49408), None);
    assert_eq!(clip.token(0), Some("!"));
    assert!(std::ptr::eq(clip, Tokenizer::clip()), "built once and shared");

    let declip = Tokenizer::declip();
    assert_eq!(declip.vocab_size(), 49409);
    assert_eq!((declip.sot(), declip.eot(), declip.mask()), (49407, 49408, Some(49406)));
    assert_eq!(declip.token(49406), Some("<|mask|>"));
    assert_eq!(declip.token(49405), clip.token(49405));
    assert_eq!(DEFAULT_CONTEXT_LENGTH, 77);
}

#[test]
fn encode_decode_round_trip_on_ascii() {
    let clip = Tokenizer::clip();
    for text in
        ["a photo of a cat", "the quick brown fox jumps over the lazy dog", "supercalifragilisticexpialidocious"]
    {
        assert_eq!(clip.decode(&clip.encode(text)), format!("{text} "));
    }
    // Punctuation and digits come back with a space after each piece; only the spacing changes.
    let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    for text in ["Hello, World! It's 3.14 o'clock; (x+y)*2 = 42?", "e-mail: someone@example.org", "C++ & C# #1"] {
        let decoded = clip.decode(&clip.encode(text));
        assert_eq!(squash(&decoded), squash(&clean(text)), "{text:?} -> {decoded:?}");
    }
    assert_eq!(clip.decode(&[49406, 320, 2368, 49407]), "<start_of_text>a cat <end_of_text>");
    assert_eq!(clip.decode(&[99999]), "\u{fffd}");
}

#[test]
fn too_long_text_without_truncation_is_an_error() {
    let clip = Tokenizer::clip();
    let text = "a b c d e f g h";
    let err = clip.tokenize(text, 8, false).unwrap_err().to_string();
    assert!(err.contains("10 tokens") && err.contains("context length 8") && err.contains("a b c d"), "{err}");
    assert!(err.contains("truncation"), "the message names the fix: {err}");
    assert_eq!(clip.tokenize(text, 8, true).unwrap(), [49406, 320, 321, 322, 323, 324, 325, 49407]);
    assert_eq!(clip.tokenize(text, 10, false).unwrap().len(), 10);
    assert!(clip.tokenize(text, 0, true).is_err());
    assert_eq!(clip.tokenize(text, 1, true).unwrap(), [49407]);
}

#[test]
fn tokenize_batch_is_row_major_and_truncating() {
    let clip = Tokenizer::clip();
    let texts = ["a cat", "", &"dog ".repeat(30)];
    let batch = clip.tokenize_batch(&texts, 16);
    assert_eq!(batch.len(), 3 * 16);
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(batch[i * 16..(i + 1) * 16], clip.tokenize(text, 16, true).unwrap()[..]);
    }
    assert_eq!(batch[16..18], [49406, 49407]);
    assert_eq!(batch[47], 49407);
}
