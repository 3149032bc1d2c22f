#!/usr/bin/env python3
"""Builds assets/tiny-sd15 (the demo model) from the fixture pipeline
../shared/fixtures/tiny-sd15: same configs, every F32 tensor stored as F16 to
keep the repository small. Standard library only.

    python3 scripts/make_demo_model.py [FIXTURES_DIR]
"""
import array, json, os, shutil, struct, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
fixtures = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "..", "shared", "fixtures")
src = os.path.join(fixtures, "tiny-sd15")
dst = os.path.join(root, "assets", "tiny-sd15")


def convert(src_file, dst_file):
    with open(src_file, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    out_header, chunks, off = {}, [], 0
    for name in sorted(k for k in header if k != "__metadata__"):
        e = header[name]
        raw = data[e["data_offsets"][0]:e["data_offsets"][1]]
        dtype = e["dtype"]
        if dtype == "F32":
            vals = array.array("f", raw)
            raw = struct.pack("<%de" % len(vals), *vals)
            dtype = "F16"
        out_header[name] = {"dtype": dtype, "shape": e["shape"],
                            "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    out_header["__metadata__"] = {"format": "pt", "sdmoe_note": "demo weights (random), f16"}
    h = json.dumps(out_header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(dst_file, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for c in chunks:
            f.write(c)


shutil.rmtree(dst, ignore_errors=True)
for comp in ("scheduler", "text_encoder", "unet", "vae"):
    os.makedirs(os.path.join(dst, comp))
    for fn in os.listdir(os.path.join(src, comp)):
        s, d = os.path.join(src, comp, fn), os.path.join(dst, comp, fn)
        if fn.endswith(".fp16.safetensors"):
            continue
        if fn.endswith(".safetensors"):
            convert(s, d)
        else:
            shutil.copy(s, d)
shutil.copy(os.path.join(src, "model_index.json"), dst)
os.symlink("../tokenizer", os.path.join(dst, "tokenizer"))
print("wrote", dst)
