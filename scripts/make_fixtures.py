#!/usr/bin/env python3
"""Regenerates the parity fixtures under tests/fixtures/ from open_clip (the reference implementation).

The fixtures are committed; the Rust tests only read them, so neither Python nor PyTorch is needed to build or test
cliprt. Run this only to regenerate them (e.g. for a new open_clip version), from the repository root:

    python3.11 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.15.0 torchvision==0.29.2 open_clip_torch==3.3.0 pillow==13.0.0 \\
        safetensors==0.8.0
    /tmp/torchenv/bin/python scripts/make_fixtures.py              # every section
    /tmp/torchenv/bin/python scripts/make_fixtures.py tokenizer    # only the named sections

The fixtures in the repository were made with Python 3.11.7 and: torch 2.15.0 (CPU is enough), torchvision 0.29.2,
open_clip_torch 3.3.0 (which brings ftfy 6.3.1, regex 2026.11.15, timm 1.0.31), pillow 13.0.0, safetensors 0.8.0,
numpy 2.4.6.

Sections (each a module scripts/fixtures/<name>.py with a `make(out_dir)`; one that does not exist is skipped):
  tokenizer   tests/fixtures/tokenizer.json: open_clip's ids for a varied corpus, a held-out list, context 16, and
              DeCLIP's mask-token variant (tests/tokenizer.rs)
  preprocess  image decoding and open_clip's eval preprocessing (tests/preprocess.rs)
  models      tiny open_clip CLIP models: weights, forward outputs, gradients
"""

import importlib
import os
import sys

SECTIONS = ["tokenizer", "preprocess", "models"]


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "scripts"))
    out_dir = os.path.join(root, "tests", "fixtures")
    wanted = argv or SECTIONS
    unknown = [name for name in wanted if name not in SECTIONS]
    if unknown:
        sys.exit(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    for name in wanted:
        if not os.path.exists(os.path.join(root, "scripts", "fixtures", f"{name}.py")):
            print(f"{name}: scripts/fixtures/{name}.py does not exist, skipped")
            continue
        module = importlib.import_module(f"fixtures.{name}")
        print(f"{name}: writing into {out_dir}")
        module.make(out_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
