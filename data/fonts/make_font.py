#!/usr/bin/env python3
"""Makes data/fonts/DejaVuSans-subset.ttf, the font src/plot.rs embeds, from Debian's DejaVu Sans.

    python3 -m venv /tmp/fonttools && /tmp/fonttools/bin/pip install fonttools==4.68.0
    /tmp/fonttools/bin/python data/fonts/make_font.py /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf

1. Subset to the characters a plot draws (printable ASCII and · × – … −), without hinting or layout tables:
   25 KB instead of 760 KB.
2. Give every glyph with ink one extra contour: a single point at its origin (x = 0, on the baseline), which has
   no area and so draws nothing. plotters 0.3.7's ab_glyph text renderer places each glyph's ink box at the pen
   position, ignoring the glyph's left side bearing, which spaces letters unevenly ("tr aining"); with the point the
   ink box starts at the origin, so the bearing is kept. Glyphs whose ink starts left of the origin (negative
   bearing, e.g. "j") are unaffected by the point and keep a small error.
"""

import sys

from fontTools import subset
from fontTools.pens.recordingPen import DecomposingRecordingPen
from fontTools.pens.ttGlyphPen import TTGlyphPen
from fontTools.ttLib import TTFont

UNICODES = list(range(0x20, 0x7F)) + [0xB7, 0xD7, 0x2013, 0x2026, 0x2212]


def main(src, dst="data/fonts/DejaVuSans-subset.ttf"):
    options = subset.Options()
    options.hinting = False
    options.layout_features = []
    options.name_IDs = ["*"]
    options.name_legacy = True
    options.name_languages = ["*"]
    options.notdef_outline = True
    font = subset.load_font(src, options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=UNICODES)
    subsetter.subset(font)

    glyf = font["glyf"]
    glyph_set = font.getGlyphSet()
    for name in font.getGlyphOrder():
        glyph = glyf[name]
        if glyph.numberOfContours == 0:  # no ink (space): nothing to place
            continue
        # Composite glyphs (e.g. "i" = dotless i + dot) are flattened first, so one point can be added.
        rec = DecomposingRecordingPen(glyph_set)
        glyph_set[name].draw(rec)
        pen = TTGlyphPen(None)
        rec.replay(pen)
        new = pen.glyph()
        new.coordinates.append((0, 0))  # (TTGlyphPen drops one-point contours, so add it by hand)
        new.flags.append(1)  # on-curve
        new.endPtsOfContours.append(len(new.coordinates) - 1)
        new.numberOfContours += 1
        new.recalcBounds(glyf)  # the bounding box now includes the origin
        glyf[name] = new
        advance, _ = font["hmtx"][name]
        font["hmtx"][name] = (advance, new.xMin)  # keep lsb == xMin, as TrueType expects
    font.save(dst)
    print(f"wrote {dst}: {len(font.getGlyphOrder())} glyphs")


if __name__ == "__main__":
    main(*sys.argv[1:])
