"""Loads model files written by cliprt into open_clip with a strict load_state_dict and compares the embeddings.

    CLIPRT_EXPORT_DIR=/tmp/export cargo test --release --test open_clip_parity open_clip_export
    python scripts/check_open_clip_load.py /tmp/export      # needs torch, open_clip_torch, safetensors

Exits non-zero when a file does not load strictly or an embedding differs by more than 1e-4 relative.
"""

import json
import os
import sys

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import load_file


def check(directory, kind):
    cfg = json.load(open(os.path.join(directory, f"{kind}.json")))
    model = CLIP(
        embed_dim=cfg["embed_dim"],
        vision_cfg=CLIPVisionCfg(**cfg["vision_cfg"]),
        text_cfg=CLIPTextCfg(**cfg["text_cfg"]),
        quick_gelu=cfg.get("quick_gelu", False),
    )
    model.load_state_dict(load_file(os.path.join(directory, f"{kind}.safetensors")), strict=True)
    model.eval()
    io = load_file(os.path.join(directory, f"{kind}_io.safetensors"))
    worst = 0.0
    with torch.no_grad():
        for name, got in [("image_features", model.encode_image(io["images"])), ("text_features", model.encode_text(io["tokens"]))]:
            want = io[name]
            rel = ((got - want).norm() / want.norm()).item()
            worst = max(worst, rel)
            print(f"{kind}: {name}: relative difference {rel:.2e}")
    return worst <= 1e-4


if __name__ == "__main__":
    directory = sys.argv[1]
    ok = all([check(directory, kind) for kind in ["vit", "resnet"]])
    print("strict load and embeddings:", "ok" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)
