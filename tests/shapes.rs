//! The embedded `shapes` data set (SPEC §5): determinism, thread independence, disjoint splits, labels, balance,
//! caption length, object visibility, resolution option, errors and the PNG grid.

use std::collections::HashSet;

use cliprt::data::image::normalize_hwc;
use cliprt::data::shapes::{
    batch, class_of, class_prompts, classes, label_of, prompt, sample, samples, save_grid, templates, Colour, Position,
    Shape, ShapesConfig, Size, Split, NUM_CLASSES,
};
use cliprt::data::tokenizer::Tokenizer;
use cliprt::Error;

fn cfg(seed: u64) -> ShapesConfig {
    ShapesConfig { seed, ..ShapesConfig::default() }
}

fn first(n: usize) -> Vec<usize> {
    (0..n).collect()
}

#[test]
fn defaults_match_spec() {
    let c = ShapesConfig::default();
    assert_eq!((c.resolution, c.train_size, c.held_out_size, c.second_object), (32, 20_000, 2_000, false));
    assert_eq!(c.len(Split::Train), 20_000);
    assert_eq!(c.len(Split::HeldOut), 2_000);
}

#[test]
fn same_seed_same_bytes_different_seed_differs() {
    let idx = first(64);
    let a = samples(&cfg(7), Split::Train, &idx).unwrap();
    let b = samples(&cfg(7), Split::Train, &idx).unwrap();
    assert_eq!(a, b);
    let c = samples(&cfg(8), Split::Train, &idx).unwrap();
    let same = a.iter().zip(&c).filter(|(x, y)| x.image == y.image).count();
    assert_eq!(same, 0, "seed 7 and seed 8 share {same} images");
    // Out-of-order single draws equal the batch draws (samples are independent of each other).
    for &i in [63usize, 0, 31].iter() {
        assert_eq!(sample(&cfg(7), Split::Train, i).unwrap(), a[i]);
    }
}

#[test]
fn thread_count_independent() {
    let idx: Vec<usize> = (0..96).map(|i| (i * 37) % 1000).collect();
    for second_object in [false, true] {
        let c = ShapesConfig { second_object, ..cfg(3) };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| batch(&c, Split::Train, &idx).unwrap())
        };
        let (img1, cap1, lab1) = run(1);
        let (img3, cap3, lab3) = run(3);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&img1), bits(&img3));
        assert_eq!(cap1, cap3);
        assert_eq!(lab1, lab3);
    }
}

#[test]
fn splits_disjoint() {
    let idx = first(500);
    let train = samples(&cfg(0), Split::Train, &idx).unwrap();
    let held = samples(&cfg(0), Split::HeldOut, &idx).unwrap();
    let train_images: HashSet<&[u8]> = train.iter().map(|s| s.image.as_slice()).collect();
    assert_eq!(train_images.len(), 500, "duplicate images inside the training split");
    let shared = held.iter().filter(|s| train_images.contains(s.image.as_slice())).count();
    assert_eq!(shared, 0, "{shared} held-out images also appear in the training split");
}

#[test]
fn batch_matches_samples() {
    let c = cfg(11);
    let idx = [5usize, 2, 1999, 0];
    let (images, captions, labels) = batch(&c, Split::HeldOut, &idx).unwrap();
    let plane = 3 * 32 * 32;
    assert_eq!(images.len(), idx.len() * plane);
    for (k, &i) in idx.iter().enumerate() {
        let s = sample(&c, Split::HeldOut, i).unwrap();
        assert_eq!(s.image.len(), 32 * 32 * 3);
        assert_eq!(images[k * plane..(k + 1) * plane], normalize_hwc(&s.image, 32, 32).unwrap()[..]);
        assert_eq!(captions[k], s.caption);
        assert_eq!(labels[k], s.label);
    }
    let (empty, caps, labs) = batch(&c, Split::Train, &[]).unwrap();
    assert!(empty.is_empty() && caps.is_empty() && labs.is_empty());
}

#[test]
fn classes_and_templates() {
    let names = classes();
    assert_eq!(names.len(), NUM_CLASSES);
    assert_eq!(NUM_CLASSES, 35);
    assert_eq!(names[0], "red circle");
    assert_eq!(names[1], "red square");
    assert_eq!(names[5], "green circle");
    assert_eq!(names[34], "white diamond");
    assert_eq!(names.iter().collect::<HashSet<_>>().len(), 35);
    for (label, name) in names.iter().enumerate() {
        let (c, s) = class_of(label).unwrap();
        assert_eq!(label_of(c, s), label);
        assert_eq!(*name, format!("{} {}", c.name(), s.name()));
    }
    assert!(class_of(35).is_none());
    assert!(templates().len() >= 2);
    assert!(templates().iter().all(|t| t.matches("{}").count() == 1));
    assert!(templates().contains(&"a photo of a {}."));
    assert!(templates().contains(&"a {}."));
    let prompts = class_prompts();
    assert_eq!(prompts[2][0], "a photo of a red triangle.");
    assert_eq!(prompts[25][0], "a photo of an orange circle.");
    assert_eq!(prompt("a {}.", "orange cross"), "an orange cross.");
    assert_eq!(prompt("there is a {}.", "white cross"), "there is a white cross.");
    for p in prompts.iter().flatten() {
        assert!(good_articles(p), "{p:?}");
    }
    // Every prompt fits CLIP's tokenizer at context 16.
    let tok = Tokenizer::clip();
    for p in prompts.iter().flatten() {
        tok.tokenize(p, 16, false).unwrap_or_else(|e| panic!("prompt {p:?}: {e}"));
    }
}

/// No "a" before a vowel, no "an" before a consonant.
fn good_articles(text: &str) -> bool {
    let words: Vec<&str> = text.split(' ').collect();
    words.windows(2).all(|w| {
        let vowel = w[1].starts_with(['a', 'e', 'i', 'o', 'u']);
        !(w[0] == "a" && vowel || w[0] == "an" && !vowel)
    })
}

fn has_word(caption: &str, word: &str) -> bool {
    caption.split(|ch: char| !ch.is_alphanumeric()).any(|w| w == word)
}

#[test]
fn captions_name_the_label() {
    for second_object in [false, true] {
        let c = ShapesConfig { second_object, ..cfg(5) };
        let all = samples(&c, Split::Train, &first(700)).unwrap();
        let mut seen_captions = HashSet::new();
        for s in &all {
            assert_eq!(s.label, s.colour.index() * 5 + s.shape.index());
            assert_eq!(s.label, label_of(s.colour, s.shape));
            assert_eq!(classes()[s.label], format!("{} {}", s.colour.name(), s.shape.name()));
            assert!(has_word(&s.caption, s.colour.name()), "{:?} lacks {}", s.caption, s.colour.name());
            assert!(has_word(&s.caption, s.shape.name()), "{:?} lacks {}", s.caption, s.shape.name());
            if s.caption.contains("small") || s.caption.contains("large") {
                assert!(has_word(&s.caption, s.size.name()), "{:?} names the wrong size", s.caption);
            }
            if !second_object {
                // No other colour or shape word appears.
                for col in Colour::ALL.iter().filter(|&&x| x != s.colour) {
                    assert!(!has_word(&s.caption, col.name()), "{:?} mentions {}", s.caption, col.name());
                }
                for sh in Shape::ALL.iter().filter(|&&x| x != s.shape) {
                    assert!(!has_word(&s.caption, sh.name()), "{:?} mentions {}", s.caption, sh.name());
                }
                let any_pos = Position::ALL.iter().any(|p| has_word(&s.caption, p.name()));
                if any_pos {
                    assert!(s.caption.contains(s.position.phrase()), "{:?} vs {:?}", s.caption, s.position);
                }
                assert!(s.second.is_none());
            } else {
                let o = s.second.as_ref().expect("second object");
                assert_ne!(o.label(), s.label);
                assert_ne!(o.position, s.position);
                assert_eq!(o.size, Size::Small);
                assert!(has_word(&s.caption, o.colour.name()) && has_word(&s.caption, o.shape.name()));
            }
            assert!(good_articles(&s.caption), "{:?}", s.caption);
            seen_captions.insert(template_of(&s.caption));
        }
        let want = if second_object { 4 } else { 10 };
        assert_eq!(seen_captions.len(), want, "caption templates used: {seen_captions:?}");
    }
}

/// The caption with its attribute words blanked, i.e. its template.
fn template_of(caption: &str) -> String {
    let words: Vec<&str> = Colour::ALL
        .iter()
        .map(|c| c.name())
        .chain(Shape::ALL.iter().map(|s| s.name()))
        .chain(Size::ALL.iter().map(|s| s.name()))
        .chain(Position::ALL.iter().map(|p| p.name()))
        .collect();
    let mut caption = caption.to_string();
    for p in Position::ALL {
        caption = caption.replace(p.phrase(), "at the _");
    }
    caption
        .split(' ')
        .map(|w| {
            if words.contains(&w) {
                "_"
            } else if w == "an" {
                "a"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn balance_roughly_uniform() {
    let all = samples(&cfg(0), Split::Train, &first(3500)).unwrap();
    let mut class = [0usize; 35];
    let mut colour = [0usize; 7];
    let mut shape = [0usize; 5];
    let mut size = [0usize; 2];
    let mut position = [0usize; 5];
    for s in &all {
        class[s.label] += 1;
        colour[s.colour.index()] += 1;
        shape[s.shape.index()] += 1;
        size[s.size as usize] += 1;
        position[s.position as usize] += 1;
    }
    assert!(class.iter().all(|&n| (50..=150).contains(&n)), "class counts {class:?}");
    assert!(colour.iter().all(|&n| (400..=600).contains(&n)), "colour counts {colour:?}");
    assert!(shape.iter().all(|&n| (600..=800).contains(&n)), "shape counts {shape:?}");
    assert!(size.iter().all(|&n| (1550..=1950).contains(&n)), "size counts {size:?}");
    assert!(position.iter().all(|&n| (600..=800).contains(&n)), "position counts {position:?}");
}

#[test]
fn captions_fit_context_16() {
    let tok = Tokenizer::clip();
    for second_object in [false, true] {
        let c = ShapesConfig { second_object, ..cfg(9) };
        let all = samples(&c, Split::HeldOut, &first(1000)).unwrap();
        for s in &all {
            tok.tokenize(&s.caption, 16, false).unwrap_or_else(|e| panic!("caption {:?}: {e}", s.caption));
        }
    }
}

fn mean_rgb(img: &[u8], r: usize, pred: impl Fn(usize, usize) -> bool) -> ([f64; 3], usize) {
    let mut sum = [0f64; 3];
    let mut n = 0;
    for y in 0..r {
        for x in 0..r {
            if pred(x, y) {
                let i = (y * r + x) * 3;
                for c in 0..3 {
                    sum[c] += img[i + c] as f64;
                }
                n += 1;
            }
        }
    }
    (sum.map(|v| v / n.max(1) as f64), n)
}

fn check_visible(c: &ShapesConfig, n: usize) {
    let r = c.resolution;
    for s in samples(c, Split::Train, &first(n)).unwrap() {
        let [x0, y0, x1, y1] = s.bbox;
        assert!(x0 <= x1 && y0 <= y1 && x1 < r && y1 < r, "bbox {:?}", s.bbox);
        let inb = |x: usize, y: usize| x >= x0 && x <= x1 && y >= y0 && y <= y1;
        let (bg, n_bg) = mean_rgb(&s.image, r, |x, y| !inb(x, y));
        assert!(n_bg > 0);
        assert!(bg.iter().all(|&v| v < 60.0), "background not dark: {bg:?}");
        let (fg, _) = mean_rgb(&s.image, r, inb);
        let dist = fg.iter().zip(&bg).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
        assert!(dist > 50.0, "object {:?} barely differs from the background: {fg:?} vs {bg:?}", s.caption);
        // At least 30 % of the box's pixels are clearly off the background.
        let area = (x1 - x0 + 1) * (y1 - y0 + 1);
        let mut off = 0;
        for y in y0..=y1 {
            for x in x0..=x1 {
                let i = (y * r + x) * 3;
                let d: f64 = (0..3).map(|k| (s.image[i + k] as f64 - bg[k]).powi(2)).sum::<f64>().sqrt();
                off += (d > 80.0) as usize;
            }
        }
        assert!(off * 10 >= area * 3, "{:?}: only {off} of {area} box pixels differ", s.caption);
        // The extent follows the size class (small 25–35 %, large 50–65 % of the side; the square is 90 %).
        let extent = (x1 - x0 + 1).max(y1 - y0 + 1) as f64 / r as f64;
        let (lo, hi) = match s.size {
            Size::Small => (0.2, 0.4),
            Size::Large => (0.42, 0.7),
        };
        assert!(
            extent >= lo && extent <= hi,
            "{:?} ({:?} {:?}) spans {extent:.2} of the side",
            s.caption,
            s.size,
            s.shape
        );
        // The object's centre is on the named side.
        let (cx, cy) = ((x0 + x1 + 1) as f64 / 2.0 / r as f64, (y0 + y1 + 1) as f64 / 2.0 / r as f64);
        let ok = match s.position {
            Position::Left => cx < 0.45,
            Position::Right => cx > 0.55,
            Position::Top => cy < 0.45,
            Position::Bottom => cy > 0.55,
            Position::Middle => (cx - 0.5).abs() < 0.1 && (cy - 0.5).abs() < 0.1,
        };
        assert!(ok, "{:?}: centre ({cx:.2}, {cy:.2}) for {:?}", s.caption, s.position);
    }
}

#[test]
fn object_visible() {
    check_visible(&cfg(1), 500);
}

#[test]
fn resolution_64() {
    let c = ShapesConfig { resolution: 64, ..cfg(2) };
    let s = sample(&c, Split::Train, 0).unwrap();
    assert_eq!((s.resolution, s.image.len()), (64, 64 * 64 * 3));
    let (images, captions, labels) = batch(&c, Split::Train, &first(8)).unwrap();
    assert_eq!(images.len(), 8 * 3 * 64 * 64);
    assert_eq!((captions.len(), labels.len()), (8, 8));
    check_visible(&c, 200);
    // Attributes and captions do not depend on the resolution.
    let s32 = sample(&cfg(2), Split::Train, 0).unwrap();
    assert_eq!((s32.caption, s32.label, s32.size, s32.position), (s.caption, s.label, s.size, s.position));
}

#[test]
fn errors_name_the_option() {
    let bad = ShapesConfig { resolution: 4, ..cfg(0) };
    match sample(&bad, Split::Train, 0) {
        Err(Error::Invalid { msg, .. }) => assert!(msg.contains("resolution") && msg.contains('8'), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(matches!(batch(&bad, Split::Train, &[0]), Err(Error::Invalid { .. })));
    let empty = ShapesConfig { held_out_size: 0, ..cfg(0) };
    match batch(&empty, Split::Train, &[0]) {
        Err(Error::Invalid { msg, .. }) => assert!(msg.contains("held_out_size"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    match batch(&cfg(0), Split::HeldOut, &[0, 2000]) {
        Err(Error::Invalid { msg, .. }) => assert!(msg.contains("2000") && msg.contains("HeldOut"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let err = save_grid(&cfg(0), Split::Train, &[0], 0, 1, std::env::temp_dir().join("never.png")).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
}

#[test]
fn grid_png_round_trips() {
    let path = std::env::temp_dir().join("shapes_grid.png");
    let idx = first(40);
    save_grid(&cfg(0), Split::Train, &idx, 8, 4, &path).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    // 8 columns × 5 rows of 128-pixel tiles with 2-pixel gaps.
    assert_eq!((img.width(), img.height()), (8 * 128 + 9 * 2, 5 * 128 + 6 * 2));
    let s = sample(&cfg(0), Split::Train, 9).unwrap();
    // Tile 9 (row 1, column 1) pixel (3, 5) at scale 4.
    let p = img.get_pixel(2 + 130 + 3 * 4, 2 + 130 + 5 * 4).0;
    let i = (5 * 32 + 3) * 3;
    assert_eq!(p, [s.image[i], s.image[i + 1], s.image[i + 2]]);
    // The two-object variant, for looking at.
    let two = ShapesConfig { second_object: true, ..cfg(0) };
    save_grid(&two, Split::Train, &idx[..16], 8, 4, std::env::temp_dir().join("shapes_grid_two.png")).unwrap();
    for (k, s) in samples(&two, Split::Train, &idx[..16]).unwrap().iter().enumerate() {
        println!("two-object sample {k}: {}", s.caption);
    }
}

/// `cargo test --release --test shapes -- --ignored --nocapture speed` prints the generation rate.
#[test]
#[ignore]
fn speed() {
    let c = cfg(0);
    let idx = first(20_000);
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let t = std::time::Instant::now();
        let all = pool.install(|| samples(&c, Split::Train, &idx).unwrap());
        let dt = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let (img, _, _) = pool.install(|| batch(&c, Split::Train, &idx).unwrap());
        let db = t.elapsed().as_secs_f64();
        println!(
            "{threads} thread(s): samples {:.0}/s, normalised batch {:.0}/s ({} samples, {} floats)",
            all.len() as f64 / dt,
            idx.len() as f64 / db,
            all.len(),
            img.len()
        );
    }
}
