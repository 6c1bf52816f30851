"""Loads model files written by cliprt into open_clip with a strict load_state_dict and compares the embeddings.

    CLIPRT_EXPORT_DIR=/tmp/export cargo test --release --test open_clip_parity open_clip_export
    python scripts/check_open_clip_load.py /tmp/export      # needs torch, open_clip_torch, safetensors

    python scripts/check_open_clip_load.py --run runs/<name>   # every checkpoint a `cliprt train` run wrote

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


def check_run(directory):
    """Strict load of every model file of a `cliprt train` output folder, with its model_config.json."""
    cfg = json.load(open(os.path.join(directory, "model_config.json")))
    model = CLIP(
        embed_dim=cfg["embed_dim"],
        vision_cfg=CLIPVisionCfg(**cfg["vision_cfg"]),
        text_cfg=CLIPTextCfg(**cfg["text_cfg"]),
        quick_gelu=cfg.get("quick_gelu", False),
    )
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors") and not f.endswith(".train.safetensors"))
    for f in files:
        model.load_state_dict(load_file(os.path.join(directory, f)), strict=True)
        print(f"{f}: strict load ok, logit scale {model.logit_scale.exp().item():.4f}")
    return bool(files)


if __name__ == "__main__":
    if sys.argv[1] == "--run":
        ok = check_run(sys.argv[2])
        print("strict load of every checkpoint:", "ok" if ok else "NO CHECKPOINTS")
        sys.exit(0 if ok else 1)
    directory = sys.argv[1]
    ok = all([check(directory, kind) for kind in ["vit", "resnet"]])
    print("strict load and embeddings:", "ok" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)
