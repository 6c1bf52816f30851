//! The embedded `shapes` data set (SPEC §5): procedurally drawn RGB images of one coloured shape (optionally a second
//! one) on a dark noisy background, with captions from several sentence templates and 35 zero-shot classes.
//!
//! Every sample is a pure function of `(seed, split, index)`: its generator is a [`ChaCha8Rng`] keyed by the seed
//! with the stream number `split << 62 | index`, so samples can be drawn independently, in any order and on any
//! number of threads, and the same seed always gives the same bytes. The two splits use disjoint streams.
//!
//! Labels: `label = colour_index * 5 + shape_index` (see [`Colour::ALL`], [`Shape::ALL`]), which is the index of
//! the class name in [`classes`] ("red circle", "red square", …, "white diamond").

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::image::normalize_hwc;
use crate::error::{Error, Result};

/// Smallest supported image side: below it small shapes are a handful of pixels and no longer recognisable.
pub const MIN_RESOLUTION: usize = 8;
/// Largest supported image side (memory guard: one image is `3 * R * R` bytes).
pub const MAX_RESOLUTION: usize = 1024;
/// Number of zero-shot classes (colour × shape pairs).
pub const NUM_CLASSES: usize = Colour::ALL.len() * Shape::ALL.len();

/// The object's outline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Cross,
    Diamond,
}

impl Shape {
    pub const ALL: [Shape; 5] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Cross, Shape::Diamond];

    /// The word used in captions and class names.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Cross => "cross",
            Shape::Diamond => "diamond",
        }
    }

    /// Position in [`Shape::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The object's fill colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    White,
}

impl Colour {
    pub const ALL: [Colour; 7] =
        [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow, Colour::Purple, Colour::Orange, Colour::White];

    /// The word used in captions and class names.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
            Colour::White => "white",
        }
    }

    /// Position in [`Colour::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The nominal RGB value; each sample jitters it by at most [`COLOUR_JITTER`] per channel.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 30],
            Colour::Green => [40, 200, 50],
            Colour::Blue => [40, 80, 235],
            Colour::Yellow => [235, 225, 40],
            Colour::Purple => [155, 50, 205],
            Colour::Orange => [250, 140, 20],
            Colour::White => [240, 240, 240],
        }
    }
}

/// Largest per-channel deviation of an object's colour from [`Colour::rgb`].
pub const COLOUR_JITTER: i32 = 15;

/// The object's size class: small objects span 25–35 % of the image side, large ones 50–65 %.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// The range of the object's extent as a fraction of the image side.
    pub fn extent_range(self) -> (f32, f32) {
        match self {
            Size::Small => (0.25, 0.35),
            Size::Large => (0.50, 0.65),
        }
    }
}

/// Where the object's centre lies (before a jitter of up to 6 % of the side on each axis).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Position {
    Left,
    Right,
    Top,
    Bottom,
    Middle,
}

impl Position {
    pub const ALL: [Position; 5] = [Position::Left, Position::Right, Position::Top, Position::Bottom, Position::Middle];

    pub fn name(self) -> &'static str {
        match self {
            Position::Left => "left",
            Position::Right => "right",
            Position::Top => "top",
            Position::Bottom => "bottom",
            Position::Middle => "middle",
        }
    }

    /// The phrase used in captions: "on the left", "at the top", "in the middle", ….
    pub fn phrase(self) -> &'static str {
        match self {
            Position::Left => "on the left",
            Position::Right => "on the right",
            Position::Top => "at the top",
            Position::Bottom => "at the bottom",
            Position::Middle => "in the middle",
        }
    }

    /// Nominal centre as fractions of the side `(x, y)`.
    fn centre(self) -> (f32, f32) {
        match self {
            Position::Left => (0.27, 0.5),
            Position::Right => (0.73, 0.5),
            Position::Top => (0.5, 0.27),
            Position::Bottom => (0.5, 0.73),
            Position::Middle => (0.5, 0.5),
        }
    }
}

/// Which sample stream: training or held-out (disjoint generator streams).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    HeldOut,
}

impl Split {
    fn tag(self) -> u64 {
        match self {
            Split::Train => 0,
            Split::HeldOut => 1,
        }
    }
}

/// Options of the data set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapesConfig {
    /// Image side in pixels (square images); 32 by default, at least [`MIN_RESOLUTION`].
    pub resolution: usize,
    /// Number of training samples (indices `0..train_size`).
    pub train_size: usize,
    /// Number of held-out samples (indices `0..held_out_size`).
    pub held_out_size: usize,
    /// Draw a second, small object (different colour×shape pair; of the other positions, the one overlapping the
    /// first object least; drawn behind it) and mention it in the
    /// caption. The label stays the first object's.
    pub second_object: bool,
    /// Seed of every sample's generator.
    pub seed: u64,
}

impl Default for ShapesConfig {
    fn default() -> Self {
        ShapesConfig { resolution: 32, train_size: 20_000, held_out_size: 2_000, second_object: false, seed: 0 }
    }
}

impl ShapesConfig {
    /// Checks the options; the error names the option at fault and the fix.
    pub fn validate(&self) -> Result<()> {
        if self.resolution < MIN_RESOLUTION || self.resolution > MAX_RESOLUTION {
            return Err(Error::Invalid {
                op: "shapes",
                msg: format!(
                    "resolution {} is out of range; use a resolution between {MIN_RESOLUTION} and \
                     {MAX_RESOLUTION} pixels (default 32)",
                    self.resolution
                ),
            });
        }
        if self.train_size == 0 {
            return Err(Error::Invalid {
                op: "shapes",
                msg: "train_size is 0; use at least 1 training sample (default 20000)".to_string(),
            });
        }
        if self.held_out_size == 0 {
            return Err(Error::Invalid {
                op: "shapes",
                msg: "held_out_size is 0; use at least 1 held-out sample (default 2000)".to_string(),
            });
        }
        Ok(())
    }

    /// Number of samples in `split`.
    pub fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train_size,
            Split::HeldOut => self.held_out_size,
        }
    }

    /// Whether `split` holds no samples (never true for a valid configuration).
    pub fn is_empty(&self, split: Split) -> bool {
        self.len(split) == 0
    }
}

/// Inclusive pixel bounding box `[x0, y0, x1, y1]` of the pixels an object covers.
pub type BBox = [usize; 4];

/// One drawn object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    pub position: Position,
    /// Pixels it covers (before anything drawn over it).
    pub bbox: BBox,
}

impl Object {
    /// Zero-shot class of the object: `colour_index * 5 + shape_index`.
    pub fn label(&self) -> usize {
        label_of(self.colour, self.shape)
    }
}

/// One sample of the data set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// HWC RGB bytes, `resolution * resolution * 3`.
    pub image: Vec<u8>,
    pub resolution: usize,
    pub caption: String,
    /// Zero-shot class of the (first) object: `colour.index() * 5 + shape.index()`, index into [`classes`].
    pub label: usize,
    pub colour: Colour,
    pub shape: Shape,
    pub size: Size,
    pub position: Position,
    /// Inclusive pixel bounding box of the (first) object, which is drawn last and so is never covered.
    pub bbox: BBox,
    /// The second object, with [`ShapesConfig::second_object`].
    pub second: Option<Object>,
}

/// The class index of a colour×shape pair: `colour.index() * 5 + shape.index()`.
pub fn label_of(colour: Colour, shape: Shape) -> usize {
    colour.index() * Shape::ALL.len() + shape.index()
}

/// The colour×shape pair of a class index (inverse of [`label_of`]); `None` past [`NUM_CLASSES`].
pub fn class_of(label: usize) -> Option<(Colour, Shape)> {
    (label < NUM_CLASSES).then(|| (Colour::ALL[label / Shape::ALL.len()], Shape::ALL[label % Shape::ALL.len()]))
}

/// The zero-shot class names, one per line, in label order (`colour_index * 5 + shape_index`): the data file is the
/// one source of truth, embedded in the binary.
pub const CLASSNAMES_FILE: &str = include_str!("../../data/zeroshot/shapes_classnames.txt");
/// The zero-shot prompt templates, one per line, `{}` standing for the class name.
pub const TEMPLATES_FILE: &str = include_str!("../../data/zeroshot/shapes_templates.txt");

/// The 35 zero-shot class names, "red circle", "red square", …, indexed by label (read from [`CLASSNAMES_FILE`]).
pub fn classes() -> Vec<String> {
    crate::data::list_lines(CLASSNAMES_FILE).into_iter().map(str::to_string).collect()
}

/// Zero-shot prompt templates; `{}` stands for the class name (see [`prompt`]); read from [`TEMPLATES_FILE`].
pub fn templates() -> &'static [&'static str] {
    static TEMPLATES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    TEMPLATES.get_or_init(|| crate::data::list_lines(TEMPLATES_FILE))
}

/// A template with its `{}` replaced by the class name, and "a {}" made "an {}" before a vowel ("a photo of an
/// orange square").
pub fn prompt(template: &str, class: &str) -> String {
    if article(class) == "an" {
        if let Some(i) = template.find("a {}").filter(|&i| i == 0 || template[..i].ends_with(' ')) {
            return format!("{}an {}{}", &template[..i], class, &template[i + 4..]);
        }
    }
    template.replacen("{}", class, 1)
}

/// Every class's prompts: `[class][template]`.
pub fn class_prompts() -> Vec<Vec<String>> {
    classes().iter().map(|c| templates().iter().map(|t| prompt(t, c)).collect()).collect()
}

/// The generator of one sample: key from the seed, stream `split << 62 | index`.
fn sample_rng(seed: u64, split: Split, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((split.tag() << 62) | (index as u64 & ((1u64 << 62) - 1)));
    rng
}

/// Number of single-object caption templates (see [`single_caption`]).
const SINGLE_TEMPLATES: usize = 10;
/// Number of two-object caption templates (see [`double_caption`]).
const DOUBLE_TEMPLATES: usize = 4;

fn single_caption(t: usize, o: &Object) -> String {
    let (sz, c, s, p) = (o.size.name(), o.colour.name(), o.shape.name(), o.position.phrase());
    let ac = article(c);
    match t {
        0 => format!("a {sz} {c} {s} {p}"),
        1 => format!("{ac} {c} {s}"),
        2 => format!("there is a {sz} {c} {s} {p} of the picture"),
        3 => format!("a picture of {ac} {c} {s} {p}"),
        4 => format!("a {sz} {c} {s}"),
        5 => format!("{ac} {c} {s} {p}"),
        6 => format!("a photo of a {sz} {c} {s}"),
        7 => format!("the {s} {p} is {c}"),
        8 => format!("{ac} {c} {s} on a dark background"),
        _ => format!("an image of a {sz} {c} {s} {p}"),
    }
}

fn double_caption(t: usize, a: &Object, b: &Object) -> String {
    let (c1, s1, p1, z1) = (a.colour.name(), a.shape.name(), a.position.phrase(), a.size.name());
    let (c2, s2, p2, z2) = (b.colour.name(), b.shape.name(), b.position.phrase(), b.size.name());
    let (a1, a2) = (article(c1), article(c2));
    match t {
        0 => format!("{a1} {c1} {s1} and {a2} {c2} {s2}"),
        1 => format!("{a1} {c1} {s1} {p1} and {a2} {c2} {s2} {p2}"),
        2 => format!("a {z1} {c1} {s1} and a {z2} {c2} {s2}"),
        _ => format!("two shapes, {a1} {c1} {s1} and {a2} {c2} {s2}"),
    }
}

/// "an" before a vowel ("an orange circle"), "a" otherwise.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Object attributes before drawing.
struct Plan {
    shape: Shape,
    colour: Colour,
    size: Size,
    position: Position,
    rgb: [u8; 3],
    /// Centre in pixels.
    cx: f32,
    cy: f32,
    /// Half extent in pixels.
    half: f32,
}

fn plan_object(
    rng: &mut ChaCha8Rng,
    r: usize,
    shape: Shape,
    colour: Colour,
    position: Position,
    size: Option<Size>,
) -> Plan {
    let drawn = Size::ALL[rng.random_range(0..Size::ALL.len())];
    let size = size.unwrap_or(drawn);
    let (lo, hi) = size.extent_range();
    let rf = r as f32;
    let half = rng.random_range(lo..hi) * rf * 0.5;
    let (fx, fy) = position.centre();
    let jx = rng.random_range(-0.06f32..0.06);
    let jy = rng.random_range(-0.06f32..0.06);
    // Keep the whole object inside the image.
    let clamp = |v: f32| v.clamp(half, (rf - half).max(half));
    let cx = clamp((fx + jx) * rf);
    let cy = clamp((fy + jy) * rf);
    let base = colour.rgb();
    let mut rgb = [0u8; 3];
    for (o, b) in rgb.iter_mut().zip(base) {
        *o = (b as i32 + rng.random_range(-COLOUR_JITTER..=COLOUR_JITTER)).clamp(0, 255) as u8;
    }
    Plan { shape, colour, size, position, rgb, cx, cy, half }
}

/// Area of intersection of two objects' extent squares.
fn overlap(a: &Plan, b: &Plan) -> f32 {
    let w = (a.cx + a.half).min(b.cx + b.half) - (a.cx - a.half).max(b.cx - b.half);
    let h = (a.cy + a.half).min(b.cy + b.half) - (a.cy - a.half).max(b.cy - b.half);
    w.max(0.0) * h.max(0.0)
}

/// Whether the pixel offset `(dx, dy)` from the centre lies inside a shape of half extent `h`.
fn inside(shape: Shape, dx: f32, dy: f32, h: f32) -> bool {
    match shape {
        Shape::Circle => dx * dx + dy * dy <= h * h,
        Shape::Square => dx.abs().max(dy.abs()) <= 0.9 * h,
        // Upward triangle: apex at the top, base (width 2h) at the bottom.
        Shape::Triangle => dy >= -h && dy <= h && dx.abs() <= (dy + h) * 0.5,
        Shape::Cross => {
            let t = 0.34 * h;
            (dx.abs() <= t && dy.abs() <= h) || (dy.abs() <= t && dx.abs() <= h)
        }
        Shape::Diamond => dx.abs() + dy.abs() <= h,
    }
}

/// Draws the object into the HWC image with per-pixel noise (one `u32` per pixel from `rng`), returning its bbox.
fn draw(img: &mut [u8], r: usize, p: &Plan, rng: &mut ChaCha8Rng) -> BBox {
    let x0 = (p.cx - p.half - 1.0).floor().max(0.0) as usize;
    let y0 = (p.cy - p.half - 1.0).floor().max(0.0) as usize;
    let x1 = ((p.cx + p.half + 1.0).ceil() as usize).min(r - 1);
    let y1 = ((p.cy + p.half + 1.0).ceil() as usize).min(r - 1);
    let mut bbox = [usize::MAX, usize::MAX, 0, 0];
    for y in y0..=y1 {
        for x in x0..=x1 {
            let dx = x as f32 + 0.5 - p.cx;
            let dy = y as f32 + 0.5 - p.cy;
            if !inside(p.shape, dx, dy, p.half) {
                continue;
            }
            let n = rng.random::<u32>().to_le_bytes();
            let px = &mut img[(y * r + x) * 3..(y * r + x) * 3 + 3];
            for c in 0..3 {
                px[c] = (p.rgb[c] as i32 + (n[c] % 13) as i32 - 6).clamp(0, 255) as u8;
            }
            bbox = [bbox[0].min(x), bbox[1].min(y), bbox[2].max(x), bbox[3].max(y)];
        }
    }
    if bbox[0] == usize::MAX {
        // Unreachable for resolution >= MIN_RESOLUTION (the centre pixel is always inside); keep a sane box.
        let (x, y) = ((p.cx as usize).min(r - 1), (p.cy as usize).min(r - 1));
        bbox = [x, y, x, y];
    }
    bbox
}

/// Sample `index` of `split`: a pure function of `(cfg.seed, split, index)` and the resolution / second-object
/// options.
pub fn sample(cfg: &ShapesConfig, split: Split, index: usize) -> Result<Sample> {
    cfg.validate()?;
    let len = cfg.len(split);
    if index >= len {
        return Err(Error::Invalid {
            op: "shapes::sample",
            msg: format!("index {index} is past the {split:?} split of {len} samples; use an index below {len}"),
        });
    }
    let r = cfg.resolution;
    let mut rng = sample_rng(cfg.seed, split, index);

    // Attributes first, then pixels, in a fixed order.
    let label = rng.random_range(0..NUM_CLASSES);
    let (colour, shape) = class_of(label).expect("label < NUM_CLASSES");
    let position = Position::ALL[rng.random_range(0..Position::ALL.len())];
    let first = plan_object(&mut rng, r, shape, colour, position, None);
    let second = if cfg.second_object {
        let mut other = rng.random_range(0..NUM_CLASSES - 1);
        if other >= label {
            other += 1;
        }
        let (c2, s2) = class_of(other).expect("other < NUM_CLASSES");
        // Small, at whichever other position overlaps the first object least (ties broken at random), so both
        // stay recognisable; a fixed number of draws whatever is chosen.
        let mut best: Option<(f32, u32, Plan)> = None;
        for p2 in Position::ALL.into_iter().filter(|&p| p != position) {
            let plan = plan_object(&mut rng, r, s2, c2, p2, Some(Size::Small));
            let key = (overlap(&first, &plan), rng.random::<u32>());
            if best.as_ref().is_none_or(|(o, t, _)| (key.0, key.1) < (*o, *t)) {
                best = Some((key.0, key.1, plan));
            }
        }
        best.map(|(_, _, plan)| plan)
    } else {
        None
    };
    let template = rng.random_range(0..if cfg.second_object { DOUBLE_TEMPLATES } else { SINGLE_TEMPLATES });

    // Dark background: a slightly tinted base level plus per-pixel noise.
    let level = rng.random_range(12i32..=40);
    let tint = [rng.random_range(-6i32..=6), rng.random_range(-6i32..=6), rng.random_range(-6i32..=6)];
    let mut image = vec![0u8; r * r * 3];
    for px in image.chunks_exact_mut(3) {
        let n = rng.random::<u32>().to_le_bytes();
        for c in 0..3 {
            px[c] = (level + tint[c] + (n[c] % 25) as i32 - 12).clamp(0, 255) as u8;
        }
    }

    // The second object goes behind the first, so the labelled object is always fully visible.
    let second = second.map(|p| {
        let bbox = draw(&mut image, r, &p, &mut rng);
        Object { shape: p.shape, colour: p.colour, size: p.size, position: p.position, bbox }
    });
    let bbox = draw(&mut image, r, &first, &mut rng);
    let obj = Object { shape, colour, size: first.size, position, bbox };
    let caption = match &second {
        Some(b) => double_caption(template, &obj, b),
        None => single_caption(template, &obj),
    };
    Ok(Sample { image, resolution: r, caption, label, colour, shape, size: first.size, position, bbox, second })
}

/// The samples at `indices` of `split`, generated in parallel (rayon); the result does not depend on the thread
/// count.
pub fn samples(cfg: &ShapesConfig, split: Split, indices: &[usize]) -> Result<Vec<Sample>> {
    cfg.validate()?;
    indices.par_iter().map(|&i| sample(cfg, split, i)).collect()
}

/// A batch: images `[n, 3, R, R]` (CHW, `v / 255` normalised with CLIP's mean and std, as
/// [`normalize_hwc`]), captions and labels, in the order of `indices`.
pub fn batch(cfg: &ShapesConfig, split: Split, indices: &[usize]) -> Result<(Vec<f32>, Vec<String>, Vec<usize>)> {
    let all = samples(cfg, split, indices)?;
    let r = cfg.resolution;
    let plane = 3 * r * r;
    let mut images = vec![0f32; indices.len() * plane];
    images.par_chunks_mut(plane.max(1)).zip(all.par_iter()).try_for_each(|(dst, s)| -> Result<()> {
        dst.copy_from_slice(&normalize_hwc(&s.image, r, r)?);
        Ok(())
    })?;
    let (captions, labels) = all.into_iter().map(|s| (s.caption, s.label)).unzip();
    Ok((images, captions, labels))
}

/// The samples at `indices` tiled into one RGB image, `columns` per row, each enlarged `scale` times (nearest
/// neighbour) with a 2-pixel grey gap, for looking at.
pub fn grid(
    cfg: &ShapesConfig,
    split: Split,
    indices: &[usize],
    columns: usize,
    scale: usize,
) -> Result<::image::RgbImage> {
    if columns == 0 || scale == 0 || indices.is_empty() {
        return Err(Error::Invalid {
            op: "shapes::grid",
            msg: format!(
                "columns {columns}, scale {scale}, {} indices: use at least 1 column, scale 1 and one index",
                indices.len()
            ),
        });
    }
    let all = samples(cfg, split, indices)?;
    let (r, gap) = (cfg.resolution, 2usize);
    let tile = r * scale;
    let rows = all.len().div_ceil(columns);
    let w = columns * tile + (columns + 1) * gap;
    let h = rows * tile + (rows + 1) * gap;
    let mut out = ::image::RgbImage::from_pixel(w as u32, h as u32, ::image::Rgb([128, 128, 128]));
    for (k, s) in all.iter().enumerate() {
        let ox = gap + (k % columns) * (tile + gap);
        let oy = gap + (k / columns) * (tile + gap);
        for y in 0..tile {
            for x in 0..tile {
                let i = ((y / scale) * r + x / scale) * 3;
                let px = [s.image[i], s.image[i + 1], s.image[i + 2]];
                out.put_pixel((ox + x) as u32, (oy + y) as u32, ::image::Rgb(px));
            }
        }
    }
    Ok(out)
}

/// [`grid`] saved as a PNG at `path`.
pub fn save_grid(
    cfg: &ShapesConfig,
    split: Split,
    indices: &[usize],
    columns: usize,
    scale: usize,
    path: impl AsRef<Path>,
) -> Result<()> {
    let path = path.as_ref();
    grid(cfg, split, indices, columns, scale)?.save(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: match e {
            ::image::ImageError::IoError(io) => io,
            other => std::io::Error::other(other),
        },
    })
}
