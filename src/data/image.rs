//! Image decoding and open_clip's evaluation preprocessing (SPEC §1.7), reproducing PIL + torchvision exactly.
//!
//! open_clip's eval transform (`open_clip.image_transform(size, is_train=False)`) is
//! `Resize(size, BICUBIC)` of the short side → `CenterCrop(size)` → `convert("RGB")` → `ToTensor` → `Normalize`,
//! applied to a PIL image that open_clip's loaders have already converted to RGB. Here:
//!
//! - [`decode`] / [`load`]: JPEG or PNG bytes → 8-bit [`RgbImage`], converted as PIL's `Image.open(f).convert("RGB")`
//!   does it (alpha dropped, never composited; grey replicated; palettes looked up; 16-bit RGB(A)/LA keep the high
//!   byte; 16-bit grey is clipped to 0..255 as PIL's `I;16` → `RGB` conversion does).
//! - [`resize_bicubic`] / [`resize_bicubic_short_side`]: PIL's `Image.resize(.., BICUBIC)` (libImaging/Resample.c
//!   of Pillow 13): separable, two passes through an 8-bit intermediate, horizontal first unless the height shrinks
//!   by over twice as many pixels as the width (Pillow ≤ 12: always horizontal first); cubic kernel a = −0.5 whose
//!   support is widened by the downscale factor (antialiasing); per-output-pixel normalised weights in 22-bit fixed
//!   point, rounded and clipped to 0..255 after each pass. Bit-exact with PIL.
//! - [`center_crop`]: torchvision's `CenterCrop` (offsets `int(round((h - size) / 2.0))`, Python's round-half-even;
//!   zero padding when the crop is larger than the image).
//! - [`preprocess_u8`]: the uint8 result before `ToTensor`, HWC; [`preprocess`]: the normalised CHW float32 tensor.
//!
//! JPEG is decoded by libjpeg-turbo's code through the `mozjpeg` crate (mozjpeg is a libjpeg-turbo fork; PIL
//! decodes with libjpeg-turbo): the same islow IDCT, "fancy" chroma upsampling and YCbCr tables, so pixels equal
//! PIL's, where general-purpose decoders such as zune-jpeg (the `image` crate's) differ by up to 4/255 on 4:2:0
//! files. Around it, this module does what PIL adds: four-component (CMYK, and YCCK that libjpeg turns into CMYK)
//! files are read as Adobe-inverted CMYK and converted with PIL's formula; libjpeg's warnings (corrupt entropy data
//! and the like) are ignored as PIL ignores them; a file that ends before libjpeg has every row is an error, as PIL
//! reports a truncated file (running out of data after the last row, e.g. a missing EOI marker after a single-scan
//! file, is not); PIL's decompression-bomb limit applies. One known difference, on damaged files only: corrupt
//! entropy data can give out-of-range coefficients, on which libjpeg-turbo's C IDCT (built here without nasm SIMD)
//! and the x86-64 SIMD one PIL runs (16-bit lanes) disagree on a few pixels. PNG goes through the `image` crate
//! (lossless, so equal to PIL's). With both, JPEG and PNG inputs give open_clip's preprocessing output bit for bit.

use std::cell::Cell;
use std::io::{BufRead, Read};
use std::path::Path;

use crate::error::{Error, Result};

/// PIL refuses images over twice `Image.MAX_IMAGE_PIXELS` (DecompressionBombError).
const MAX_PIXELS: u64 = 2 * 89_478_485;

/// CLIP's normalisation mean per channel (R, G, B), as open_clip's `OPENAI_DATASET_MEAN`, rounded to f32 the way
/// `torch.as_tensor(mean, dtype=torch.float32)` does (Python float, i.e. f64, then f32).
pub const CLIP_MEAN: [f32; 3] = [0.48145466f64 as f32, 0.4578275f64 as f32, 0.40821073f64 as f32];
/// CLIP's normalisation standard deviation per channel (R, G, B), as open_clip's `OPENAI_DATASET_STD` (f64 → f32).
pub const CLIP_STD: [f32; 3] = [0.26862954f64 as f32, 0.26130258f64 as f32, 0.27577711f64 as f32];

/// An 8-bit RGB image, row-major, channels interleaved (HWC): pixel (x, y) channel c is at `(y * width + x) * 3 + c`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl RgbImage {
    /// Wraps HWC RGB bytes; `data` must hold exactly `width * height * 3` bytes and both sizes must be non-zero.
    pub fn from_raw(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::Invalid { op: "RgbImage::from_raw", msg: format!("empty image {width}x{height}") });
        }
        let want = width.checked_mul(height).and_then(|n| n.checked_mul(3));
        if want != Some(data.len()) {
            return Err(Error::Invalid {
                op: "RgbImage::from_raw",
                msg: format!("{width}x{height} RGB needs {} bytes, got {}", width * height * 3, data.len()),
            });
        }
        Ok(Self { width, height, data })
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The HWC bytes.
    pub fn as_raw(&self) -> &[u8] {
        &self.data
    }

    /// The HWC bytes, by value.
    pub fn into_raw(self) -> Vec<u8> {
        self.data
    }

    /// The pixel at column `x`, row `y` (panics when out of bounds, like slice indexing).
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        assert!(x < self.width && y < self.height, "pixel ({x}, {y}) outside {}x{}", self.width, self.height);
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// Decodes JPEG or PNG bytes into RGB as PIL's `Image.open(..).convert("RGB")`. A corrupt, truncated or unsupported
/// input gives [`Error::Invalid`] saying what is wrong; the decoders are also guarded against panics.
pub fn decode(bytes: &[u8]) -> Result<RgbImage> {
    decode_impl(bytes).map_err(|msg| Error::Invalid { op: "image::decode", msg })
}

/// Reads and decodes a JPEG or PNG file (see [`decode`]). A missing or unreadable file gives [`Error::Io`] naming
/// the path; a corrupt or unsupported one gives [`Error::Invalid`] naming the path and what is wrong.
pub fn load(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
    decode_impl(&bytes).map_err(|msg| Error::Invalid { op: "image::load", msg: format!("{}: {msg}", path.display()) })
}

/// The PNG colour type and bit depth from the IHDR chunk (always first), when the bytes look like a PNG header.
fn png_header(bytes: &[u8]) -> Option<(u8, u8)> {
    if bytes.len() >= 26 && &bytes[12..16] == b"IHDR" {
        Some((bytes[25], bytes[24]))
    } else {
        None
    }
}

/// The PNG's size from its IHDR chunk.
fn png_size(bytes: &[u8]) -> Option<(u64, u64)> {
    let b = bytes.get(16..24)?;
    png_header(bytes)?;
    Some((u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64, u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as u64))
}

fn decode_impl(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    use image::{DynamicImage, ImageFormat};

    if bytes.is_empty() {
        return Err("empty file, not a JPEG or PNG image".into());
    }
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png)) => f,
        Ok(f) => return Err(format!("unsupported image format {f:?} (only JPEG and PNG are supported)")),
        Err(_) => return Err("not a JPEG or PNG image (unrecognised file signature)".into()),
    };
    if format == ImageFormat::Png {
        if let Some((w, h)) = png_size(bytes) {
            if w * h > MAX_PIXELS {
                return Err(format!("{w}x{h} image exceeds PIL's decompression-bomb limit of {MAX_PIXELS} pixels"));
            }
        }
    }
    if format == ImageFormat::Jpeg {
        return decode_jpeg(bytes).map_err(|e| format!("corrupt or unsupported JPEG: {e}"));
    }
    let decoded = std::panic::catch_unwind(|| image::load_from_memory_with_format(bytes, format))
        .map_err(|_| format!("the {format:?} decoder panicked on this input (corrupt file)"))?
        .map_err(|e| format!("corrupt or unsupported {format:?}: {e}"))?;
    let (w, h) = (decoded.width() as usize, decoded.height() as usize);
    if w == 0 || h == 0 {
        return Err(format!("{format:?} image has an empty size {w}x{h}"));
    }
    // 16-bit grey PNGs (colour type 0, with or without tRNS) open in PIL as mode I;16, whose conversion to RGB clips
    // the 16-bit value to 0..255; every other 16-bit PNG is unpacked by PIL to 8 bits by keeping the high byte.
    let grey16 = format == ImageFormat::Png && png_header(bytes) == Some((0, 16));
    let conv16 = |v: u16| if grey16 { v.min(255) as u8 } else { (v >> 8) as u8 };
    let mut out = Vec::with_capacity(w * h * 3);
    match &decoded {
        DynamicImage::ImageLuma8(b) => b.as_raw().iter().for_each(|&v| out.extend_from_slice(&[v, v, v])),
        DynamicImage::ImageLumaA8(b) => b.as_raw().chunks_exact(2).for_each(|p| out.extend_from_slice(&[p[0]; 3])),
        DynamicImage::ImageRgb8(b) => out.extend_from_slice(b.as_raw()),
        DynamicImage::ImageRgba8(b) => b.as_raw().chunks_exact(4).for_each(|p| out.extend_from_slice(&p[..3])),
        DynamicImage::ImageLuma16(b) => b.as_raw().iter().for_each(|&v| out.extend_from_slice(&[conv16(v); 3])),
        DynamicImage::ImageLumaA16(b) => {
            b.as_raw().chunks_exact(2).for_each(|p| out.extend_from_slice(&[conv16(p[0]); 3]))
        }
        DynamicImage::ImageRgb16(b) => out.extend(b.as_raw().iter().map(|&v| conv16(v))),
        DynamicImage::ImageRgba16(b) => {
            b.as_raw().chunks_exact(4).for_each(|p| out.extend(p[..3].iter().map(|&v| conv16(v))))
        }
        other => return Err(format!("unsupported pixel type {:?} in {format:?}", other.color())),
    }
    RgbImage::from_raw(w, h, out).map_err(|e| e.to_string())
}

/// The file's bytes as the `BufRead` mozjpeg reads, noting when libjpeg asks for data past the end: mozjpeg then
/// feeds libjpeg a fake EOI marker and only a warning, where PIL's data source suspends and PIL reports a truncated
/// file unless every row was already decoded.
struct JpegSource<'a> {
    data: &'a [u8],
    ran_out: &'a Cell<bool>,
}

impl Read for JpegSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.fill_buf()?.read(buf)?;
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for JpegSource<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.data.is_empty() {
            self.ran_out.set(true);
        }
        Ok(self.data)
    }

    fn consume(&mut self, n: usize) {
        self.data = &self.data[n.min(self.data.len())..];
    }
}

/// Decodes a JPEG with libjpeg-turbo's code (mozjpeg) as PIL's `Image.open(f).convert("RGB")`.
fn decode_jpeg(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    use mozjpeg::{ColorSpace, Decompress};

    let ran_out = Cell::new(false);
    let truncated = || Err("truncated file (it ends before the image data does)".to_string());
    let io = |e: std::io::Error| e.to_string();
    let run = || -> std::result::Result<RgbImage, String> {
        let d = Decompress::new_reader(JpegSource { data: bytes, ran_out: &ran_out }).map_err(io)?;
        if ran_out.get() {
            return truncated();
        }
        let (w, h) = d.size();
        if w as u64 * h as u64 > MAX_PIXELS {
            return Err(format!("{w}x{h} image exceeds PIL's decompression-bomb limit of {MAX_PIXELS} pixels"));
        }
        // libjpeg's guess from the markers: CMYK, or YCCK (Adobe transform 2), for four components.
        let cmyk = matches!(d.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK);
        let mut started = if cmyk { d.to_colorspace(ColorSpace::JCS_CMYK) } else { d.rgb() }.map_err(io)?;
        let (w, h) = (started.width(), started.height());
        let pixels: Vec<u8> = started.read_scanlines().map_err(io)?;
        if ran_out.get() {
            return truncated();
        }
        // PIL has every row by now; running out of data while libjpeg reads on to the EOI marker is no error there
        // (a bad marker still is).
        started.finish().map_err(io)?;
        let rgb = if cmyk { cmyk_to_rgb(&pixels) } else { pixels };
        RgbImage::from_raw(w, h, rgb).map_err(|e| e.to_string())
    };
    // mozjpeg turns libjpeg's fatal errors into unwinding (with `resume_unwind`, so no panic message is printed)
    // that its API leaves to the caller to catch; the payload is libjpeg's message.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|payload| {
        Err(payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the JPEG decoder failed on this input".to_string()))
    })
}

/// PIL's `convert("RGB")` of a four-component JPEG, from the CMYK libjpeg outputs (YCCK already converted): PIL
/// reads it as Adobe-inverted CMYK ("CMYK;I"), so c = 255 − raw and nk = 255 − k = raw_k, and computes
/// r = clip(nk − c·nk/255) with its rounded MULDIV255, likewise g and b.
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for p in cmyk.chunks_exact(4) {
        let nk = p[3] as i32;
        rgb.extend(p[..3].iter().map(|&raw| (nk - muldiv255(255 - raw as i32, nk)).clamp(0, 255) as u8));
    }
    rgb
}

// ---- PIL's resampling (libImaging/Resample.c), bicubic filter ----

/// Fixed-point precision of PIL's 8-bit resampling: 32 − 8 − 2 bits.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's bicubic kernel, a = −0.5, support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One axis of a PIL resample, for the output indices `first..first + bounds.len()`: the first input index and the
/// fixed-point weights of each (every output index's weights depend only on that index).
struct Coeffs {
    first: usize,
    /// (first input index, number of taps) per output index.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output index, in PRECISION_BITS fixed point.
    weights: Vec<i32>,
    ksize: usize,
}

impl Coeffs {
    /// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` (box 0..in_size, `out_size` outputs), for the output
    /// indices `first..first + count`.
    fn new(in_size: usize, out_size: usize, first: usize, count: usize) -> Self {
        const SUPPORT: f64 = 2.0;
        // (double)(in1 - in0) / outSize with the box as floats, as PIL does.
        let scale = (in_size as f32 - 0.0f32) as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(count);
        let mut weights = vec![0i32; count * ksize];
        let mut k = vec![0f64; ksize];
        for (i, xx) in (first..first + count).enumerate() {
            let center = 0.0 + (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero; negative starts clamp to 0 either way.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (xmax - xmin).max(0) as usize;
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(n) {
                let w = bicubic(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            let row = &mut weights[i * ksize..(i + 1) * ksize];
            for (dst, &kx) in row.iter_mut().zip(&k).take(n) {
                let kx = if ww != 0.0 { kx / ww } else { kx };
                let f = kx * (1u32 << PRECISION_BITS) as f64;
                *dst = if kx < 0.0 { (-0.5 + f) as i32 } else { (0.5 + f) as i32 };
            }
            bounds.push((xmin as usize, n));
        }
        Self { first, bounds, weights, ksize }
    }

    fn taps(&self, out: usize) -> (usize, &[i32]) {
        let i = out - self.first;
        let (start, n) = self.bounds[i];
        (start, &self.weights[i * self.ksize..i * self.ksize + n])
    }
}

/// PIL's `clip8`: drop the fixed-point fraction (arithmetic shift) and clamp to 0..255.
fn clip8(ss: i64) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The input span `first..end` that a set of coefficients reads.
fn span(c: &Coeffs) -> (usize, usize) {
    let first = c.bounds.iter().map(|b| b.0).min().unwrap_or(0);
    let end = c.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(first);
    (first, end)
}

/// PIL's horizontal 8-bit pass over `rows` rows of an RGB buffer `width` pixels wide whose first column is input
/// column `col0`, for the outputs `c` covers.
fn horizontal_pass(src: &[u8], width: usize, rows: usize, col0: usize, c: &Coeffs) -> Vec<u8> {
    let half = 1i64 << (PRECISION_BITS - 1);
    let wout = c.bounds.len();
    let mut out = vec![0u8; rows * wout * 3];
    for (r, orow) in out.chunks_exact_mut(wout * 3).enumerate() {
        let srow = &src[r * width * 3..(r + 1) * width * 3];
        for (xo, px) in orow.chunks_exact_mut(3).enumerate() {
            let (start, k) = c.taps(c.first + xo);
            let start = start - col0;
            let (mut s0, mut s1, mut s2) = (half, half, half);
            for (i, &kx) in k.iter().enumerate() {
                let p = &srow[(start + i) * 3..(start + i) * 3 + 3];
                s0 += p[0] as i64 * kx as i64;
                s1 += p[1] as i64 * kx as i64;
                s2 += p[2] as i64 * kx as i64;
            }
            px.copy_from_slice(&[clip8(s0), clip8(s1), clip8(s2)]);
        }
    }
    out
}

/// PIL's vertical 8-bit pass over an RGB buffer `width` pixels wide whose first row is input row `row0`, for the
/// outputs `c` covers.
fn vertical_pass(src: &[u8], width: usize, row0: usize, c: &Coeffs) -> Vec<u8> {
    let half = 1i64 << (PRECISION_BITS - 1);
    let hout = c.bounds.len();
    let stride = width * 3;
    let mut out = vec![0u8; hout * stride];
    for (yo, orow) in out.chunks_exact_mut(stride).enumerate() {
        let (start, k) = c.taps(c.first + yo);
        let start = start - row0;
        for (j, v) in orow.iter_mut().enumerate() {
            let mut s = half;
            for (i, &ky) in k.iter().enumerate() {
                s += src[(start + i) * stride + j] as i64 * ky as i64;
            }
            *v = clip8(s);
        }
    }
    out
}

/// The RGB bytes of the rectangle `x0..x1` × `y0..y1` of `img`.
fn region(img: &RgbImage, x0: usize, x1: usize, y0: usize, y1: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity((x1 - x0) * (y1 - y0) * 3);
    for y in y0..y1 {
        out.extend_from_slice(&img.data[(y * img.width + x0) * 3..(y * img.width + x1) * 3]);
    }
    out
}

/// Resamples the output window `x0..x0+wout` × `y0..y0+hout` of `img` resized to `full_w`×`full_h` with PIL's
/// bicubic. Each output pixel depends only on its own coefficients, so the window equals the same crop of the full
/// resize, bit for bit, without computing the rest.
///
/// Pass order as Pillow 13's ImagingResampleInner: horizontal first, unless the height shrinks by more than twice
/// as many pixels as the width does (then vertical first). Pillow 12 and earlier always went horizontal first; the
/// two orders differ by ±1 on some pixels (the 8-bit intermediate rounds differently).
fn resample_window(
    img: &RgbImage,
    full_w: usize,
    full_h: usize,
    x0: usize,
    y0: usize,
    wout: usize,
    hout: usize,
) -> RgbImage {
    let (in_w, in_h) = (img.width as i64, img.height as i64);
    let (dw, dh) = (in_w - full_w as i64, in_h - full_h as i64);
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    // A pass is skipped when its dimension does not change, as PIL does.
    let horiz = (full_w != img.width).then(|| Coeffs::new(img.width, full_w, x0, wout));
    let vert = (full_h != img.height).then(|| Coeffs::new(img.height, full_h, y0, hout));
    let (col0, col1) = horiz.as_ref().map_or((x0, x0 + wout), span);
    let (row0, row1) = vert.as_ref().map_or((y0, y0 + hout), span);
    let data = if horizontal_first {
        let tmp = match &horiz {
            Some(h) => horizontal_pass(&region(img, col0, col1, row0, row1), col1 - col0, row1 - row0, col0, h),
            None => region(img, x0, x0 + wout, row0, row1),
        };
        match &vert {
            Some(v) => vertical_pass(&tmp, wout, row0, v),
            None => tmp,
        }
    } else {
        let tmp = match &vert {
            Some(v) => vertical_pass(&region(img, col0, col1, row0, row1), col1 - col0, row0, v),
            None => region(img, col0, col1, y0, y0 + hout),
        };
        match &horiz {
            Some(h) => horizontal_pass(&tmp, col1 - col0, hout, col0, h),
            None => tmp,
        }
    };
    RgbImage { width: wout, height: hout, data }
}

fn check_out_size(op: &'static str, w: usize, h: usize) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(Error::Invalid { op, msg: format!("output size {w}x{h} is empty") });
    }
    if w.checked_mul(h).and_then(|n| n.checked_mul(3)).is_none_or(|n| n > isize::MAX as usize) {
        return Err(Error::Invalid { op, msg: format!("output size {w}x{h} is too large") });
    }
    Ok(())
}

/// PIL's `Image.resize((width, height), Image.BICUBIC)` on an RGB image, bit-exact.
pub fn resize_bicubic(img: &RgbImage, width: usize, height: usize) -> Result<RgbImage> {
    check_out_size("image::resize_bicubic", width, height)?;
    Ok(resample_window(img, width, height, 0, 0, width, height))
}

/// torchvision's output size for `Resize(size)` (an int: the short side): the short side becomes `size`, the long
/// side `int(size * long / short)`. Returns (width, height).
pub fn short_side_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    // Python: int(requested_new_short * long / short), a true division in double, truncated.
    let new_long = ((size as f64 * long as f64) / short as f64) as usize;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision's `Resize(size, interpolation=BICUBIC)` on a PIL image: the short side becomes `size`, the long side
/// `int(size * long / short)`, resampled with PIL's bicubic; an image already of that size is returned unchanged.
pub fn resize_bicubic_short_side(img: &RgbImage, size: usize) -> Result<RgbImage> {
    if size == 0 {
        return Err(Error::Invalid { op: "image::resize_bicubic_short_side", msg: "size must be positive".into() });
    }
    let (w, h) = short_side_size(img.width, img.height, size);
    if (w, h) == (img.width, img.height) {
        return Ok(img.clone());
    }
    check_out_size("image::resize_bicubic_short_side", w, h)?;
    Ok(resample_window(img, w, h, 0, 0, w, h))
}

/// Python's `int(round(d / 2.0))` for d ≥ 0: halves round to even.
fn half_round_even(d: usize) -> usize {
    let k = d / 2;
    if d % 2 == 1 && k % 2 == 1 {
        k + 1
    } else {
        k
    }
}

/// The (left, top) offsets of torchvision's `CenterCrop(size)` on an image at least `size` on both sides.
pub fn center_crop_offsets(width: usize, height: usize, size: usize) -> (usize, usize) {
    (half_round_even(width.saturating_sub(size)), half_round_even(height.saturating_sub(size)))
}

/// torchvision's `CenterCrop(size)`: top = `int(round((h - size) / 2.0))` (Python rounds halves to even), left
/// likewise; a side shorter than `size` is first zero-padded by `(size - side) // 2` before and the rest after.
pub fn center_crop(img: &RgbImage, size: usize) -> Result<RgbImage> {
    check_out_size("image::center_crop", size, size)?;
    let pad = |side: usize| if size > side { ((size - side) / 2, size) } else { (0, side) };
    let (pad_left, padded_w) = pad(img.width);
    let (pad_top, padded_h) = pad(img.height);
    let (left, top) = center_crop_offsets(padded_w, padded_h, size);
    let mut data = vec![0u8; size * size * 3];
    for (y, row) in data.chunks_exact_mut(size * 3).enumerate() {
        let Some(sy) = (y + top).checked_sub(pad_top).filter(|&sy| sy < img.height) else { continue };
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            if let Some(sx) = (x + left).checked_sub(pad_left).filter(|&sx| sx < img.width) {
                let i = (sy * img.width + sx) * 3;
                px.copy_from_slice(&img.data[i..i + 3]);
            }
        }
    }
    Ok(RgbImage { width: size, height: size, data })
}

/// open_clip's eval preprocessing up to (not including) `ToTensor`: Resize(size, BICUBIC) of the short side, then
/// CenterCrop(size). Returns `size * size * 3` bytes, HWC (as `np.asarray` of the PIL image). Only the cropped
/// window of the resize is computed; it equals the full resize then crop bit for bit.
pub fn preprocess_u8(img: &RgbImage, size: usize) -> Result<Vec<u8>> {
    if size == 0 {
        return Err(Error::Invalid { op: "image::preprocess", msg: "size must be positive".into() });
    }
    let (w, h) = short_side_size(img.width, img.height, size);
    let (left, top) = center_crop_offsets(w, h, size);
    Ok(resample_window(img, w, h, left, top, size, size).data)
}

/// `ToTensor` + `Normalize(CLIP_MEAN, CLIP_STD)` of HWC uint8 pixels → CHW float32, in the same f32 operations as
/// torchvision (`v / 255`, `- mean`, `/ std`), so equal bytes give bit-identical floats.
pub fn normalize_hwc(hwc: &[u8], width: usize, height: usize) -> Result<Vec<f32>> {
    crate::error::check_len("image::normalize_hwc", "hwc", hwc.len(), width * height * 3)?;
    let plane = width * height;
    let mut out = vec![0f32; plane * 3];
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    Ok(out)
}

/// open_clip's eval preprocessing (`image_transform(size, is_train=False)`) of an RGB image: `3 * size * size`
/// float32 values, CHW, normalised with CLIP's mean and std.
pub fn preprocess(img: &RgbImage, size: usize) -> Result<Vec<f32>> {
    let hwc = preprocess_u8(img, size)?;
    normalize_hwc(&hwc, size, size)
}
