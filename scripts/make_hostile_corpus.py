#!/usr/bin/env python3
"""Writes sdmoe's hostile-input corpus (issue 10) into a directory.

    scripts/make_hostile_corpus.py OUT_DIR [--fixtures DIR] [--only FORMAT,...]

Every file is made here, deterministically, with the Python standard library
only: nothing binary is committed.  Formats: safetensors, model (diffusers
folders with broken files), ldm_yaml, segmoe_yaml, jobs, image.  Cases that
need a real model (model folders, NaN/Inf weights, wrong dtypes, LDM yamls
beside the real checkpoint, SegMoE configs naming real experts) are built
from the fixtures ($SDMOE_FIXTURES, default ../shared/fixtures beside the
checkout): untouched files are symlinks (or one hard-linked copy) to them, so
only the broken part is written.  Without fixtures those cases are left out.

OUT_DIR/manifest.json lists every case:
    id       unique name
    format   one of the formats above
    path     what is given to the command (relative to OUT_DIR)
    target   the file at fault (relative to OUT_DIR), read by the library tier
    lib      library reader that must refuse `target` in-process, or null:
             st_open | json | unet_config | vae_config | clip_config |
             ldm_yaml | segmoe_yaml | image
    drive    sdmoe command that must refuse `path`: info | generate | merge |
             batch (or null: no command reads this format yet)
    names    substring the one-line error message must contain
    expect   "error" (must be refused) or "any" (may be accepted: only no
             crash, bounded time and memory, and no stray output)
    timeout  seconds allowed for the command
    why      what is hostile about it
tests/test_hostile.c drives them; tests/fuzz/ uses them as extra seeds.
"""
import argparse
import json
import os
import shutil
import struct
import sys
import zlib

FORMATS = ("safetensors", "model", "ldm_yaml", "segmoe_yaml", "jobs", "image")


# ----------------------------------------------------------------- helpers

class Corpus:
    def __init__(self, out, fixtures, only):
        self.out = out
        self.fx = fixtures
        self.only = only
        self.cases = []
        self.ids = set()

    def want(self, fmt):
        return not self.only or fmt in self.only

    def path(self, rel):
        p = os.path.join(self.out, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def write(self, rel, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        with open(self.path(rel), "wb") as f:
            f.write(data)

    def add(self, cid, fmt, path, why, drive, names, lib=None, target=None, timeout=20, expect="error"):
        assert cid not in self.ids, cid
        self.ids.add(cid)
        self.cases.append({
            "id": cid, "format": fmt, "path": path, "target": target or path, "lib": lib,
            "drive": drive, "names": names, "timeout": timeout, "expect": expect, "why": why,
        })

    def fixture(self, rel):
        if not self.fx:
            return None
        p = os.path.join(self.fx, rel)
        return p if os.path.exists(p) else None


def st_file(header, data=b"", hlen=None):
    """A safetensors file: u64 LE header length, header (dict or raw str/bytes), data."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8")
    n = len(header) if hlen is None else hlen
    return struct.pack("<Q", n) + header + data


def st_read(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def tensor(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def f32(n, v=0.5):
    return struct.pack("<%df" % n, *([v] * n))


def nested(depth, leaf="0"):
    return "[" * depth + leaf + "]" * depth


# ---------------------------------------------------------------- safetensors

def gen_safetensors(c):
    ok = {"a": tensor("F32", [2, 2], 0, 16)}
    data = f32(4)
    cases = [
        ("st_empty", b"", "0-byte file"),
        ("st_short_length", b"\x10\x00\x00", "3 bytes: shorter than the 8-byte header length"),
        ("st_hlen_u64_max", st_file(ok, data, hlen=2**64 - 1), "header length 2^64-1"),
        ("st_hlen_over_limit", st_file(ok, data, hlen=200 << 20), "header length 200 MB (over the 100 MB limit)"),
        ("st_hlen_past_eof", st_file(ok, data, hlen=4096), "header length past the end of the file"),
        ("st_trunc_header", st_file(ok, data)[:20], "file cut inside the JSON header"),
        ("st_trunc_header_len", st_file(json.dumps(ok)[:15]), "header length matches a JSON text cut short"),
        ("st_trunc_data", st_file(ok, data[:7]), "data section shorter than the tensor's offsets"),
        ("st_not_json", st_file("hello, safetensors"), "header is not JSON"),
        ("st_header_spaces", st_file(" " * 64), "header of spaces only"),
        ("st_header_nul", st_file(b"\x00" * 32), "header of NUL bytes"),
        ("st_root_array", st_file("[1,2,3]"), "header is a JSON array"),
        ("st_root_string", st_file('"x"'), "header is a JSON string"),
        ("st_deep_nesting", st_file('{"a":' + nested(100000) + "}"), "JSON nested 100000 deep"),
        ("st_deep_object", st_file('{"a":' + '{"b":' * 5000 + "1" + "}" * 5001), "objects nested 5000 deep"),
        ("st_invalid_utf8_key", st_file(b'{"\xff\xfe\xc0":' + json.dumps(ok["a"]).encode() + b"}", data),
         "tensor name with invalid UTF-8 bytes"),
        ("st_dtype_unknown", st_file({"a": tensor("Q4_K", [4], 0, 16)}, data), "unknown dtype Q4_K"),
        ("st_dtype_number", st_file('{"a":{"dtype":4,"shape":[4],"data_offsets":[0,16]}}', data),
         "dtype is a number"),
        ("st_dtype_missing", st_file('{"a":{"shape":[4],"data_offsets":[0,16]}}', data), "dtype missing"),
        ("st_shape_negative", st_file({"a": tensor("F32", [-1, -4], 0, 16)}, data), "negative dimensions"),
        ("st_shape_float", st_file('{"a":{"dtype":"F32","shape":[1.5,2],"data_offsets":[0,16]}}', data),
         "fractional dimension"),
        ("st_shape_string", st_file({"a": tensor("F32", ["4"], 0, 16)}, data), "dimension given as a string"),
        ("st_shape_not_list", st_file('{"a":{"dtype":"F32","shape":4,"data_offsets":[0,16]}}', data),
         "shape is not a list"),
        ("st_shape_overflow", st_file({"a": tensor("F32", [2**32, 2**32, 2**32], 0, 16)}, data),
         "element count 2^96 overflows 64 bits"),
        ("st_shape_bytes_overflow", st_file({"a": tensor("F64", [2**31, 2**31, 4], 0, 16)}, data),
         "element count fits 64 bits but bytes (x8) do not"),
        ("st_shape_beyond_2p53", st_file('{"a":{"dtype":"U8","shape":[18446744073709551617],'
                                         '"data_offsets":[0,16]}}', data), "dimension 2^64+1"),
        ("st_shape_1e308", st_file('{"a":{"dtype":"U8","shape":[1e308,1e308],"data_offsets":[0,16]}}', data),
         "dimensions 1e308 (infinite product)"),
        ("st_shape_9_dims", st_file({"a": tensor("U8", [1] * 9, 0, 1)}, b"\x00"), "9 dimensions"),
        ("st_offsets_reversed", st_file({"a": tensor("F32", [4], 16, 0)}, data), "end offset before begin"),
        ("st_offsets_past_end", st_file({"a": tensor("F32", [4], 1 << 40, (1 << 40) + 16)}, data),
         "offsets 1 TB into a 16-byte data section"),
        ("st_offsets_u64_wrap", st_file('{"a":{"dtype":"F32","shape":[4],'
                                        '"data_offsets":[18446744073709551608,8]}}', data),
         "begin near 2^64 so that begin+size wraps"),
        ("st_offsets_negative", st_file({"a": tensor("F32", [4], -16, 0)}, data), "negative offsets"),
        ("st_offsets_three", st_file('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,8,16]}}', data),
         "three data_offsets"),
        ("st_offsets_strings", st_file('{"a":{"dtype":"F32","shape":[4],"data_offsets":["0","16"]}}', data),
         "data_offsets as strings"),
        ("st_size_mismatch", st_file({"a": tensor("F32", [2, 2], 0, 8)}, data), "F32 [2,2] in an 8-byte span"),
        ("st_overlap", st_file({"a": tensor("F32", [4], 0, 16), "b": tensor("F32", [4], 8, 24)}, f32(6)),
         "two tensors overlapping by 8 bytes"),
        ("st_alias_same_span", st_file({"a": tensor("F32", [4], 0, 16), "b": tensor("F32", [2, 2], 0, 16)}, data),
         "two tensors aliasing the same bytes"),
        ("st_alias_behind_empty", st_file({"a": tensor("F32", [4], 0, 16), "e": tensor("F32", [0], 4, 4),
                                           "b": tensor("F32", [1], 8, 12)}, data),
         "a tensor inside another, hidden from the neighbour check by an empty tensor between them"),
        ("st_duplicate_name", st_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                                      '"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', data),
         "the same tensor name twice"),
        ("st_duplicate_metadata", st_file('{"__metadata__":{"a":"1","b":"2","c":"3"},'
                                          '"__metadata__":{},"t":{"dtype":"F32","shape":[4],'
                                          '"data_offsets":[0,16]}}', data),
         "__metadata__ twice (3 entries, then none)"),
        ("st_duplicate_metadata_grow", st_file('{"__metadata__":{"a":"1"},"__metadata__":{"b":"2"},'
                                               '"__metadata__":{"c":"3"},"__metadata__":{"d":"4"}}'),
         "__metadata__ four times, one entry each"),
        ("st_metadata_not_object", st_file({"__metadata__": [1, 2], "a": ok["a"]}, data), "__metadata__ is a list"),
        ("st_metadata_value_object", st_file({"__metadata__": {"format": {"x": 1}}, "a": ok["a"]}, data),
         "__metadata__ value is an object"),
        ("st_entry_not_object", st_file({"a": [1, 2, 3]}, data), "tensor entry is a list"),
        ("st_name_control_chars", st_file({"bad\nname\x1b[31m": tensor("F32", [5], 0, 16)}, data),
         "tensor name with a newline and an escape sequence (and a size mismatch)"),
    ]
    for cid, blob, why in cases:
        rel = "safetensors/%s.safetensors" % cid[3:]
        c.write(rel, blob)
        c.add(cid, "safetensors", rel, why, "info", os.path.basename(rel), lib="st_open")

    # many tensors: fine for the format, a performance trap for quadratic code
    many = {"t%06d" % i: tensor("F32", [0], 0, 0) for i in range(60000)}
    many["t999999"] = tensor("F32", [3], 0, 16)  # and one bad entry at the end
    c.write("safetensors/many_tensors.safetensors", st_file(many, data))
    c.add("st_many_tensors", "safetensors", "safetensors/many_tensors.safetensors",
          "60001 tensors, the last one mis-sized", "info", "many_tensors.safetensors", lib="st_open")

    # an empty tensor with an absurd dimension is valid safetensors; a model must still refuse it
    zeros = {"model.diffusion_model.input_blocks.0.0.weight": tensor("F32", [0, 2**40, 3, 3], 0, 0)}
    c.write("safetensors/absurd_empty_dims.safetensors", st_file(zeros))
    c.add("st_absurd_empty_dims", "safetensors", "safetensors/absurd_empty_dims.safetensors",
          "a zero-element conv_in with a 2^40-wide dimension and nothing else", "info",
          "absurd_empty_dims.safetensors")


# ---------------------------------------------------------------- model folders

def link_tree(c, src_dir, rel_dir, overrides):
    """Mirrors src_dir at rel_dir with symlinks, except the overridden files:
    bytes/str -> written, None -> left out, ("fifo",), ("symlink", target), ("dir",)."""
    for root, dirs, files in os.walk(src_dir):
        dirs.sort()
        sub = os.path.relpath(root, src_dir)
        for name in sorted(files):
            rel = os.path.normpath(os.path.join(sub, name))
            dst = c.path(os.path.join(rel_dir, rel))
            if rel in overrides:
                continue
            os.symlink(os.path.abspath(os.path.join(root, name)), dst)
    for rel, v in sorted(overrides.items()):
        if v is None:
            continue
        dst = c.path(os.path.join(rel_dir, rel))
        if isinstance(v, tuple):
            if v[0] == "fifo":
                os.mkfifo(dst)
            elif v[0] == "symlink":
                os.symlink(v[1], dst)
            elif v[0] == "dir":
                os.makedirs(dst)
        else:
            c.write(os.path.join(rel_dir, rel), v)


def patched_weights(path, fn):
    """Reads a fixture safetensors, lets fn(header, data: bytearray) change it, returns the bytes."""
    header, data = st_read(path)
    data = bytearray(data)
    fn(header, data)
    return st_file(header, bytes(data))


def fill(header, data, name, value):
    t = header[name]
    b, e = t["data_offsets"]
    assert t["dtype"] == "F32"
    data[b:e] = struct.pack("<f", value) * ((e - b) // 4)


def gen_models(c):
    src = c.fixture("tiny-sd15")
    if not src:
        return
    unet_w = os.path.join(src, "unet/diffusion_pytorch_model.safetensors")
    te_w = os.path.join(src, "text_encoder/model.safetensors")
    vae_w = os.path.join(src, "vae/diffusion_pytorch_model.safetensors")
    with open(os.path.join(src, "unet/config.json")) as f:
        unet_cfg = json.load(f)

    def unet_cfg_with(**kw):
        d = dict(unet_cfg)
        d.update(kw)
        return json.dumps(d, indent=1)

    def alias(h, d):
        h["conv_in.bias"]["data_offsets"] = list(h["conv_norm_out.bias"]["data_offsets"])

    def wrong_dtype(h, d):
        h["text_model.final_layer_norm.weight"]["dtype"] = "I32"

    with open(unet_w, "rb") as f:
        unet_raw = f.read()

    # (id, overrides, drive, names, lib, lib target, why)
    cases = [
        ("model_index_not_json", {"model_index.json": "{\"unet\": [\"diffusers\", "}, "info",
         "model_index.json", "json", "model_index.json", "model_index.json is cut short"),
        ("model_index_array", {"model_index.json": "[]"}, "info", "model_index.json", "json",
         "model_index.json", "model_index.json is a list"),
        ("model_index_deep", {"model_index.json": '{"unet":' + nested(200000) + "}"}, "info",
         "model_index.json", "json", "model_index.json", "model_index.json nested 200000 deep"),
        ("unet_config_not_json", {"unet/config.json": "{\"block_out_channels\": [32, 32,"}, "info",
         "config.json", "json", "unet/config.json", "unet/config.json is cut short"),
        ("unet_config_deep", {"unet/config.json": '{"block_out_channels":' + nested(5000) + "}"}, "info",
         "config.json", "json", "unet/config.json", "unet/config.json nested 5000 deep"),
        ("unet_config_invalid_utf8", {"unet/config.json": b'{"act_fn": "\xff\xfe silu"}'}, "generate",
         "config.json", "unet_config", "unet/config.json", "invalid UTF-8 in a config string"),
        ("unet_config_fifo", {"unet/config.json": ("fifo",)}, "info", "config.json", None, None,
         "unet/config.json is a named pipe (opening it blocks)"),
        ("unet_config_dev_zero", {"unet/config.json": ("symlink", "/dev/zero")}, "info", "config.json", "json",
         "unet/config.json", "unet/config.json is a symlink to /dev/zero"),
        ("unet_config_loop", {"unet/config.json": ("symlink", "config.json")}, "info", "config.json", "json",
         "unet/config.json", "unet/config.json is a symlink to itself"),
        ("unet_config_is_dir", {"unet/config.json": ("dir",)}, "info", "config.json", "json",
         "unet/config.json", "unet/config.json is a directory"),
        ("unet_config_wrong_type", {"unet/config.json": unet_cfg_with(block_out_channels="wide")}, "generate",
         "config.json", "unet_config", "unet/config.json", "block_out_channels is a string"),
        ("unet_config_huge_channels", {"unet/config.json": unet_cfg_with(block_out_channels=[2147483632] * 4)},
         "generate", "config.json", None, None, "block_out_channels 2^31-16 (huge allocations if trusted)"),
        ("unet_config_zero_levels", {"unet/config.json": unet_cfg_with(block_out_channels=[],
                                                                       down_block_types=[], up_block_types=[])},
         "generate", "unet/", None, None, "no levels at all"),
        ("unet_config_nan", {"unet/config.json": unet_cfg_with(norm_eps=float("nan"))}, "generate",
         "config.json", "unet_config", "unet/config.json", "norm_eps is NaN (Python's json writes NaN)"),
        ("unet_config_missing_keys", {"unet/config.json": "{}"}, "generate", "unet", None, None,
         "empty UNet config: diffusers' defaults (320..1280 channels) do not match the weights"),
        ("vae_config_wrong_type", {"vae/config.json": json.dumps({"latent_channels": True,
                                                                  "block_out_channels": {"a": 1}})},
         "generate", "config.json", "vae_config", "vae/config.json", "VAE config with wrong types"),
        ("text_encoder_config_array", {"text_encoder/config.json": "[]"}, "info", "config.json", "json",
         "text_encoder/config.json", "text_encoder/config.json is a list"),
        ("text_encoder_config_heads", {"text_encoder/config.json": json.dumps(
            {"hidden_size": 32, "num_attention_heads": 0, "intermediate_size": 128, "num_hidden_layers": 4})},
         "generate", "config.json", "clip_config", "text_encoder/config.json", "0 attention heads"),
        ("scheduler_config_not_json", {"scheduler/scheduler_config.json": "beta_start = 0.00085"}, "info",
         "scheduler_config.json", "json", "scheduler/scheduler_config.json", "scheduler config is not JSON"),
        ("unet_weights_missing", {"unet/diffusion_pytorch_model.safetensors": None,
                                  "unet/diffusion_pytorch_model.fp16.safetensors": None}, "info", "unet", None,
         None, "the unet folder has no weights file"),
        ("unet_weights_empty", {"unet/diffusion_pytorch_model.safetensors": b""}, "info",
         "diffusion_pytorch_model.safetensors", "st_open", "unet/diffusion_pytorch_model.safetensors",
         "unet weights file is empty"),
        ("unet_weights_truncated", {"unet/diffusion_pytorch_model.safetensors": unet_raw[:len(unet_raw) // 2]},
         "info", "diffusion_pytorch_model.safetensors", "st_open", "unet/diffusion_pytorch_model.safetensors",
         "unet weights cut in half"),
        ("unet_weights_aliasing", {"unet/diffusion_pytorch_model.safetensors": patched_weights(unet_w, alias)},
         "info", "diffusion_pytorch_model.safetensors", "st_open", "unet/diffusion_pytorch_model.safetensors",
         "conv_in.bias points at conv_norm_out.bias's bytes"),
        ("unet_weights_fifo", {"unet/diffusion_pytorch_model.safetensors": ("fifo",)}, "info",
         "diffusion_pytorch_model.safetensors", None, None, "unet weights file is a named pipe"),
        ("unet_weights_dev_zero", {"unet/diffusion_pytorch_model.safetensors": ("symlink", "/dev/zero")},
         "info", "diffusion_pytorch_model.safetensors", "st_open", "unet/diffusion_pytorch_model.safetensors",
         "unet weights file is a symlink to /dev/zero"),
        ("unet_sharded_bad_index", {"unet/diffusion_pytorch_model.safetensors": None,
                                    "unet/diffusion_pytorch_model.fp16.safetensors": None,
                                    "unet/diffusion_pytorch_model.safetensors.index.json": json.dumps(
                                        {"weight_map": {"conv_in.weight": "../../../../etc/passwd",
                                                        "conv_in.bias": "missing-00001-of-00002.safetensors"}})},
         "info", "index.json", None, None, "sharded index naming a file outside the folder and a missing shard"),
        ("unet_weights_nan", {"unet/diffusion_pytorch_model.safetensors": patched_weights(
            unet_w, lambda h, d: fill(h, d, "conv_in.weight", float("nan")))}, "generate", "UNet", None, None,
         "NaN in the UNet's conv_in weights: sampling must stop with the step and module"),
        ("vae_weights_inf", {"vae/diffusion_pytorch_model.safetensors": patched_weights(
            vae_w, lambda h, d: fill(h, d, "decoder.conv_in.weight", float("inf")))}, "generate", "vae", None,
         None, "+Inf in the VAE decoder's conv_in weights: the decoded image is not finite"),
        ("text_encoder_weights_nan", {"text_encoder/model.safetensors": patched_weights(
            te_w, lambda h, d: fill(h, d, "text_model.embeddings.position_embedding.weight", float("nan")))},
         "generate", "NaN", None, None, "NaN position embeddings: every text hidden state is NaN"),
        ("text_encoder_wrong_dtype", {"text_encoder/model.safetensors": patched_weights(te_w, wrong_dtype)},
         "generate", "final_layer_norm", None, None, "a float weight stored with dtype I32"),
        ("tokenizer_vocab_not_json", {"tokenizer/vocab.json": '{"a</w>": 1, "b</w>": '}, "generate",
         "vocab.json", "json", "tokenizer/vocab.json", "vocab.json cut short"),
        ("tokenizer_vocab_bad_ids", {"tokenizer/vocab.json": json.dumps(
            {"<|startoftext|>": 49406, "<|endoftext|>": 2**31, "a</w>": -1, "b</w>": 1.5})}, "generate",
         "vocab.json", None, None, "vocab ids beyond int32, negative and fractional"),
        ("tokenizer_vocab_no_specials", {"tokenizer/vocab.json": json.dumps({"a</w>": 0, "b</w>": 1})},
         "generate", "vocab.json", None, None, "a vocabulary without <|startoftext|> / <|endoftext|>"),
        ("tokenizer_merges_binary", {"tokenizer/merges.txt": b"#version: 0.2\n" + bytes(range(1, 256)) * 40},
         "generate", "merges.txt", None, None, "merges.txt of binary bytes"),
        ("tokenizer_merges_long_line", {"tokenizer/merges.txt": "#version: 0.2\n" + "a" * 100000 + " b\n"},
         "generate", "merges.txt", None, None, "a 100000-byte merge symbol"),
        ("tokenizer_special_map_wrong", {"tokenizer/special_tokens_map.json": json.dumps(
            {"bos_token": {"content": ["<|startoftext|>"]}, "eos_token": 7})}, "generate",
         "special_tokens_map.json", None, None, "special tokens of the wrong types"),
        ("tokenizer_missing", {"tokenizer/vocab.json": None, "tokenizer/merges.txt": None}, "info", "tokenizer",
         None, None, "a tokenizer folder without vocab.json and merges.txt"),
    ]
    # neutral folder names, so that a message naming the folder does not
    # satisfy `names` by accident
    for i, (cid, overrides, drive, names, lib, target, why) in enumerate(cases):
        rel = "models/m%02d" % i
        link_tree(c, src, rel, overrides)
        c.add(cid, "model", rel, why, drive, names, lib=lib,
              target=(rel + "/" + target) if target else None,
              timeout=5 if "fifo" in cid else 20)
        if not lib:
            c.cases[-1]["target"] = None


# ---------------------------------------------------------------- LDM yaml

def gen_ldm_yaml(c):
    ckpt = c.fixture("tiny-sd15.safetensors")
    yml = c.fixture("tiny-sd15.yaml")
    if not ckpt or not yml:
        return
    with open(yml, encoding="utf-8") as f:
        good = f.read()
    shared = c.path("ldm/.checkpoint.safetensors")
    shutil.copyfile(ckpt, shared)  # one real copy; every case hard-links it under its own stem

    bomb = ["model: {params: {unet_config: {params: {num_heads: 8}}}}", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        bomb.append("a%d: &a%d [%s]" % (i, i, ", ".join(["*a%d" % (i - 1)] * 9)))
    long_str = "s" * 2000000
    cases = [
        ("ldm_alias_bomb", "\n".join(bomb) + "\n", "billion laughs: 9 levels of 9 aliases (9^10 nodes)"),
        ("ldm_string_alias_bomb", "big: &s \"%s\"\nmodel:\n  params:\n    r: [%s]\n" % (
            long_str, ", ".join(["*s"] * 150000)),
         "a 2 MB string aliased 150000 times (300 GB if copied each time)"),
        ("ldm_recursive_alias", "model: &m\n  params: *m\n", "a mapping containing an alias to itself"),
        ("ldm_deep_flow", "model: " + nested(200000) + "\n", "flow sequences nested 200000 deep"),
        ("ldm_deep_block", "".join("%sk:\n" % (" " * i) for i in range(3000)), "block mappings nested 3000 deep"),
        ("ldm_invalid_utf8", good.encode("utf-8").replace(b"LatentDiffusion", b"Latent\xff\xfeDiffusion"),
         "invalid UTF-8 bytes in a value"),
        ("ldm_top_list", "- model\n- params\n", "top level is a list"),
        ("ldm_empty", "", "empty file"),
        ("ldm_tab_indent", "model:\n\tparams: 1\n", "tab indentation (a YAML syntax error)"),
        ("ldm_python_tag", good.replace("target: ldm.models.diffusion.ddpm.LatentDiffusion",
                                        "target: !!python/object/apply:os.system [\"touch pwned\"]"),
         "a python/object tag (must not be executed, and is not a string)"),
        ("ldm_channel_mult_string", good.replace("channel_mult: [ 1, 2, 4, 4 ]", "channel_mult: wide")
         if "channel_mult: [ 1, 2, 4, 4 ]" in good else good.replace("channel_mult:", "channel_mult: wide\n  x_old:"),
         "channel_mult is a string"),
        ("ldm_int_overflow", "model:\n  params:\n    unet_config:\n      params:\n        model_channels: 1073741824\n"
         "        channel_mult: [1, 2, 4, 4]\n", "model_channels 2^30 x channel_mult 4 overflows int"),
        ("ldm_vae_overflow", good.replace("ddconfig:", "ddconfig:\n        ch: 2147483647\n        ch_mult: [2, 4]\n"
                                          "        ignored_ddconfig:", 1),
         "VAE ch 2^31-1 x ch_mult overflows int"),
        ("ldm_betas_reversed", good.replace("linear_start: 0.00085", "linear_start: 0.5"),
         "linear_start above linear_end"),
        ("ldm_two_docs", good + "\n---\nmodel: {}\n", "two YAML documents (ldm_yaml reads the first only)"),
        ("ldm_huge", "# " + "x" * (17 << 20) + "\n" + good, "17 MB file (over the 16 MB limit)"),
    ]
    for cid, text, why in cases:
        d = "ldm/" + cid
        os.makedirs(c.path(d + "/x"), exist_ok=True)
        os.rmdir(c.path(d + "/x"))
        ck = c.path(d + "/model.safetensors")
        try:
            os.link(shared, ck)
        except OSError:
            os.symlink(shared, ck)
        c.write(d + "/model.yaml", text)
        # memory bombs are only driven through the CLI (under ulimit), never in-process
        c.add(cid, "ldm_yaml", d + "/model.safetensors", why, "info", "model.yaml",
              lib=None if "string_alias" in cid else "ldm_yaml", target=d + "/model.yaml",
              expect="any" if cid == "ldm_two_docs" else "error")


# ---------------------------------------------------------------- SegMoE yaml

def gen_segmoe_yaml(c):
    base = c.fixture("tiny-sd15")
    expert = c.fixture("moe/tiny-sd15-expert")
    if not base or not expert:
        return

    q = json.dumps
    head = "base_model: %s\nnum_experts_per_tok: 1\nmoe_layers: all\ntype: sd\n" % q(base)
    experts = ("experts:\n  - source_model: %s\n    positive_prompt: \"a cat\"\n    negative_prompt: \"\"\n"
               "  - source_model: %s\n    positive_prompt: \"a dog\"\n    negative_prompt: \"\"\n") % (q(base), q(expert))
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        bomb.append("a%d: &a%d [%s]" % (i, i, ", ".join(["*a%d" % (i - 1)] * 9)))
    merge_bomb = ["m0: &m0 {k0: v}"]
    for i in range(1, 20):
        merge_bomb.append("m%d: &m%d {<<: [%s], k%d: v}" % (i, i, ", ".join(["*m%d" % (i - 1)] * 4), i))
    big = "p" * 900000
    cases = [
        ("segmoe_alias_bomb", head + "\n".join(bomb) + "\n" + experts, "billion laughs (9^10 nodes)"),
        ("segmoe_merge_key_bomb", head + "\n".join(merge_bomb) + "\n" + experts,
         "<< merge keys 4-way x 20 levels (valid, but 4^20 work if merged naively)"),
        ("segmoe_string_alias_bomb", head + "big: &s \"%s\"\nr: [%s]\n" % (big, ", ".join(["*s"] * 12000)) + experts,
         "a 900 KB string aliased 12000 times (10 GB if copied)"),
        ("segmoe_recursive_alias", head + "x: &x {y: *x}\n" + experts, "a mapping aliasing itself"),
        ("segmoe_deep_nesting", head + "x: " + nested(100000) + "\n" + experts, "nested 100000 deep"),
        ("segmoe_invalid_utf8", (head + experts).encode("utf-8").replace(b"a cat", b"a \xc3\x28 cat \xed\xa0\x80"),
         "invalid UTF-8 (and an encoded surrogate) in a prompt"),
        ("segmoe_missing_base", "num_experts_per_tok: 1\n" + experts, "base_model missing"),
        ("segmoe_missing_experts", head, "experts missing"),
        ("segmoe_experts_not_list", head + "experts: {source_model: x}\n", "experts is a mapping"),
        ("segmoe_experts_empty", head + "experts: []\n", "no experts"),
        ("segmoe_top_k_zero", head.replace("num_experts_per_tok: 1", "num_experts_per_tok: 0") + experts,
         "num_experts_per_tok 0"),
        ("segmoe_top_k_huge", head.replace("num_experts_per_tok: 1", "num_experts_per_tok: 99999999999999999999")
         + experts, "num_experts_per_tok beyond every integer type"),
        ("segmoe_moe_layers_bogus", head.replace("moe_layers: all", "moe_layers: everything") + experts,
         "moe_layers is not ff/attn/all"),
        ("segmoe_prompt_not_string", head + experts.replace("\"a cat\"", "[1, 2]"), "a prompt that is a list"),
        ("segmoe_expert_missing_path", head + experts.replace(q(expert), q(expert + "-does-not-exist")),
         "an expert folder that does not exist"),
        ("segmoe_expert_hub_id", head + experts.replace(q(expert), "runwayml/stable-diffusion-v1-5"),
         "an expert given as a Hugging Face hub id (no network)"),
        ("segmoe_expert_url", head + experts.replace(q(expert), "https://example.com/model.safetensors"),
         "an expert given as a URL"),
        ("segmoe_two_docs", head + experts + "---\n" + head + experts, "two YAML documents"),
        ("segmoe_top_list", "- " + q(base) + "\n", "top level is a list"),
        ("segmoe_huge", "# " + "x" * (2 << 20) + "\n" + head + experts, "2 MB file (over the 1 MB limit)"),
        ("segmoe_python_tag", head.replace("type: sd", "type: !!python/object/apply:os.system [\"touch pwned\"]")
         + experts, "a python/object tag"),
        ("segmoe_null_bytes", (head + experts).replace("a dog", "a\x00dog"), "a NUL byte inside a prompt"),
    ]
    if c.want("model") and os.path.isdir(c.path("models/unet_config_not_json")):
        cases.append(("segmoe_expert_broken_model",
                      head + experts.replace(q(expert), q(os.path.abspath(c.path("models/unet_config_not_json")))),
                      "an expert folder whose unet/config.json is not JSON"))
    for cid, text, why in cases:
        rel = "segmoe/%s.yaml" % cid[len("segmoe_"):]
        c.write(rel, text)
        names = "config.json" if cid == "segmoe_expert_broken_model" else os.path.basename(rel)
        # a valid config (the merge-key case) would really be merged: library tier only
        c.add(cid, "segmoe_yaml", rel, why, None if cid == "segmoe_merge_key_bomb" else "merge", names,
              lib=None if cid == "segmoe_expert_broken_model" or "string_alias" in cid else "segmoe_yaml",
              expect="any" if cid == "segmoe_merge_key_bomb" else "error")


# ---------------------------------------------------------------- jobs files

def gen_jobs(c):
    cases = [
        ("jobs_invalid_json", '{"prompt": "a cat",\n{"prompt": }\n{{{{\n', "every line is broken JSON"),
        ("jobs_deep_nesting", '{"prompt": "a", "x": ' + nested(100000) + "}\n", "a line nested 100000 deep"),
        ("jobs_wrong_types", '{"prompt": 42}\n{"prompt": "a", "seed": "x"}\n{"prompt": "a", "steps": [1]}\n',
         "prompt/seed/steps of the wrong types"),
        ("jobs_bad_values", '{"prompt": "a", "width": 123}\n{"prompt": "a", "steps": -5}\n'
         '{"prompt": "a", "sampler": "warp-drive"}\n{"prompt": "a", "cfg_scale": 1e999}\n',
         "size not a multiple of 8, negative steps, unknown sampler, infinite cfg"),
        ("jobs_huge_values", '{"prompt": "a", "width": 4294967296, "height": 4294967296}\n'
         '{"prompt": "a", "steps": 1e300}\n{"prompt": "a", "count": -1}\n',
         "sizes and counts overflowing int"),
        ("jobs_invalid_utf8", b'{"prompt": "\xff\xfe\xfd"}\n\xc0\xaf\n', "invalid UTF-8 in and outside JSON"),
        ("jobs_binary", bytes(range(256)) * 64, "binary garbage"),
        ("jobs_name_traversal", '{"prompt": "a", "name": "../escaped-by-name"}\n'
         '{"prompt": "a", "name": "sub/../../escaped-2"}\n',
         "output names escaping the output folder (may be refused or sanitised: nothing outside it)"),
    ]
    for cid, text, why in cases:
        rel = "jobs/%s.jsonl" % cid[len("jobs_"):]
        c.write(rel, text)
        c.add(cid, "jobs", rel, why, "batch", os.path.basename(rel),
              expect="any" if cid == "jobs_name_traversal" else "error")


# ---------------------------------------------------------------- images

def png_chunk(kind, data, crc=None):
    c = zlib.crc32(kind + data) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", c)


def png(w, h, rows=None, color=2, depth=8, extra=b"", idat=None, ihdr_len=None):
    sig = b"\x89PNG\r\n\x1a\n"
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    if idat is None:
        raw = rows if rows is not None else b"".join(b"\x00" + b"\x80" * (3 * w) for _ in range(h))
        idat = zlib.compress(raw)
    out = sig + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    if ihdr_len is not None:
        out = sig + struct.pack(">I", ihdr_len) + out[12:]
    return out


# Baseline JPEG building blocks (ITU T.81 Annex K tables), enough for an
# image whose 8x8 blocks are all flat grey: DC difference 0, then EOB.
_DC_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
_DC_VALS = list(range(12))
_AC_BITS = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D]
_AC_VALS = bytes.fromhex(
    "01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a"
    "3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a929394"
    "95969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8"
    "e9eaf1f2f3f4f5f6f7f8f9fa")


def jpeg(w, h, ncomp=1, scan=None, sof_override=None):
    def seg(marker, body):
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body

    out = b"\xff\xd8"
    out += seg(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    out += seg(0xDB, b"\x00" + bytes([1] * 64))
    comps = b"".join(bytes([i + 1, 0x11, 0]) for i in range(ncomp))
    sof = struct.pack(">BHHB", 8, h, w, ncomp) + comps
    out += seg(0xC0, sof_override if sof_override is not None else sof)
    out += seg(0xC4, b"\x00" + bytes(_DC_BITS) + bytes(_DC_VALS))
    out += seg(0xC4, b"\x10" + bytes(_AC_BITS) + _AC_VALS)
    out += seg(0xDA, bytes([ncomp]) + b"".join(bytes([i + 1, 0x00]) for i in range(ncomp)) + b"\x00\x3f\x00")
    if scan is None:
        # per block: DC category 0 ("00"), AC EOB ("1010"): 6 bits
        nblocks = ((w + 7) // 8) * ((h + 7) // 8) * ncomp
        bits = "001010" * nblocks
        bits += "1" * (-len(bits) % 8)
        scan = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
    return out + scan + b"\xff\xd9"


def gen_images(c):
    good_png = png(8, 8)
    good_jpg = jpeg(16, 16, 3)
    c.write("images/good.png", good_png)  # seeds for the fuzzer, not cases
    c.write("images/good.jpg", good_jpg)
    c.write("images/good_gray.jpg", jpeg(8, 8, 1))
    text = png_chunk(b"tEXt", b"parameters\x00a cat\nSteps: 20")
    cases = [
        ("img_png_truncated", good_png[:40], "PNG cut inside IDAT"),
        ("img_png_no_palette", png(8, 8, color=3, depth=8, rows=b"\x00" * 72), "palette image without PLTE"),
        ("img_png_over_limit", png(16385, 16384, idat=zlib.compress(b"\x00" * 64)),
         "16385 x 16384 pixels (over SD_IMAGE_MAX_PIXELS) with 64 bytes of data"),
        ("img_png_max_dims", png(0x7FFFFFFF, 0x7FFFFFFF, idat=b""), "2^31-1 x 2^31-1 pixels"),
        ("img_png_zero_width", png(0, 8, idat=zlib.compress(b"\x00" * 8)), "zero width"),
        ("img_png_bad_depth", png(8, 8, depth=7), "bit depth 7"),
        ("img_png_bad_color", png(8, 8, color=5), "colour type 5"),
        ("img_png_no_idat", b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
         + png_chunk(b"IEND", b""), "no IDAT chunk"),
        ("img_png_short_idat", png(64, 64, idat=zlib.compress(b"\x00" * 10)), "IDAT holds 10 of 12352 bytes"),
        ("img_png_zlib_garbage", png(8, 8, idat=b"\x78\x9c" + bytes(range(200))), "IDAT is not zlib data"),
        ("img_png_huge_chunk_len", png(8, 8, ihdr_len=0xFFFFFFF0), "IHDR length field 4 GB"),
        ("img_png_signature_only", b"\x89PNG\r\n\x1a\n", "signature and nothing else"),
        ("img_png_text_after_trunc", png(8, 8, extra=text)[:-20], "text chunk, then the file ends inside IDAT"),
        ("img_jpeg_truncated", good_jpg[:len(good_jpg) // 2], "JPEG cut in the middle of its tables"),
        ("img_jpeg_huge_dims", jpeg(65535, 65535, 3, scan=b"\x00" * 16), "65535 x 65535 JPEG with 16 bytes of scan"),
        ("img_jpeg_zero_dims", jpeg(0, 0, 3), "0 x 0 JPEG"),
        ("img_jpeg_bad_sof", jpeg(8, 8, 3, sof_override=b"\x08\x00\x08\x00\x08\x09" + b"\x01\x11\x00" * 9),
         "a SOF claiming 9 components"),
        ("img_jpeg_soi_only", b"\xff\xd8\xff", "SOI and nothing else"),
        ("img_jpeg_garbage", b"\xff\xd8\xff" + bytes(range(256)) * 8, "garbage after SOI"),
        ("img_gif_as_png", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "a GIF (neither PNG nor JPEG)"),
        ("img_empty", b"", "0-byte file"),
    ]
    # ancillary-chunk damage that readers may skip: must only stay harmless
    benign = [
        ("img_png_text_no_nul", png(8, 8, extra=png_chunk(b"tEXt", b"parameters" * 100)),
         "a tEXt chunk without a keyword terminator"),
        ("img_png_ztxt_bomb", png(8, 8, extra=png_chunk(b"zTXt", b"parameters\x00\x00" +
                                                         zlib.compress(b"A" * (64 << 20), 9))),
         "a zTXt chunk inflating to 64 MB"),
        ("img_png_itxt_bad_utf8", png(8, 8, extra=png_chunk(b"iTXt", b"parameters\x00\x00\x00\x00\x00\xff\xfe\xc0")),
         "an iTXt chunk with invalid UTF-8"),
        ("img_png_bad_crc_text", png(8, 8, extra=png_chunk(b"tEXt", b"k\x00v", crc=0xDEADBEEF)),
         "an ancillary chunk with a bad CRC"),
    ]
    for group, expect in ((cases, "error"), (benign, "any")):
        for cid, blob, why in group:
            ext = ".jpg" if "jpeg" in cid else ".png"
            rel = "images/%s%s" % (cid[len("img_"):], ext)
            c.write(rel, blob)
            c.add(cid, "image", rel, why, None, os.path.basename(rel), lib="image", expect=expect)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output folder (created; must be empty or absent)")
    ap.add_argument("--fixtures", default=None, help="fixtures folder (default $SDMOE_FIXTURES or ../shared/fixtures)")
    ap.add_argument("--only", default="", help="comma-separated formats to generate (default all): " + ",".join(FORMATS))
    a = ap.parse_args()
    fx = a.fixtures or os.environ.get("SDMOE_FIXTURES") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "fixtures")
    fx = os.path.abspath(fx) if os.path.isdir(fx) else None
    only = set(x for x in a.only.split(",") if x)
    bad = only - set(FORMATS)
    if bad:
        ap.error("unknown format(s): " + ", ".join(sorted(bad)))
    if os.path.exists(a.out) and os.listdir(a.out):
        ap.error("%s exists and is not empty" % a.out)
    os.makedirs(a.out, exist_ok=True)
    c = Corpus(os.path.abspath(a.out), fx, only)
    for fmt, gen in (("safetensors", gen_safetensors), ("model", gen_models), ("ldm_yaml", gen_ldm_yaml),
                     ("segmoe_yaml", gen_segmoe_yaml), ("jobs", gen_jobs), ("image", gen_images)):
        if c.want(fmt):
            gen(c)
    with open(os.path.join(c.out, "manifest.json"), "w") as f:
        json.dump({"fixtures": fx, "cases": c.cases}, f, indent=1)
    print("%d hostile cases in %s%s" % (len(c.cases), a.out, "" if fx else " (no fixtures: model cases left out)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
