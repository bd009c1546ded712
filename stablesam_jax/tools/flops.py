"""FLOP counts of SAM's image encoder and vendor peak figures, for the benchmarks' share of peak."""

from __future__ import annotations

# Dense peak TFLOP/s per device, (16-bit tensor cores, float32 without TF32): vendor figures.
# Device kinds are matched by substring, first match wins (so "H100 PCIe" before "H100").
PEAK_TFLOPS = (
    ("H100 PCIe", (756.0, 51.0)),
    ("H100 NVL", (835.0, 60.0)),
    ("H100", (989.0, 67.0)),
    ("H200", (989.0, 67.0)),
    ("GH200", (989.0, 67.0)),
    ("A100", (312.0, 19.5)),
    ("L4", (121.0, 30.3)),
)


def encoder_flops(config, *, windowed_projection_on_padding: bool = True) -> float:
    """FLOPs (2 x multiply-adds) of one image through SAM's image encoder, as the official
    algorithm computes it: the model's cost, independent of how an implementation runs it.

    windowed_projection_on_padding: the official code projects qkv and output of padded window
    tokens too; False counts what the fast path does (it skips them)."""
    dim = config.encoder_embed_dim
    grid = config.img_size // config.patch_size
    tokens = grid * grid
    window = config.window_size
    padded_side = -(-grid // window) * window
    head_dim = dim // config.encoder_num_heads
    heads = config.encoder_num_heads
    mlp = 4 * dim

    def attention(n_tokens_per_seq: int, n_seqs: int, side: int) -> float:
        qk_and_pv = 2 * 2 * n_tokens_per_seq * n_tokens_per_seq * head_dim * heads
        rel_pos = 2 * n_tokens_per_seq * (2 * side) * head_dim * heads
        return n_seqs * (qk_and_pv + rel_pos)

    total = 2 * tokens * (config.patch_size**2 * 3) * dim  # patch embedding
    for i in range(config.encoder_depth):
        if i in config.encoder_global_attn_indexes:
            projected = tokens
            total += attention(tokens, 1, grid)
        else:
            projected = padded_side**2 if windowed_projection_on_padding else tokens
            total += attention(window * window, (padded_side // window) ** 2, window)
        total += 2 * projected * dim * (3 * dim + dim)  # qkv, proj
        total += 2 * tokens * dim * mlp * 2  # MLP
    out = config.prompt_embed_dim
    total += 2 * tokens * dim * out + 2 * tokens * out * out * 9  # neck: 1x1 and 3x3 convs
    return float(total)


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    for name, (half, single) in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return half if dtype in ("bfloat16", "float16") else single
    return None
