#!/usr/bin/env python3
"""Build an fp32 ONNX graph (opset 17) of all-MiniLM-L6-v2 from model.safetensors.

usage: build_onnx.py MODEL_DIR OUT

Needs only `onnx` and `numpy` (no PyTorch). The graph does what sentence-transformers does:
BertModel -> mean pooling over attention_mask -> L2 normalisation.

  inputs:  input_ids, attention_mask   int64 [batch, seq]
  output:  sentence_embedding          float32 [batch, hidden]

token_type_ids are always zero for single-sentence inputs, so row 0 of the token type
embeddings is folded in as a constant. Position ids are 0..seq-1 (right padding).
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64}


def read_safetensors(path):
    """8-byte LE header length, JSON header, then raw LE data; offsets count from header end."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        arr = np.frombuffer(raw[base + start : base + end], dtype=DTYPES[meta["dtype"]])
        tensors[name.removeprefix("bert.")] = arr.reshape(meta["shape"]).astype(np.float32)
    return tensors


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, value, name=None, dtype=np.float32):
        name = name or f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type, *inputs, **attrs):
        self.count += 1
        out = f"{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def linear(self, x, w, prefix):
        # torch Linear stores [out, in]; MatMul wants [in, out].
        wt = self.const(w[f"{prefix}.weight"].T.copy(), f"{prefix}.weight_t")
        return self.op("Add", self.op("MatMul", x, wt), self.const(w[f"{prefix}.bias"], f"{prefix}.bias"))

    def layer_norm(self, x, w, prefix, eps):
        scale = self.const(w[f"{prefix}.weight"], f"{prefix}.weight")
        bias = self.const(w[f"{prefix}.bias"], f"{prefix}.bias")
        return self.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=eps)


def build(model_dir, out):
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    w = read_safetensors(model_dir / "model.safetensors")
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim, eps = hidden // heads, float(cfg["layer_norm_eps"])
    assert cfg.get("hidden_act", "gelu") == "gelu", "only exact erf GELU is implemented"

    g = Graph()
    ids, mask = "input_ids", "attention_mask"

    # Embeddings: word + position (0..S-1) + token type row 0, then LayerNorm.
    seq_len = g.op("Gather", g.op("Shape", ids), g.const(1, dtype=np.int64), axis=0)
    positions = g.op("Range", g.const(0, dtype=np.int64), seq_len, g.const(1, dtype=np.int64))
    x = g.op("Gather", g.const(w["embeddings.word_embeddings.weight"], "word_embeddings"), ids)
    x = g.op("Add", x, g.op("Gather", g.const(w["embeddings.position_embeddings.weight"], "position_embeddings"), positions))
    x = g.op("Add", x, g.const(w["embeddings.token_type_embeddings.weight"][0], "token_type_row0"))
    x = g.layer_norm(x, w, "embeddings.LayerNorm", eps)

    # Attention mask -> additive bias [B, 1, 1, S]: 0 where attended, float32 min where padded.
    # Written as the Hugging Face export writes it (Unsqueeze -> Unsqueeze -> Cast -> Sub -> Mul):
    # ONNX Runtime's attention fuser recognises the mask only in that form.
    mask4 = g.op("Unsqueeze", g.op("Unsqueeze", mask, g.const([1], dtype=np.int64)), g.const([2], dtype=np.int64))
    mask4_f = g.op("Cast", mask4, to=TensorProto.FLOAT)
    bias = g.op("Mul", g.op("Sub", g.const(1.0), mask4_f), g.const(np.finfo(np.float32).min))
    mask_f = g.op("Cast", mask, to=TensorProto.FLOAT)

    split_heads = g.const([0, 0, heads, head_dim], "split_heads_shape", np.int64)
    merge_heads = g.const([0, 0, hidden], "merge_heads_shape", np.int64)
    # Scores are divided by sqrt(d) straight after Q.K^T and before the mask is added, and GELU
    # divides by sqrt(2): the forms ONNX Runtime's attention and GELU fusers look for.
    sqrt_d = g.const(np.sqrt(head_dim), "attention_sqrt_d")
    sqrt2, half, one = g.const(np.sqrt(2.0)), g.const(0.5), g.const(1.0)

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        heads_of = lambda name, perm: g.op(
            "Transpose", g.op("Reshape", g.linear(x, w, f"{p}.attention.self.{name}"), split_heads), perm=perm
        )
        q = heads_of("query", [0, 2, 1, 3])  # [B, h, S, d]
        k = heads_of("key", [0, 2, 3, 1])  # [B, h, d, S]
        v = heads_of("value", [0, 2, 1, 3])  # [B, h, S, d]
        scores = g.op("Add", g.op("Div", g.op("MatMul", q, k), sqrt_d), bias)
        ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        ctx = g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3]), merge_heads)
        attn = g.linear(ctx, w, f"{p}.attention.output.dense")
        x = g.layer_norm(g.op("Add", attn, x), w, f"{p}.attention.output.LayerNorm", eps)

        h = g.linear(x, w, f"{p}.intermediate.dense")
        # Exact GELU: h * (1 + erf(h / sqrt 2)) * 0.5; ONNX Runtime fuses this pattern.
        h = g.op("Mul", g.op("Mul", h, g.op("Add", g.op("Erf", g.op("Div", h, sqrt2)), one)), half)
        h = g.linear(h, w, f"{p}.output.dense")
        x = g.layer_norm(g.op("Add", h, x), w, f"{p}.output.LayerNorm", eps)

    # Mean pooling over the mask (counts clamped at 1e-9), then x / max(||x||, 1e-12).
    m3 = g.op("Unsqueeze", mask_f, g.const([2], dtype=np.int64))
    axis1 = g.const([1], dtype=np.int64)
    summed = g.op("ReduceSum", g.op("Mul", x, m3), axis1, keepdims=0)
    counts = g.op("Max", g.op("ReduceSum", m3, axis1, keepdims=0), g.const(1e-9))
    mean = g.op("Div", summed, counts)
    norm = g.op("Max", g.op("ReduceL2", mean, axes=[1], keepdims=1), g.const(1e-12))
    g.nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"]))

    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in (ids, mask)],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pgai-trigger")
    model.ir_version = 8  # the IR version that goes with opset 17; any ONNX Runtime >= 1.10 reads it
    onnx.checker.check_model(model)
    onnx.save(model, out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    build(sys.argv[1], sys.argv[2])
