//! JPEG decoding that reproduces PIL's, i.e. libjpeg-turbo's default decompression, bit for bit: Huffman-coded
//! baseline, extended and progressive 8-bit JPEGs; the "islow" integer IDCT (jidctint.c) with its range limiting;
//! libjpeg-turbo's upsampling (jdsample.c: "fancy" triangle filters for 2h1v, 1h2v and 2h2v chroma, box replication
//! otherwise, edges replicated as jdmainct.c does); its fixed-point YCbCr → RGB tables (jdcolor.c); and, for four
//! component files, PIL's Adobe-inverted CMYK → RGB conversion. Like PIL, a file that ends before its EOI marker is
//! an error. Not supported (errors): arithmetic coding, lossless and hierarchical JPEG, precisions other than 8 bits,
//! two-component files (PIL cannot open those either), and DNL-defined heights. Progressive files whose scans leave
//! some coefficient never sent are decoded without libjpeg's inter-block smoothing of such coefficients.

/// Zig-zag index → natural (row-major) index, with 16 extra entries so a corrupt run cannot index past the block
/// (libjpeg's `jpeg_natural_order` does the same).
const NATURAL: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
];

/// PIL refuses images over twice `Image.MAX_IMAGE_PIXELS` (DecompressionBombError).
pub(super) const MAX_PIXELS: u64 = 2 * 89_478_485;

type Res<T> = std::result::Result<T, String>;

// ---- Huffman tables (jdhuff.c: jpeg_make_d_derived_tbl) ----

/// libjpeg's HUFF_LOOKAHEAD: when fewer bits are buffered, the reader refills (which matters for exactly where
/// it notices the end of the data).
const LOOKAHEAD: u32 = 8;

struct Huffman {
    /// For each LOOKAHEAD-bit prefix: (code length << 8) | symbol, or 0 when the code is longer.
    lookup: Vec<u16>,
    /// Largest code of each length (−1: none); index 17 is a sentinel.
    maxcode: [i32; 18],
    /// Symbol index of the first code of each length minus that code.
    valoffset: [i32; 18],
    vals: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], vals: &[u8]) -> Res<Self> {
        let mut sizes = Vec::with_capacity(256);
        for (l, &n) in counts.iter().enumerate() {
            sizes.extend(std::iter::repeat_n(l as u32 + 1, n as usize));
        }
        if sizes.len() > 256 || sizes.len() > vals.len() {
            return Err("bad Huffman table".into());
        }
        let mut codes = Vec::with_capacity(sizes.len());
        let mut code = 0u32;
        let mut si = sizes.first().copied().unwrap_or(1);
        let mut p = 0;
        while p < sizes.len() {
            while p < sizes.len() && sizes[p] == si {
                codes.push(code);
                code += 1;
                p += 1;
            }
            // No code may be all ones (libjpeg rejects such tables).
            if code >= 1 << si {
                return Err("bad Huffman table (code lengths overflow)".into());
            }
            code <<= 1;
            si += 1;
        }
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 18];
        let mut p = 0usize;
        for l in 1..=16 {
            let n = counts[l - 1] as usize;
            if n > 0 {
                valoffset[l] = p as i32 - codes[p] as i32;
                p += n;
                maxcode[l] = codes[p - 1] as i32;
            }
        }
        maxcode[17] = 0xFFFFF;
        let mut lookup = vec![0u16; 1 << LOOKAHEAD];
        for (i, (&len, &code)) in sizes.iter().zip(&codes).enumerate() {
            if len <= LOOKAHEAD {
                let shift = LOOKAHEAD - len;
                let base = (code << shift) as usize;
                for e in &mut lookup[base..base + (1 << shift)] {
                    *e = ((len as u16) << 8) | vals[i] as u16;
                }
            }
        }
        Ok(Self { lookup, maxcode, valoffset, vals: vals[..sizes.len()].to_vec() })
    }

    fn check_dc(&self) -> Res<()> {
        if self.vals.iter().any(|&v| v > 15) {
            Err("bad Huffman table (DC symbol over 15)".into())
        } else {
            Ok(())
        }
    }
}

/// The standard tables of JPEG Annex K.3, which libjpeg-turbo installs for sequential files that define none
/// (motion-JPEG frames): (DC, AC) × (luminance, chrominance).
fn standard_table(ac: bool, index: usize) -> Option<Huffman> {
    const DC_VALS: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    const DC_LUMA: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    const DC_CHROMA: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
    const AC_LUMA: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
    const AC_CHROMA: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
    const AC_LUMA_VALS: [u8; 162] = [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71,
        0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72,
        0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37,
        0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59,
        0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3,
        0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
        0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
        0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    const AC_CHROMA_VALS: [u8; 162] = [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13, 0x22,
        0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1,
        0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36,
        0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58,
        0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a,
        0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba,
        0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
        0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    let table = match (ac, index) {
        (false, 0) => Huffman::new(&DC_LUMA, &DC_VALS),
        (false, 1) => Huffman::new(&DC_CHROMA, &DC_VALS),
        (true, 0) => Huffman::new(&AC_LUMA, &AC_LUMA_VALS),
        (true, 1) => Huffman::new(&AC_CHROMA, &AC_CHROMA_VALS),
        _ => return None,
    };
    table.ok()
}

// ---- Entropy-coded data (jdhuff.c's bit reader) ----

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u64,
    /// Valid bits in `buf` (its low bits, MSB first).
    nbits: u32,
    /// How many of the last `nbits` bits are zero padding inserted after a marker or the end of data.
    pad: u32,
    /// A marker stopped the reader; `pos` points at the marker's 0xFF.
    at_marker: bool,
    /// The data ended (no marker) while the reader wanted more: libjpeg would suspend, PIL reports truncation.
    at_end: bool,
    /// Padding bits were consumed: libjpeg's `insufficient_data` (it then leaves further MCUs zero).
    insufficient: bool,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Self { data, pos, buf: 0, nbits: 0, pad: 0, at_marker: false, at_end: false, insufficient: false }
    }

    /// Refills to at least 57 bits, unstuffing 0xFF00 and stopping at markers (then feeding zeros).
    fn fill(&mut self) {
        while self.nbits <= 56 {
            let mut byte = 0u8;
            if !self.at_marker && !self.at_end {
                match self.data.get(self.pos) {
                    None => self.at_end = true,
                    Some(&0xFF) => {
                        let mut q = self.pos + 1;
                        while self.data.get(q) == Some(&0xFF) {
                            q += 1;
                        }
                        match self.data.get(q) {
                            Some(0) => {
                                byte = 0xFF;
                                self.pos = q + 1;
                            }
                            Some(_) => self.at_marker = true,
                            None => self.at_end = true,
                        }
                    }
                    Some(&b) => {
                        byte = b;
                        self.pos += 1;
                    }
                }
            }
            if self.at_marker || self.at_end {
                self.pad += 8;
            }
            self.buf = (self.buf << 8) | byte as u64;
            self.nbits += 8;
        }
    }

    fn consume(&mut self, n: u32) {
        self.nbits -= n;
        if self.nbits < self.pad {
            self.insufficient = true;
            self.pad = self.nbits;
        }
    }

    fn peek(&mut self, n: u32) -> u32 {
        if self.nbits < n {
            self.fill();
        }
        ((self.buf >> (self.nbits - n)) & ((1u64 << n) - 1)) as u32
    }

    fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let v = self.peek(n);
        self.consume(n);
        v
    }

    fn bit(&mut self) -> bool {
        self.bits(1) != 0
    }

    /// Receives `s` bits and sign-extends them (HUFF_EXTEND).
    fn receive_extend(&mut self, s: u32) -> i32 {
        if s == 0 {
            return 0;
        }
        let v = self.bits(s) as i32;
        if v < 1 << (s - 1) {
            v + (-1 << s) + 1
        } else {
            v
        }
    }

    /// HUFF_DECODE: the lookahead table when LOOKAHEAD real bits are buffered, else bit by bit (jpeg_huff_decode);
    /// a code longer than 16 bits is corrupt data and decodes as 0 after 17 bits, as in libjpeg.
    fn decode(&mut self, h: &Huffman) -> u8 {
        if self.nbits < LOOKAHEAD {
            self.fill();
        }
        let mut l = 1;
        if self.nbits - self.pad >= LOOKAHEAD {
            let e = h.lookup[self.peek(LOOKAHEAD) as usize];
            if e != 0 {
                self.consume((e >> 8) as u32);
                return e as u8;
            }
            l = LOOKAHEAD + 1;
        }
        while l <= 17 {
            let code = self.peek(l) as i32;
            if code <= h.maxcode[l as usize] {
                self.consume(l);
                if l == 17 {
                    return 0;
                }
                let idx = (code + h.valoffset[l as usize]) as usize;
                return h.vals.get(idx).copied().unwrap_or(0);
            }
            l += 1;
        }
        0
    }

    /// Throws away buffered bits and steps over the restart marker RST`expected` that should follow, resyncing as
    /// libjpeg's `jpeg_resync_to_restart` does when the markers are damaged.
    fn restart(&mut self, expected: u8) {
        self.buf = 0;
        self.nbits = 0;
        self.pad = 0;
        let rst = |n: u8| 0xD0 + (n & 7);
        let mut marker = next_marker(self.data, &mut self.pos);
        loop {
            let Some(m) = marker else {
                self.at_end = true;
                return;
            };
            let action = if m == rst(expected) {
                1
            } else if m < 0xC0 {
                2 // not a valid marker: scan on
            } else if !(0xD0..=0xD7).contains(&m) || m == rst(expected + 1) || m == rst(expected + 2) {
                3 // a real marker or one of the next two restarts: leave it, this interval is empty
            } else if m == rst(expected.wrapping_sub(1)) || m == rst(expected.wrapping_sub(2)) {
                2 // an earlier restart: scan on
            } else {
                1 // too far away to tell: take it as the expected one
            };
            match action {
                1 => {
                    self.pos += 2;
                    self.at_marker = false;
                    self.insufficient = false;
                    return;
                }
                2 => {
                    self.pos += 2;
                    marker = next_marker(self.data, &mut self.pos);
                }
                _ => {
                    self.at_marker = true;
                    return;
                }
            }
        }
    }
}

/// Finds the next marker at or after `pos` (skipping garbage and fill bytes as libjpeg's next_marker does) and
/// leaves `pos` at its 0xFF; returns the marker code, or None at the end of data.
fn next_marker(data: &[u8], pos: &mut usize) -> Option<u8> {
    let mut p = *pos;
    loop {
        while p < data.len() && data[p] != 0xFF {
            p += 1;
        }
        let mut q = p + 1;
        while q < data.len() && data[q] == 0xFF {
            q += 1;
        }
        if q >= data.len() {
            *pos = data.len();
            return None;
        }
        if data[q] != 0 {
            *pos = q - 1;
            return Some(data[q]);
        }
        p = q + 1;
    }
}

// ---- Frame and scan state ----

struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// The quantisation table latched at the component's first scan (natural order).
    quant: Option<[u16; 64]>,
    /// Allocated blocks per row and rows of blocks.
    bw: usize,
    bh: usize,
    /// Blocks really covered by the component (non-interleaved scans decode exactly these).
    bw_real: usize,
    bh_real: usize,
    /// Downsampled size in samples: ceil(image size × factor / max factor).
    dw: usize,
    dh: usize,
    coefs: Vec<i16>,
    /// Progressive bookkeeping (jdphuff.c): the Al of the last scan that sent each coefficient (−1: none yet),
    /// and the same as it stood before the latest scan of this component.
    coef_bits: [i32; 64],
    prev_coef_bits: [i32; 64],
}

struct Frame {
    width: usize,
    height: usize,
    progressive: bool,
    comps: Vec<Component>,
    hmax: usize,
    vmax: usize,
    mcux: usize,
    mcuy: usize,
}

struct Scan {
    /// (component index, DC table, AC table).
    comps: Vec<(usize, usize, usize)>,
    ss: usize,
    se: usize,
    ah: u32,
    al: u32,
}

// ---- Marker segments (jdmarker.c), read as libjpeg reads them ----

/// Why marker reading stopped: the data ran out (libjpeg suspends; PIL then reports a truncated file, except in
/// the tail of a single-scan file), or a fatal error (libjpeg's ERREXIT, PIL's "broken data stream").
enum Stop {
    Suspend,
    Fail(String),
}

type MRes<T> = std::result::Result<T, Stop>;

fn fail<T>(msg: impl Into<String>) -> MRes<T> {
    Err(Stop::Fail(msg.into()))
}

impl From<String> for Stop {
    fn from(msg: String) -> Self {
        Stop::Fail(msg)
    }
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> MRes<u8> {
        let b = *self.data.get(self.pos).ok_or(Stop::Suspend)?;
        self.pos += 1;
        Ok(b)
    }

    fn be16(&mut self) -> MRes<i64> {
        Ok(((self.byte()? as i64) << 8) | self.byte()? as i64)
    }

    fn bytes(&mut self, n: usize) -> MRes<&[u8]> {
        let b = self.data.get(self.pos..self.pos + n).ok_or(Stop::Suspend)?;
        self.pos += n;
        Ok(b)
    }

    /// skip_input_data: skipping past the end suspends.
    fn skip(&mut self, n: i64) -> MRes<()> {
        if n > 0 {
            let end = self.pos.saturating_add(n as usize);
            if end > self.data.len() {
                self.pos = self.data.len();
                return Err(Stop::Suspend);
            }
            self.pos = end;
        }
        Ok(())
    }

    /// next_marker: skips anything up to an 0xFF, fill bytes and stuffed zeros; returns the marker code.
    fn next_marker(&mut self) -> MRes<u8> {
        loop {
            let mut c = self.byte()?;
            while c != 0xFF {
                c = self.byte()?;
            }
            loop {
                c = self.byte()?;
                if c != 0xFF {
                    break;
                }
            }
            if c != 0 {
                return Ok(c);
            }
        }
    }
}

/// get_sof. The frame must be 8-bit with 1, 3 or 4 components (PIL's own header parser rejects anything else).
fn read_sof(c: &mut Cursor, progressive: bool) -> MRes<Frame> {
    let length = c.be16()?;
    let precision = c.byte()?;
    let height = c.be16()? as usize;
    let width = c.be16()? as usize;
    let n = c.byte()? as usize;
    if height == 0 || width == 0 || n == 0 {
        return fail("empty JPEG image (or a height defined by a DNL marker, which is not supported)");
    }
    if length - 8 != 3 * n as i64 {
        return fail("bad JPEG SOF segment length");
    }
    let mut comps = Vec::with_capacity(n);
    for _ in 0..n {
        let b = c.bytes(3)?;
        comps.push(Component {
            id: b[0],
            h: (b[1] >> 4) as usize,
            v: (b[1] & 15) as usize,
            tq: b[2] as usize,
            quant: None,
            bw: 0,
            bh: 0,
            bw_real: 0,
            bh_real: 0,
            dw: 0,
            dh: 0,
            coefs: Vec::new(),
            coef_bits: [-1; 64],
            prev_coef_bits: [0; 64],
        });
    }
    if precision != 8 {
        return fail(format!("unsupported JPEG sample precision {precision} (only 8 bits)"));
    }
    if !matches!(n, 1 | 3 | 4) {
        return fail(format!("unsupported JPEG with {n} components (PIL opens 1, 3 or 4)"));
    }
    // jdinput.c initial_setup.
    if width > 65500 || height > 65500 {
        return fail("JPEG image too big (over 65500 pixels on a side)");
    }
    if width as u64 * height as u64 > MAX_PIXELS {
        return fail(format!("{width}x{height} image exceeds PIL's decompression-bomb limit of {MAX_PIXELS} pixels"));
    }
    for comp in &comps {
        if !(1..=4).contains(&comp.h) || !(1..=4).contains(&comp.v) {
            return fail(format!("bad JPEG sampling factors {}x{}", comp.h, comp.v));
        }
    }
    let hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
    let vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
    for comp in &comps {
        if hmax % comp.h != 0 || vmax % comp.v != 0 {
            return fail(format!("unsupported JPEG sampling {}x{} of {hmax}x{vmax} (fractional)", comp.h, comp.v));
        }
    }
    let mcux = width.div_ceil(8 * hmax);
    let mcuy = height.div_ceil(8 * vmax);
    for comp in &mut comps {
        comp.dw = (width * comp.h).div_ceil(hmax);
        comp.dh = (height * comp.v).div_ceil(vmax);
        comp.bw_real = comp.dw.div_ceil(8);
        comp.bh_real = comp.dh.div_ceil(8);
        // Rounded up to whole MCUs (libjpeg's coefficient arrays are; block smoothing reads the padding rows).
        comp.bw = mcux * comp.h;
        comp.bh = mcuy * comp.v;
        comp.coefs = vec![0i16; comp.bw * comp.bh * 64];
    }
    Ok(Frame { width, height, progressive, comps, hmax, vmax, mcux, mcuy })
}

/// get_sos, including its quirky component lookup (scan components must follow the frame's order).
fn read_sos(c: &mut Cursor, frame: &Frame) -> MRes<Scan> {
    let length = c.be16()?;
    let n = c.byte()? as usize;
    if length != 2 * n as i64 + 6 || !(1..=4).contains(&n) {
        return fail("bad JPEG SOS segment length");
    }
    let mut cur: [Option<usize>; 4] = [None; 4];
    let mut comps = Vec::with_capacity(n);
    for i in 0..n {
        let id = c.byte()?;
        let tables = c.byte()?;
        let ci = (0..frame.comps.len().min(4))
            .find(|&ci| frame.comps[ci].id == id && cur[ci].is_none())
            .ok_or_else(|| format!("JPEG scan names a bad component id {id}"))?;
        cur[i] = Some(ci);
        if cur[..i].contains(&Some(ci)) {
            return fail(format!("JPEG scan names a bad component id {id}"));
        }
        comps.push((ci, (tables >> 4) as usize, (tables & 15) as usize));
    }
    let ss = c.byte()? as usize;
    let se = c.byte()? as usize;
    let a = c.byte()?;
    Ok(Scan { comps, ss, se, ah: (a >> 4) as u32, al: (a & 15) as u32 })
}

/// The checks libjpeg makes when a scan starts (jdinput.c per_scan_setup, jdphuff.c start_pass).
fn check_scan(scan: &Scan, frame: &Frame) -> MRes<()> {
    if scan.comps.len() > 1 {
        let blocks: usize = scan.comps.iter().map(|&(i, _, _)| frame.comps[i].h * frame.comps[i].v).sum();
        if blocks > 10 {
            return fail("bad JPEG scan: more than 10 blocks per MCU");
        }
    }
    if frame.progressive {
        let dc = scan.ss == 0;
        let bad = if dc { scan.se != 0 } else { scan.ss > scan.se || scan.se > 63 || scan.comps.len() != 1 };
        if bad || (scan.ah != 0 && scan.al + 1 != scan.ah) || scan.al > 13 {
            return fail(format!("bad JPEG progression Ss={} Se={} Ah={} Al={}", scan.ss, scan.se, scan.ah, scan.al));
        }
    }
    Ok(())
}

// ---- Entropy decoding of one scan ----

/// A Huffman table as its DHT segment gives it: code counts per length 1..16, then the symbols. libjpeg validates a
/// table only when a scan uses it, so these are built at the start of each scan.
type HuffSpec = ([u8; 16], Vec<u8>);

struct Tables {
    dc: [Option<HuffSpec>; 4],
    ac: [Option<HuffSpec>; 4],
}

/// Decodes the scan whose entropy-coded data starts at `pos`. Returns where the reader stopped and whether it ran
/// into the end of the data while fetching (where libjpeg would suspend for more input).
fn decode_scan(
    frame: &mut Frame,
    scan: &Scan,
    tables: &Tables,
    restart_interval: usize,
    data: &[u8],
    pos: usize,
) -> Res<(usize, bool, usize)> {
    let progressive = frame.progressive;
    // Tables: DC ones for DC-first and sequential scans, AC ones for AC and sequential scans.
    let need_dc = !progressive || (scan.ss == 0 && scan.ah == 0);
    let need_ac = !progressive || scan.ss > 0;
    let mut dc_tabs = Vec::with_capacity(scan.comps.len());
    let mut ac_tabs = Vec::with_capacity(scan.comps.len());
    for &(_, td, ta) in &scan.comps {
        let dc = if need_dc {
            let t = match tables.dc.get(td).and_then(|t| t.as_ref()) {
                Some((counts, vals)) => Some(Huffman::new(counts, vals)?),
                None if !progressive => standard_table(false, td),
                None => None,
            }
            .ok_or_else(|| format!("JPEG scan uses undefined DC Huffman table {td}"))?;
            t.check_dc()?;
            Some(t)
        } else {
            None
        };
        let ac = if need_ac {
            let t = match tables.ac.get(ta).and_then(|t| t.as_ref()) {
                Some((counts, vals)) => Some(Huffman::new(counts, vals)?),
                None if !progressive => standard_table(true, ta),
                None => None,
            };
            Some(t.ok_or_else(|| format!("JPEG scan uses undefined AC Huffman table {ta}"))?)
        } else {
            None
        };
        dc_tabs.push(dc);
        ac_tabs.push(ac);
    }

    let mut r = BitReader::new(data, pos);
    let mut pred = vec![0i32; scan.comps.len()];
    let mut eobrun = 0u32;
    let mut restarts_to_go = restart_interval;
    let mut next_restart = 0u8;
    let single = scan.comps.len() == 1;
    let (units_x, units_y) = if single {
        let c = &frame.comps[scan.comps[0].0];
        (c.bw_real, c.bh_real)
    } else {
        (frame.mcux, frame.mcuy)
    };

    let mut last_good = 0;
    for my in 0..units_y {
        for mx in 0..units_x {
            if !r.insufficient {
                // jdcoefct.c consume_data: the last iMCU row whose MCUs started with data left.
                last_good = if single { my / frame.comps[scan.comps[0].0].v } else { my };
            }
            if restart_interval > 0 {
                if restarts_to_go == 0 {
                    r.restart(next_restart);
                    next_restart = (next_restart + 1) & 7;
                    pred.iter_mut().for_each(|p| *p = 0);
                    eobrun = 0;
                    restarts_to_go = restart_interval;
                }
                restarts_to_go -= 1;
            }
            if r.insufficient {
                continue; // libjpeg leaves the MCU zero once the data ran out
            }
            for (si, &(ci, _, _)) in scan.comps.iter().enumerate() {
                let comp = &mut frame.comps[ci];
                let (nh, nv) = if single { (1, 1) } else { (comp.h, comp.v) };
                for by in 0..nv {
                    for bx in 0..nh {
                        let (row, col) = if single { (my, mx) } else { (my * comp.v + by, mx * comp.h + bx) };
                        let off = (row * comp.bw + col) * 64;
                        let block: &mut [i16; 64] = (&mut comp.coefs[off..off + 64]).try_into().unwrap();
                        let dc = dc_tabs[si].as_ref();
                        let ac = ac_tabs[si].as_ref();
                        if !progressive {
                            decode_block_sequential(&mut r, block, dc.unwrap(), ac.unwrap(), &mut pred[si]);
                        } else if scan.ss == 0 {
                            if scan.ah == 0 {
                                let diff = {
                                    let s = r.decode(dc.unwrap()) as u32;
                                    r.receive_extend(s)
                                };
                                pred[si] = pred[si].wrapping_add(diff);
                                block[0] = (pred[si] << scan.al) as i16;
                            } else if r.bit() {
                                block[0] |= (1i32 << scan.al) as i16;
                            }
                        } else if scan.ah == 0 {
                            decode_ac_first(&mut r, block, ac.unwrap(), scan, &mut eobrun);
                        } else {
                            decode_ac_refine(&mut r, block, ac.unwrap(), scan, &mut eobrun);
                        }
                    }
                }
            }
        }
    }
    Ok((r.pos, r.at_end, last_good))
}

fn decode_block_sequential(r: &mut BitReader, block: &mut [i16; 64], dc: &Huffman, ac: &Huffman, pred: &mut i32) {
    let s = r.decode(dc) as u32;
    let diff = r.receive_extend(s);
    *pred = pred.wrapping_add(diff);
    block[0] = *pred as i16;
    let mut k = 1;
    while k < 64 {
        let rs = r.decode(ac);
        let (run, s) = ((rs >> 4) as usize, (rs & 15) as u32);
        if s != 0 {
            k += run;
            block[NATURAL[k]] = r.receive_extend(s) as i16;
        } else if run != 15 {
            break;
        } else {
            k += 15;
        }
        k += 1;
    }
}

fn decode_ac_first(r: &mut BitReader, block: &mut [i16; 64], ac: &Huffman, scan: &Scan, eobrun: &mut u32) {
    if *eobrun > 0 {
        *eobrun -= 1;
        return;
    }
    let mut k = scan.ss;
    while k <= scan.se {
        let rs = r.decode(ac);
        let (run, s) = ((rs >> 4) as u32, (rs & 15) as u32);
        if s != 0 {
            k += run as usize;
            let v = r.receive_extend(s);
            block[NATURAL[k]] = (v << scan.al) as i16;
        } else if run == 15 {
            k += 15;
        } else {
            *eobrun = 1 << run;
            if run != 0 {
                *eobrun += r.bits(run);
            }
            *eobrun -= 1;
            break;
        }
        k += 1;
    }
}

fn decode_ac_refine(r: &mut BitReader, block: &mut [i16; 64], ac: &Huffman, scan: &Scan, eobrun: &mut u32) {
    let p1 = 1i16 << scan.al;
    let m1 = (-1i16) << scan.al;
    let refine = |r: &mut BitReader, c: &mut i16| {
        if r.bit() && (*c & p1) == 0 {
            *c = c.wrapping_add(if *c >= 0 { p1 } else { m1 });
        }
    };
    let mut k = scan.ss;
    if *eobrun == 0 {
        while k <= scan.se {
            let rs = r.decode(ac);
            let mut run = (rs >> 4) as i32;
            let s = rs & 15;
            let mut value = 0i16;
            if s != 0 {
                // s should be 1; libjpeg only warns otherwise.
                value = if r.bit() { p1 } else { m1 };
            } else if run != 15 {
                *eobrun = 1 << run;
                if run != 0 {
                    *eobrun += r.bits(run as u32);
                }
                break;
            }
            while k <= scan.se {
                let c = &mut block[NATURAL[k]];
                if *c != 0 {
                    refine(r, c);
                } else {
                    run -= 1;
                    if run < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if value != 0 {
                block[NATURAL[k]] = value;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= scan.se {
            let c = &mut block[NATURAL[k]];
            if *c != 0 {
                refine(r, c);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
}

// ---- IDCT: libjpeg-turbo's "islow" as its x86-64 SIMD code computes it ----
//
// jidctint.c's algorithm (13-bit constants, 2 extra bits between passes) as jsimd_idct_islow_avx2 evaluates it:
// 16-bit dequantisation and sums, 32-bit products, saturation to 16 bits after each pass and to 0..255 at the end.
// For every block a real encoder produces this equals jidctint.c exactly; on corrupt coefficients the saturation
// (rather than jidctint.c's wrap-around table) is what PIL, running the SIMD code, shows.

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const F_0_298: i32 = 2446;
const F_0_390: i32 = 3196;
const F_0_541: i32 = 4433;
const F_0_765: i32 = 6270;
const F_0_899: i32 = 7373;
const F_1_175: i32 = 9633;
const F_1_501: i32 = 12299;
const F_1_847: i32 = 15137;
const F_1_961: i32 = 16069;
const F_2_053: i32 = 16819;
const F_2_562: i32 = 20995;
const F_3_072: i32 = 25172;

/// pmaddwd: a·ca + b·cb in 32 bits.
#[inline(always)]
fn madd(a: i16, ca: i32, b: i16, cb: i32) -> i32 {
    (a as i32 * ca).wrapping_add(b as i32 * cb)
}

/// Rounding right shift in 32 bits, then saturation to 16 bits (vpaddd, vpsrad, vpackssdw).
#[inline(always)]
fn descale16(x: i32, n: u32) -> i16 {
    (x.wrapping_add(1 << (n - 1)) >> n).clamp(i16::MIN as i32, i16::MAX as i32) as i16
}

/// One 1-D pass (the DODCT macro) over 8 values, descaled by `n` bits.
#[inline(always)]
fn idct_1d(x: [i16; 8], n: u32) -> [i16; 8] {
    // Even part.
    let tmp3 = madd(x[2], F_0_541 + F_0_765, x[6], F_0_541);
    let tmp2 = madd(x[2], F_0_541, x[6], F_0_541 - F_1_847);
    let tmp0 = (x[0].wrapping_add(x[4]) as i32) << CONST_BITS;
    let tmp1 = (x[0].wrapping_sub(x[4]) as i32) << CONST_BITS;
    let (tmp10, tmp13) = (tmp0.wrapping_add(tmp3), tmp0.wrapping_sub(tmp3));
    let (tmp11, tmp12) = (tmp1.wrapping_add(tmp2), tmp1.wrapping_sub(tmp2));
    // Odd part.
    let z3 = x[7].wrapping_add(x[3]);
    let z4 = x[5].wrapping_add(x[1]);
    let z3p = madd(z3, F_1_175 - F_1_961, z4, F_1_175);
    let z4p = madd(z3, F_1_175, z4, F_1_175 - F_0_390);
    let t0 = madd(x[7], F_0_298 - F_0_899, x[1], -F_0_899).wrapping_add(z3p);
    let t1 = madd(x[5], F_2_053 - F_2_562, x[3], -F_2_562).wrapping_add(z4p);
    let t3 = madd(x[7], -F_0_899, x[1], F_1_501 - F_0_899).wrapping_add(z4p);
    let t2 = madd(x[5], -F_2_562, x[3], F_3_072 - F_2_562).wrapping_add(z3p);
    [
        descale16(tmp10.wrapping_add(t3), n),
        descale16(tmp11.wrapping_add(t2), n),
        descale16(tmp12.wrapping_add(t1), n),
        descale16(tmp13.wrapping_add(t0), n),
        descale16(tmp13.wrapping_sub(t0), n),
        descale16(tmp12.wrapping_sub(t1), n),
        descale16(tmp11.wrapping_sub(t2), n),
        descale16(tmp10.wrapping_sub(t3), n),
    ]
}

fn idct_islow(coef: &[i16], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    // Dequantisation: 16-bit products (vpmullw).
    let deq = |i: usize| (coef[i] as i32).wrapping_mul(quant[i] as i32) as i16;
    let mut ws = [[0i16; 8]; 8]; // ws[row][col]
    if coef[8..].iter().all(|&c| c == 0) {
        // Rows 1..7 all zero: each column is its row-0 value << PASS1_BITS (16-bit shift).
        for col in 0..8 {
            let v = deq(col) << PASS1_BITS;
            for row in &mut ws {
                row[col] = v;
            }
        }
    } else {
        for col in 0..8 {
            let y = idct_1d(std::array::from_fn(|row| deq(row * 8 + col)), CONST_BITS - PASS1_BITS);
            for (row, v) in ws.iter_mut().zip(y) {
                row[col] = v;
            }
        }
    }
    for (r, w) in ws.iter().enumerate() {
        let y = idct_1d(*w, CONST_BITS + PASS1_BITS + 3);
        for (dst, v) in out[r * stride..r * stride + 8].iter_mut().zip(y) {
            *dst = (v.clamp(-128, 127) + 128) as u8;
        }
    }
}

// ---- Upsampling (jdsample.c) ----

/// The component's samples (real part `dw`×`dh`, row stride `stride`) upsampled to the image size.
fn upsample(plane: &[u8], stride: usize, c: &Component, frame: &Frame) -> Vec<u8> {
    let (w, h) = (frame.width, frame.height);
    let (he, ve) = (frame.hmax / c.h, frame.vmax / c.v);
    let (dw, dh) = (c.dw, c.dh);
    let row = |y: usize| &plane[y * stride..y * stride + dw];
    let mut out = vec![0u8; w * h];
    let mut tmp = vec![0u8; 2 * dw];
    let mut colsum = vec![0i32; dw];
    for (y, orow) in out.chunks_exact_mut(w).enumerate() {
        match (he, ve) {
            (1, 1) => orow.copy_from_slice(&row(y)[..w]),
            (2, 1) if dw > 2 => {
                let inp = row(y);
                tmp[0] = inp[0];
                tmp[1] = ((inp[0] as i32 * 3 + inp[1] as i32 + 2) >> 2) as u8;
                for i in 1..dw - 1 {
                    let v = inp[i] as i32 * 3;
                    tmp[2 * i] = ((v + inp[i - 1] as i32 + 1) >> 2) as u8;
                    tmp[2 * i + 1] = ((v + inp[i + 1] as i32 + 2) >> 2) as u8;
                }
                let i = dw - 1;
                tmp[2 * i] = ((inp[i] as i32 * 3 + inp[i - 1] as i32 + 1) >> 2) as u8;
                tmp[2 * i + 1] = inp[i];
                orow.copy_from_slice(&tmp[..w]);
            }
            (1, 2) => {
                let iy = y / 2;
                let (far, bias) = if y % 2 == 0 { (iy.saturating_sub(1), 1) } else { ((iy + 1).min(dh - 1), 2) };
                let (near, far) = (row(iy), row(far));
                for (x, o) in orow.iter_mut().enumerate() {
                    *o = ((near[x] as i32 * 3 + far[x] as i32 + bias) >> 2) as u8;
                }
            }
            (2, 2) if dw > 2 => {
                let iy = y / 2;
                let far = if y % 2 == 0 { iy.saturating_sub(1) } else { (iy + 1).min(dh - 1) };
                let (near, far) = (row(iy), row(far));
                for (s, (&a, &b)) in colsum.iter_mut().zip(near.iter().zip(far)) {
                    *s = a as i32 * 3 + b as i32;
                }
                tmp[0] = ((colsum[0] * 4 + 8) >> 4) as u8;
                tmp[1] = ((colsum[0] * 3 + colsum[1] + 7) >> 4) as u8;
                for i in 1..dw - 1 {
                    tmp[2 * i] = ((colsum[i] * 3 + colsum[i - 1] + 8) >> 4) as u8;
                    tmp[2 * i + 1] = ((colsum[i] * 3 + colsum[i + 1] + 7) >> 4) as u8;
                }
                let i = dw - 1;
                tmp[2 * i] = ((colsum[i] * 3 + colsum[i - 1] + 8) >> 4) as u8;
                tmp[2 * i + 1] = ((colsum[i] * 4 + 7) >> 4) as u8;
                orow.copy_from_slice(&tmp[..w]);
            }
            _ => {
                // Box replication (int_upsample, and h2v1/h2v2 on components 2 samples wide or less).
                let inp = row(y / ve);
                for (x, o) in orow.iter_mut().enumerate() {
                    *o = inp[x / he];
                }
            }
        }
    }
    out
}

// ---- Colour conversion (jdcolor.c) ----

const SCALEBITS: u32 = 16;

fn fix(x: f64) -> i64 {
    (x * (1i64 << SCALEBITS) as f64 + 0.5) as i64
}

struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i64; 256],
    cb_g: [i64; 256],
}

impl YccTables {
    fn new() -> Self {
        let mut t = Self { cr_r: [0; 256], cb_b: [0; 256], cr_g: [0; 256], cb_g: [0; 256] };
        let half = 1i64 << (SCALEBITS - 1);
        for i in 0..256 {
            let x = i as i64 - 128;
            t.cr_r[i] = ((fix(1.40200) * x + half) >> SCALEBITS) as i32;
            t.cb_b[i] = ((fix(1.77200) * x + half) >> SCALEBITS) as i32;
            t.cr_g[i] = -fix(0.71414) * x;
            t.cb_g[i] = -fix(0.34414) * x + half;
        }
        t
    }

    /// (R, G, B) of one YCbCr sample, as ycc_rgb_convert.
    #[inline(always)]
    fn rgb(&self, y: u8, cb: u8, cr: u8) -> [i32; 3] {
        let y = y as i32;
        let (cb, cr) = (cb as usize, cr as usize);
        [y + self.cr_r[cr], y + ((self.cb_g[cb] + self.cr_g[cr]) >> SCALEBITS) as i32, y + self.cb_b[cb]]
    }
}

fn clamp8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// PIL's MULDIV255: a·b/255 rounded, as `((t >> 8) + t) >> 8` with t = a·b + 128.
fn muldiv255(a: i32, b: i32) -> i32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

// ---- Inter-block smoothing of progressive files left imprecise (jdcoefct.c decompress_smooth_data) ----
//
// When a progressive file ends with some of the first nine AC coefficients not fully refined, libjpeg estimates
// the missing low-frequency coefficients of each block from the DC values of its 5x5 neighbourhood (and, when no
// AC data came at all, the DC itself). Files from real encoders send every bit, so this is for damaged files.

/// Natural-order positions of the nine AC coefficients smoothing may estimate (AC01, AC10, AC20, AC11, AC02,
/// AC03, AC12, AC21, AC30), in coef_bits order 1..9.
const SMOOTH_POS: [usize; 9] = [1, 8, 16, 9, 2, 3, 10, 17, 24];

struct SmoothState {
    /// Per component: the coef_bits latched for rows up to `last_good_row`, and those for later rows.
    bits: Vec<([i32; 10], [i32; 10])>,
    last_good_row: usize,
    total_imcu_rows: usize,
}

impl SmoothState {
    /// smoothing_ok: a progressive file whose components all have DC data, non-zero low quantisers, and some of
    /// the first nine AC coefficients not exact.
    fn new(frame: &Frame, scans: usize, last_good_row: usize) -> Option<Self> {
        if !frame.progressive {
            return None;
        }
        let mut useful = false;
        let mut bits = Vec::with_capacity(frame.comps.len());
        for c in &frame.comps {
            let q = c.quant?;
            if q[0] == 0 || SMOOTH_POS.iter().any(|&p| q[p] == 0) || c.coef_bits[0] < 0 {
                return None;
            }
            let mut cur = [0i32; 10];
            let mut prev = [0i32; 10];
            cur[0] = c.coef_bits[0];
            for k in 1..10 {
                cur[k] = c.coef_bits[k];
                prev[k] = if scans > 1 { c.prev_coef_bits[k] } else { -1 };
                useful |= c.coef_bits[k] != 0;
            }
            bits.push((cur, prev));
        }
        let total_imcu_rows = frame.height.div_ceil(8 * frame.vmax);
        useful.then_some(Self { bits, last_good_row, total_imcu_rows })
    }

    /// The block (bx, by) of component `ci` with its estimated coefficients, into `work`.
    fn smooth(&self, ci: usize, c: &Component, frame: &Frame, bx: usize, by: usize, work: &mut [i16; 64]) {
        let _ = frame;
        let block = |row: usize, col: usize| &c.coefs[(row * c.bw + col) * 64..(row * c.bw + col) * 64 + 64];
        work.copy_from_slice(block(by, bx));
        let v = c.v;
        let imcu = by / v;
        let block_row = by % v;
        let last_imcu = self.total_imcu_rows - 1;
        // libjpeg's row bookkeeping, including its count of block rows in a partial last iMCU row.
        let block_rows = if imcu < last_imcu {
            v
        } else {
            match c.bh_real % v {
                0 => v,
                r => r,
            }
        };
        let fake_row = imcu * block_rows + block_row;
        let fake_rows = block_rows * self.total_imcu_rows;
        let prev = if fake_row > 0 { by - 1 } else { by };
        let prev_prev = if fake_row > 1 { by - 2 } else { prev };
        let next = if fake_row + 1 < fake_rows { by + 1 } else { by };
        let next_next = if fake_row + 2 < fake_rows { by + 2 } else { next };
        let rows = [prev_prev, prev, by, next, next_next];
        let last_col = c.bw_real - 1;
        let cols = [bx.saturating_sub(2), bx.saturating_sub(1), bx, (bx + 1).min(last_col), (bx + 2).min(last_col)];
        // dc[i][j]: DC of row i (−2..2), column j (−2..2); DC01..DC25 in libjpeg's numbering is dc[(n−1)/5][(n−1)%5].
        let mut dc = [[0i64; 5]; 5];
        for (i, &row) in rows.iter().enumerate() {
            for (j, &col) in cols.iter().enumerate() {
                dc[i][j] = block(row, col)[0] as i64;
            }
        }
        let d = |n: usize| dc[(n - 1) / 5][(n - 1) % 5];
        let (cur, prev_bits) = &self.bits[ci];
        let coef_bits = if imcu > self.last_good_row { prev_bits } else { cur };
        let change_dc = coef_bits[1..10].iter().all(|&b| b == -1);
        let q = c.quant.unwrap_or([1; 64]);
        let q00 = q[0] as i64;
        let estimate = |num: i64, qk: i64, al: i32| -> i16 {
            let limit = |p: i64| if al > 0 && p >= 1 << al { (1 << al) - 1 } else { p };
            let pred =
                if num >= 0 { limit(((qk << 7) + num) / (qk << 8)) } else { -limit(((qk << 7) - num) / (qk << 8)) };
            pred as i32 as i16
        };
        let sums: [i64; 9] = if change_dc {
            [
                -d(1) - d(2) + d(4) + d(5) - 3 * d(6) + 13 * d(7) - 13 * d(9) + 3 * d(10) - 3 * d(11) + 38 * d(12)
                    - 38 * d(14)
                    + 3 * d(15)
                    - 3 * d(16)
                    + 13 * d(17)
                    - 13 * d(19)
                    + 3 * d(20)
                    - d(21)
                    - d(22)
                    + d(24)
                    + d(25),
                -d(1) - 3 * d(2) - 3 * d(3) - 3 * d(4) - d(5) - d(6) + 13 * d(7) + 38 * d(8) + 13 * d(9) - d(10)
                    + d(16)
                    - 13 * d(17)
                    - 38 * d(18)
                    - 13 * d(19)
                    + d(20)
                    + d(21)
                    + 3 * d(22)
                    + 3 * d(23)
                    + 3 * d(24)
                    + d(25),
                d(3) + 2 * d(7) + 7 * d(8) + 2 * d(9) - 5 * d(12) - 14 * d(13) - 5 * d(14)
                    + 2 * d(17)
                    + 7 * d(18)
                    + 2 * d(19)
                    + d(23),
                -d(1) + d(5) + 9 * d(7) - 9 * d(9) - 9 * d(17) + 9 * d(19) + d(21) - d(25),
                2 * d(7) - 5 * d(8) + 2 * d(9) + d(11) + 7 * d(12) - 14 * d(13) + 7 * d(14) + d(15) + 2 * d(17)
                    - 5 * d(18)
                    + 2 * d(19),
                d(7) - d(9) + 2 * d(12) - 2 * d(14) + d(17) - d(19),
                d(7) - 3 * d(8) + d(9) - d(17) + 3 * d(18) - d(19),
                d(7) - d(9) - 3 * d(12) + 3 * d(14) + d(17) - d(19),
                d(7) + 2 * d(8) + d(9) - d(17) - 2 * d(18) - d(19),
            ]
        } else {
            [
                -7 * d(11) + 50 * d(12) - 50 * d(14) + 7 * d(15),
                -7 * d(3) + 50 * d(8) - 50 * d(18) + 7 * d(23),
                -d(3) + 13 * d(8) - 24 * d(13) + 13 * d(18) - d(23),
                d(10) + d(16) - 10 * d(17) + 10 * d(19) - d(2) - d(20) + d(22) - d(24) + d(4) - d(6) + 10 * d(7)
                    - 10 * d(9),
                -d(11) + 13 * d(12) - 24 * d(13) + 13 * d(14) - d(15),
                0,
                0,
                0,
                0,
            ]
        };
        let n_ac = if change_dc { 9 } else { 5 };
        for k in 0..n_ac {
            let (pos, al) = (SMOOTH_POS[k], coef_bits[k + 1]);
            if al != 0 && work[pos] == 0 {
                work[pos] = estimate(q00 * sums[k], q[pos] as i64, al);
            }
        }
        if change_dc {
            let sum =
                -2 * d(1) - 6 * d(2) - 8 * d(3) - 6 * d(4) - 2 * d(5) - 6 * d(6) + 6 * d(7) + 42 * d(8) + 6 * d(9)
                    - 6 * d(10)
                    - 8 * d(11)
                    + 42 * d(12)
                    + 152 * d(13)
                    + 42 * d(14)
                    - 8 * d(15)
                    - 6 * d(16)
                    + 6 * d(17)
                    + 42 * d(18)
                    + 6 * d(19)
                    - 6 * d(20)
                    - 2 * d(21)
                    - 6 * d(22)
                    - 8 * d(23)
                    - 6 * d(24)
                    - 2 * d(25);
            work[0] = estimate(q00 * sum, q00, 0);
        }
    }
}

/// Marker-level state while reading a file.
struct Decoder {
    frame: Option<Frame>,
    qtables: [Option<[u16; 64]>; 4],
    tables: Tables,
    restart_interval: usize,
    jfif: bool,
    adobe_transform: Option<u8>,
    scans: usize,
    /// The last iMCU row of the latest scan decoded with data to spare (for block smoothing).
    last_good_row: usize,
    /// Past the only scan of a single-scan sequential file: PIL has every row by then and lets libjpeg's
    /// `jpeg_finish_decompress` read the remaining markers, where running out of data is no error (a bad marker
    /// still is). Before that, the file must go on to its EOI, as libjpeg reads multi-scan files whole.
    tail: bool,
}

impl Decoder {
    /// Reads one marker and its segment (decoding the scan after an SOS); returns true at EOI.
    fn step(&mut self, c: &mut Cursor) -> MRes<bool> {
        let marker = c.next_marker()?;
        // PIL's own header parser, which runs up to the first SOS, fails on markers libjpeg would accept or on
        // segments too short for the fields it reads.
        let pil_header = self.scans == 0;
        match marker {
            0xD8 => return fail("corrupt JPEG (a second SOI marker)"),
            0xD9 => return Ok(true),
            0xD0..=0xD7 => {}
            0x01 if !pil_header => {}
            0xC0..=0xC3 | 0xC9..=0xCB => {
                if self.frame.is_some() {
                    return fail("corrupt JPEG (more than one SOF marker)");
                }
                let frame = read_sof(c, marker == 0xC2)?;
                match marker {
                    0xC3 | 0xCB => return fail("unsupported JPEG: lossless"),
                    0xC9 | 0xCA => return fail("unsupported JPEG: arithmetic coding"),
                    _ => self.frame = Some(frame),
                }
            }
            0xC4 => {
                let mut length = c.be16()? - 2;
                while length > 16 {
                    let index = c.byte()?;
                    let counts: [u8; 16] = c.bytes(16)?.try_into().unwrap();
                    length -= 17;
                    let n: i64 = counts.iter().map(|&x| x as i64).sum();
                    if n > 256 || n > length {
                        return fail("bad JPEG Huffman table");
                    }
                    let vals = c.bytes(n as usize)?.to_vec();
                    length -= n;
                    let (ac, index) = (index & 0x10 != 0, (index & !0x10) as usize);
                    if index > 3 {
                        return fail("bad JPEG DHT table index");
                    }
                    let slot = if ac { &mut self.tables.ac[index] } else { &mut self.tables.dc[index] };
                    *slot = Some((counts, vals));
                }
                if length != 0 {
                    return fail("bad JPEG DHT segment length");
                }
            }
            0xCC => {
                // DAC: arithmetic-coding conditioning, validated and ignored (arithmetic scans are unsupported).
                let mut length = c.be16()? - 2;
                while length > 0 {
                    let index = c.byte()?;
                    let val = c.byte()?;
                    length -= 2;
                    if index >= 32 {
                        return fail("bad JPEG DAC table index");
                    }
                    if index < 16 && (val & 15) > (val >> 4) {
                        return fail("bad JPEG DAC value");
                    }
                }
                if length != 0 {
                    return fail("bad JPEG DAC segment length");
                }
            }
            0xDB => {
                let mut length = c.be16()? - 2;
                if pil_header && length > 0 && (c.pos + length as usize) <= c.data.len() {
                    // PIL's DQT parser rejects a table cut short by the segment length.
                    let mut p = &c.data[c.pos..c.pos + length as usize];
                    while !p.is_empty() {
                        let size = if p[0] >> 4 == 0 { 65 } else { 129 };
                        if p.len() < size {
                            return fail("bad JPEG quantisation table segment");
                        }
                        p = &p[size..];
                    }
                }
                while length > 0 {
                    let n = c.byte()?;
                    let (prec, index) = (n >> 4, (n & 15) as usize);
                    if index > 3 {
                        return fail("bad JPEG DQT table index");
                    }
                    let mut q = [0u16; 64];
                    for &nat in &NATURAL[..64] {
                        q[nat] = if prec != 0 { c.be16()? as u16 } else { c.byte()? as u16 };
                    }
                    self.qtables[index] = Some(q);
                    length -= if prec != 0 { 129 } else { 65 };
                }
                if length != 0 {
                    return fail("bad JPEG DQT segment length");
                }
            }
            0xDD => {
                if c.be16()? != 4 {
                    return fail("bad JPEG DRI segment length");
                }
                self.restart_interval = c.be16()? as usize;
            }
            0xDA => {
                let frame = match self.frame.as_mut() {
                    Some(f) => f,
                    None => return fail("corrupt JPEG (SOS before SOF)"),
                };
                let scan = read_sos(c, frame)?;
                if self.tail {
                    return fail("corrupt JPEG (EOI expected after the image's only scan)");
                }
                check_scan(&scan, frame)?;
                if frame.progressive {
                    // start_pass_phuff_decoder's progression bookkeeping.
                    for &(ci, _, _) in &scan.comps {
                        let comp = &mut frame.comps[ci];
                        for k in scan.ss.min(1)..=scan.se.max(9) {
                            comp.prev_coef_bits[k] = if self.scans > 0 { comp.coef_bits[k] } else { 0 };
                        }
                        for k in scan.ss..=scan.se {
                            comp.coef_bits[k] = scan.al as i32;
                        }
                    }
                }
                for &(ci, _, _) in &scan.comps {
                    let comp = &mut frame.comps[ci];
                    if comp.quant.is_none() {
                        match self.qtables.get(comp.tq).copied().flatten() {
                            Some(q) => comp.quant = Some(q),
                            None => return fail(format!("JPEG uses undefined quantisation table {}", comp.tq)),
                        }
                    }
                }
                let single_scan = self.scans == 0 && !frame.progressive && scan.comps.len() == frame.comps.len();
                let (stop, hit_end, last_good) =
                    decode_scan(frame, &scan, &self.tables, self.restart_interval, c.data, c.pos)?;
                self.scans += 1;
                self.last_good_row = last_good;
                c.pos = stop;
                if hit_end {
                    return Err(Stop::Suspend);
                }
                self.tail = single_scan;
            }
            0xE0 | 0xEE => {
                let length = c.be16()? - 2;
                let take = length.clamp(0, 14) as usize;
                let b = c.bytes(take)?;
                if marker == 0xE0 {
                    self.jfif |= take >= 14 && b.starts_with(b"JFIF\0");
                    if pil_header && b.starts_with(b"JFIF") && take < 7 {
                        return fail("bad JFIF segment");
                    }
                } else {
                    if take >= 12 && b.starts_with(b"Adobe") {
                        self.adobe_transform = Some(b[11]);
                    }
                    if pil_header && b.starts_with(b"Adobe") && take < 7 {
                        return fail("bad Adobe segment");
                    }
                }
                c.skip(length - take as i64)?;
            }
            0xE1..=0xED | 0xEF | 0xFE | 0xDC => {
                let length = c.be16()? - 2;
                c.skip(length)?;
            }
            0xC5..=0xC8 | 0xCD..=0xCF => {
                return fail(format!("unsupported JPEG process (SOF{}: hierarchical)", marker - 0xC0))
            }
            m => return fail(format!("corrupt JPEG (unknown marker 0x{m:02X})")),
        }
        Ok(false)
    }
}

/// Decodes a JPEG into (width, height, RGB bytes) exactly as PIL's `Image.open(f).convert("RGB")`.
pub(super) fn decode(data: &[u8]) -> Res<(usize, usize, Vec<u8>)> {
    if data.len() < 3 || data[..3] != [0xFF, 0xD8, 0xFF] {
        return Err("not a JPEG file (no SOI marker)".into());
    }
    let mut c = Cursor { data, pos: 2 };
    let mut d = Decoder {
        frame: None,
        qtables: [None; 4],
        tables: Tables { dc: Default::default(), ac: Default::default() },
        restart_interval: 0,
        jfif: false,
        adobe_transform: None,
        scans: 0,
        last_good_row: 0,
        tail: false,
    };
    loop {
        match d.step(&mut c) {
            Ok(false) => {}
            Ok(true) => break,
            Err(Stop::Suspend) if d.tail => break,
            Err(Stop::Suspend) => return Err("truncated JPEG file".into()),
            Err(Stop::Fail(msg)) => return Err(msg),
        }
    }
    let frame = d.frame.ok_or("corrupt JPEG (no frame before EOI)")?;
    if d.scans == 0 {
        return Err("corrupt JPEG (no scan before EOI)".into());
    }
    let smoothing = SmoothState::new(&frame, d.scans, d.last_good_row);
    output(&frame, d.jfif, d.adobe_transform, smoothing.as_ref())
}

/// IDCT, upsampling and colour conversion of the decoded coefficients.
fn output(
    frame: &Frame,
    jfif: bool,
    adobe_transform: Option<u8>,
    smoothing: Option<&SmoothState>,
) -> Res<(usize, usize, Vec<u8>)> {
    let (w, h) = (frame.width, frame.height);
    let planes: Vec<Vec<u8>> = frame
        .comps
        .iter()
        .enumerate()
        .map(|(ci, c)| {
            let stride = c.bw_real * 8;
            let mut plane = vec![0u8; stride * c.bh_real * 8];
            // A component never scanned (or without a latched table) decodes as zero coefficients.
            let quant = c.quant.unwrap_or([1; 64]);
            let mut work = [0i16; 64];
            for by in 0..c.bh_real {
                for bx in 0..c.bw_real {
                    let off = (by * c.bw + bx) * 64;
                    let mut block = &c.coefs[off..off + 64];
                    if let Some(sm) = smoothing {
                        sm.smooth(ci, c, frame, bx, by, &mut work);
                        block = &work;
                    }
                    idct_islow(block, &quant, &mut plane[by * 8 * stride + bx * 8..], stride);
                }
            }
            upsample(&plane, stride, c, frame)
        })
        .collect();
    let mut rgb = vec![0u8; w * h * 3];
    match planes.len() {
        1 => {
            for (o, &v) in rgb.chunks_exact_mut(3).zip(&planes[0]) {
                o.fill(v);
            }
        }
        3 => {
            // libjpeg's colour-space guess (jdapimin.c): JFIF → YCbCr; Adobe transform 0 → RGB, else YCbCr;
            // otherwise component ids 'R','G','B' → RGB, anything else YCbCr.
            let ids: Vec<u8> = frame.comps.iter().map(|c| c.id).collect();
            let is_rgb = !jfif && adobe_transform.map_or(ids == [b'R', b'G', b'B'], |t| t == 0);
            if is_rgb {
                for (i, o) in rgb.chunks_exact_mut(3).enumerate() {
                    o.copy_from_slice(&[planes[0][i], planes[1][i], planes[2][i]]);
                }
            } else {
                let t = YccTables::new();
                for (i, o) in rgb.chunks_exact_mut(3).enumerate() {
                    let [r, g, b] = t.rgb(planes[0][i], planes[1][i], planes[2][i]);
                    o.copy_from_slice(&[clamp8(r), clamp8(g), clamp8(b)]);
                }
            }
        }
        4 => {
            // Adobe transform 2 (or unknown) → YCCK, converted to CMYK by libjpeg; 0 or no Adobe marker → CMYK.
            // PIL reads the CMYK as Adobe-inverted ("CMYK;I") and converts with nk = 255 − k, c' = nk − c·nk/255.
            let ycck = adobe_transform.is_some_and(|t| t != 0);
            let t = YccTables::new();
            for (i, o) in rgb.chunks_exact_mut(3).enumerate() {
                let cmy = if ycck {
                    let [r, g, b] = t.rgb(planes[0][i], planes[1][i], planes[2][i]);
                    [255 - clamp8(r) as i32, 255 - clamp8(g) as i32, 255 - clamp8(b) as i32]
                } else {
                    [planes[0][i] as i32, planes[1][i] as i32, planes[2][i] as i32]
                };
                // PIL inverts every byte: c = 255 − raw, k = 255 − raw_k, so nk = raw_k.
                let nk = planes[3][i] as i32;
                for (dst, raw) in o.iter_mut().zip(cmy) {
                    *dst = clamp8(nk - muldiv255(255 - raw, nk));
                }
            }
        }
        n => return Err(format!("unsupported JPEG with {n} components")),
    }
    Ok((w, h, rgb))
}
