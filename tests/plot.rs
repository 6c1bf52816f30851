//! The training-curve PNG (`cliprt::plot`): a decodable image of the promised size with curves on it, written
//! atomically, errors that name the file, and no panic on degenerate inputs (NaN, infinities, empty series).

use std::path::PathBuf;

use cliprt::plot::{write_training_plot, PLOT_HEIGHT, PLOT_WIDTH};

/// A fresh folder per test under the system temp dir (tests run in parallel threads of one process).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cliprt-plot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn decode(path: &std::path::Path) -> image::RgbImage {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap().to_rgb8()
}

/// Pixels close to a colour (anti-aliased edges blend, so count near matches).
fn count_near(img: &image::RgbImage, rgb: [u8; 3]) -> usize {
    img.pixels().filter(|p| p.0.iter().zip(rgb).all(|(&a, b)| (a as i32 - b as i32).abs() <= 24)).count()
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

type Series = Vec<(u64, f64)>;

fn curves() -> (Series, Series) {
    let loss =
        (0..500u64).map(|s| (s, 5.5 * (-(s as f64) / 150.0).exp() + 0.3 + 0.05 * ((s as f64) * 0.7).sin())).collect();
    let accuracy = (0..=5u64).map(|i| (i * 100, 0.1 + 0.15 * i as f64)).collect();
    (loss, accuracy)
}

#[test]
fn writes_a_png_of_the_promised_size_with_both_curves() {
    let dir = scratch("curves");
    let path = dir.join("training.png");
    let (loss, accuracy) = curves();
    write_training_plot(&path, &loss, &accuracy, "tiny-ViT on shapes").unwrap();

    let img = decode(&path);
    assert_eq!((img.width(), img.height()), (PLOT_WIDTH, PLOT_HEIGHT));
    let total = (img.width() * img.height()) as usize;
    let background = count_near(&img, [255, 255, 255]);
    assert!(total - background > total / 50, "only {} of {total} pixels are not background", total - background);
    // The loss line (blue) and the accuracy line and markers (red) are drawn.
    assert!(count_near(&img, [31, 119, 180]) > 300, "no loss curve");
    assert!(count_near(&img, [214, 39, 40]) > 200, "no accuracy curve");
    // Text (title, ticks, axis labels) puts dark pixels in the margins left of both panels.
    let dark_left = (0..80)
        .flat_map(|x| (0..img.height()).map(move |y| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0[0] < 100)
        .count();
    assert!(dark_left > 200, "no tick labels left of the panels ({dark_left} dark pixels)");
    assert_eq!(leftovers(&dir), Vec::<String>::new(), "a .tmp file was left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn overwrites_an_existing_plot_in_place() {
    let dir = scratch("overwrite");
    let path = dir.join("training.png");
    std::fs::write(&path, b"old contents").unwrap();
    let (loss, accuracy) = curves();
    write_training_plot(&path, &loss[..10], &accuracy[..1], "resumed").unwrap();
    assert_eq!(decode(&path).dimensions(), (PLOT_WIDTH, PLOT_HEIGHT));
    assert_eq!(leftovers(&dir), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unwritable_location_is_an_io_error_naming_the_file() {
    let dir = scratch("missing");
    let path = dir.join("no-such-folder").join("training.png");
    let err = write_training_plot(&path, &[(0, 1.0), (1, 0.5)], &[], "x").unwrap_err();
    assert!(matches!(err, cliprt::Error::Io { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "error does not name {}: {msg}", path.display());
    assert!(!path.exists());
    assert_eq!(leftovers(&dir), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn degenerate_inputs_still_give_a_plot() {
    let dir = scratch("degenerate");
    let nan_loss = vec![(0, 5.0), (1, f64::NAN), (2, f64::INFINITY), (3, 4.0), (4, f64::NEG_INFINITY), (5, 3.5)];
    let cases: Vec<(&str, Series, Series)> = vec![
        ("empty", vec![], vec![]),
        ("nan-loss", nan_loss, vec![(5, 0.25)]),
        ("all-nan", vec![(0, f64::NAN), (1, f64::NAN)], vec![(0, f64::NAN)]),
        ("one-point", vec![(7, 2.0)], vec![(7, 0.5)]),
        ("step-zero-only", vec![(0, 2.0)], vec![]),
        ("flat", vec![(0, 1.0), (1, 1.0), (2, 1.0)], vec![(0, 0.0), (2, 0.0)]),
        ("flat-zero", vec![(0, 0.0), (1, 0.0)], vec![]),
        ("unsorted", vec![(3, 1.0), (1, 3.0), (2, 2.0)], vec![(3, 0.5), (1, 0.1)]),
        ("huge", vec![(0, 1e300), (1, -1e300), (2, f64::MAX)], vec![(0, 2.0), (u64::MAX, -1.0)]),
        ("tiny-span", vec![(0, 1.0), (1, 1.0 + 1e-15)], vec![]),
        ("many", (0..100_000u64).map(|s| (s, 1.0 / (1.0 + s as f64))).collect(), vec![(50_000, 0.9)]),
    ];
    for (name, loss, accuracy) in cases {
        let path = dir.join(format!("{name}.png"));
        let result = write_training_plot(&path, &loss, &accuracy, name);
        assert!(result.is_ok(), "{name}: {result:?}");
        assert_eq!(decode(&path).dimensions(), (PLOT_WIDTH, PLOT_HEIGHT), "{name}");
    }
    assert_eq!(leftovers(&dir), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}
