//! The training-curve PNG that `cliprt train` writes: loss against step (top panel) and zero-shot top-1 accuracy
//! against step (bottom panel), on one shared step axis.
//!
//! Drawn with `plotters` into an RGB buffer and encoded by the `image` crate's PNG encoder (plotters' own encoder
//! would pull in a second, older `image`). Text is rendered from an embedded subset of DejaVu Sans
//! (`data/fonts/`, see its LICENSE), so a plot needs no system fonts and looks the same on every machine.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{Error, Result};

/// Size of the PNG in pixels.
pub const PLOT_WIDTH: u32 = 900;
pub const PLOT_HEIGHT: u32 = 500;

const FONT: &[u8] = include_bytes!("../data/fonts/DejaVuSans-subset.ttf");
const LOSS_COLOUR: RGBColor = RGBColor(31, 119, 180);
const ACCURACY_COLOUR: RGBColor = RGBColor(214, 39, 40);

/// Writes the training curves to `path` as a [`PLOT_WIDTH`]×[`PLOT_HEIGHT`] PNG, atomically: the image goes to a
/// temp file in the same folder first and is renamed over `path` once complete ([`crate::checkpoint::write_atomic`]), so a reader never sees half a
/// file and an old plot survives a failed write.
///
/// `loss` is (step, loss) per logged step; non-finite losses (a diverged step) are skipped and counted in the panel
/// caption. `accuracy` is (step, zero-shot top-1 as a fraction in [0, 1]) per evaluation, drawn with markers; it
/// may be empty (the panel then says so) or hold a single point. Neither series needs to be sorted by step.
///
/// Errors: [`Error::Io`] naming the file that could not be written (e.g. a folder that does not exist) or, should
/// drawing itself fail, the plot's path.
pub fn write_training_plot(path: &Path, loss: &[(u64, f64)], accuracy: &[(u64, f64)], title: &str) -> Result<()> {
    let rgb = render(loss, accuracy, title).map_err(|msg| Error::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(format!("drawing the training plot: {msg}")),
    })?;
    let mut png = Vec::with_capacity(64 * 1024);
    {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&rgb, PLOT_WIDTH, PLOT_HEIGHT, image::ExtendedColorType::Rgb8)
            .map_err(|e| Error::Io {
                path: path.display().to_string(),
                source: std::io::Error::other(format!("encoding the training plot as PNG: {e}")),
            })?;
    }
    crate::checkpoint::write_atomic(path, &png)
}

/// Registers the embedded font as plotters' "sans-serif" (the family its axis labels default to), once.
fn register_font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err("the embedded font data/fonts/DejaVuSans-subset.ttf does not parse".to_string())
    }
}

/// Draws the two panels into a fresh RGB8 buffer. A panic inside plotters (it has a few on degenerate ranges) is
/// turned into an error: a plot must never take a training run down with it.
fn render(loss: &[(u64, f64)], accuracy: &[(u64, f64)], title: &str) -> std::result::Result<Vec<u8>, String> {
    register_font()?;
    let mut rgb = vec![255u8; (PLOT_WIDTH * PLOT_HEIGHT * 3) as usize];
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| draw(&mut rgb, loss, accuracy, title))).map_err(
        |panic| {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            format!("plotters panicked: {msg}")
        },
    )??;
    Ok(rgb)
}

fn draw(rgb: &mut [u8], loss: &[(u64, f64)], accuracy: &[(u64, f64)], title: &str) -> std::result::Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let finite_loss: Vec<(u64, f64)> = loss.iter().copied().filter(|(_, v)| v.is_finite()).collect();
    let skipped = loss.len() - finite_loss.len();
    let finite_acc: Vec<(u64, f64)> = accuracy.iter().copied().filter(|(_, v)| v.is_finite()).collect();

    let root = BitMapBackend::with_buffer(rgb, (PLOT_WIDTH, PLOT_HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let body = root.titled(title, ("sans-serif", 22)).map_err(|e| err(&e))?;
    let body_height = body.dim_in_pixel().1 as i32;
    let (top, bottom) = body.split_vertically(body_height * 3 / 5);

    let steps = step_range(finite_loss.iter().chain(&finite_acc).map(|&(s, _)| s));

    // Loss panel.
    let mut caption = match finite_loss.iter().max_by_key(|&&(s, _)| s) {
        Some(&(s, v)) => format!("training loss (last {} at step {s})", compact(v)),
        None => "training loss".to_string(),
    };
    if skipped > 0 {
        caption.push_str(&format!(", {skipped} non-finite value{} skipped", if skipped == 1 { "" } else { "s" }));
    }
    let mut chart = ChartBuilder::on(&top)
        .caption(caption, ("sans-serif", 15))
        .margin_left(10)
        .margin_right(25)
        .margin_top(4)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(steps.clone(), value_range(finite_loss.iter().map(|&(_, v)| v)))
        .map_err(|e| err(&e))?;
    let scientific = |v: &f64| compact(*v);
    let mut mesh = chart.configure_mesh();
    mesh.y_desc("loss").x_labels(10).y_labels(6).light_line_style(WHITE);
    if finite_loss.iter().any(|&(_, v)| !(1e-3..1e5).contains(&v.abs()) && v != 0.0) {
        // plotters writes every digit of 1e300; ordinary losses keep its tick-aware formatting.
        mesh.y_label_formatter(&scientific);
    }
    mesh.draw().map_err(|e| err(&e))?;
    let mut sorted_loss = finite_loss;
    sorted_loss.sort_by_key(|&(s, _)| s);
    if sorted_loss.is_empty() {
        note(&top, "no finite loss values yet")?;
    } else {
        chart
            .draw_series(LineSeries::new(sorted_loss.iter().copied(), LOSS_COLOUR.stroke_width(2)))
            .map_err(|e| err(&e))?;
        if sorted_loss.len() == 1 {
            chart
                .draw_series(sorted_loss.iter().map(|&p| Circle::new(p, 4, LOSS_COLOUR.filled())))
                .map_err(|e| err(&e))?;
        }
    }

    // Accuracy panel: a fraction drawn as a percentage; the range grows past 100% only if the data do.
    let acc_caption = match finite_acc.iter().max_by_key(|&&(s, _)| s) {
        Some(&(s, v)) => format!("zero-shot top-1 accuracy (last {:.1}% at step {s})", v * 100.0),
        None => "zero-shot top-1 accuracy".to_string(),
    };
    let acc_max = finite_acc.iter().map(|&(_, v)| v).fold(1.0f64, f64::max);
    let acc_min = finite_acc.iter().map(|&(_, v)| v).fold(0.0f64, f64::min);
    let mut chart = ChartBuilder::on(&bottom)
        .caption(acc_caption, ("sans-serif", 15))
        .margin_left(10)
        .margin_right(25)
        .margin_bottom(6)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(steps, acc_min..acc_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("top-1")
        .x_labels(10)
        .y_labels(5)
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| err(&e))?;
    let mut sorted_acc = finite_acc;
    sorted_acc.sort_by_key(|&(s, _)| s);
    if sorted_acc.is_empty() {
        note(&bottom, "no zero-shot evaluation yet")?;
    } else {
        chart
            .draw_series(LineSeries::new(sorted_acc.iter().copied(), ACCURACY_COLOUR.stroke_width(2)))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(sorted_acc.iter().map(|&p| Circle::new(p, 4, ACCURACY_COLOUR.filled())))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

/// Four significant digits, in scientific notation for very large or very small magnitudes.
fn compact(v: f64) -> String {
    if v != 0.0 && !(1e-3..1e5).contains(&v.abs()) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// Grey text in the middle of an empty panel.
fn note<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    text: &str,
) -> std::result::Result<(), String> {
    let (w, h) = area.dim_in_pixel();
    let style =
        ("sans-serif", 16).into_font().color(&RGBColor(120, 120, 120)).pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(text.to_string(), (w as i32 / 2, h as i32 / 2), style)).map_err(|e| e.to_string())
}

/// The step axis: the data's range, widened to at least two steps so a single point sits inside it.
fn step_range(steps: impl Iterator<Item = u64>) -> Range<u64> {
    let (lo, hi) = steps.fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
    if lo > hi {
        return 0..1;
    }
    if lo == hi {
        return lo.saturating_sub(1)..hi.saturating_add(1);
    }
    lo..hi
}

/// A value axis: the data's range plus 5% on each side; a flat series gets a band around its value.
fn value_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 0.0..1.0;
    }
    let span = hi - lo;
    if !span.is_finite() {
        // Values near ±f64::MAX: no room for padding, and plotters needs a finite span.
        return (lo / 2.0)..(hi / 2.0);
    }
    let pad = if span > 0.0 { span * 0.05 } else { (hi.abs() * 0.05).max(0.05) };
    (lo - pad)..(hi + pad)
}
