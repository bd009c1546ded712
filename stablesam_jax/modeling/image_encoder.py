"""SAM's ViT image encoder (`segment_anything/modeling/image_encoder.py`) in Flax NNX, NHWC."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from . import ops
from .common import Conv, LayerNorm, LayerNorm2d, Linear, MLPBlock, gelu, precision_for

# "reference": the official op order, exact in fp32 (parity). The others are the fast path:
# qkv/proj skip window padding, patch embedding is one matmul, the residual stream stays fp32,
# and attention runs through
#   "fast": cuDNN's fused kernel with the relative positions folded into q/k on a GPU for
#           bfloat16/float16 where the head dims fit; elsewhere XLA with the bias added to the
#           logits (no fused kernel exists there, so folding would only add work);
#   "folded": the fold through XLA's jax.nn.dot_product_attention (the fold without a GPU);
#   "folded_cudnn": the fold through cuDNN (an error where cuDNN cannot run it);
#   "bias": XLA attention with the bias added to the logits.
ATTENTION_IMPLS = ("reference", "fast", "folded", "folded_cudnn", "bias")


class Attention(nnx.Module):
    """Multi-head attention with decomposed relative positions (on whole images or windows)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        input_size: tuple[int, int],
        *,
        rngs: nnx.Rngs,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        dtype=None,
        attention_impl: str = "reference",
    ):
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl must be one of {ATTENTION_IMPLS}, got {attention_impl!r}"
            )
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = Linear(dim, dim * 3, rngs=rngs, use_bias=qkv_bias, dtype=dtype)
        self.proj = Linear(dim, dim, rngs=rngs, dtype=dtype)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            # torch zero-initializes these; random values keep a fresh model from hiding bugs.
            self.rel_pos_h = nnx.Param(
                0.02 * jax.random.normal(rngs.params(), (2 * input_size[0] - 1, head_dim))
            )
            self.rel_pos_w = nnx.Param(
                0.02 * jax.random.normal(rngs.params(), (2 * input_size[1] - 1, head_dim))
            )
        self.attention_impl = attention_impl

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, C] tokens of whole images or of windows -> [B, H, W, C]."""
        if self.attention_impl != "reference":
            return self.proj(self.attend(self.qkv(x)))
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each [B, heads, H*W, head_dim]
        rel_h = rel_w = None
        if self.use_rel_pos:
            rel_h, rel_w = ops.decomposed_rel_pos_terms(
                q, self.rel_pos_h[...], self.rel_pos_w[...], (h, w)
            )
        out = ops.attention_with_rel_pos(q, k, v, self.scale, rel_h, rel_w, (h, w))
        out = out.transpose(0, 2, 1, 3).reshape(b, h, w, -1)
        return self.proj(out)

    def backend(self, dtype, hw: tuple[int, int]) -> str:
        """The `ops.rel_pos_attention` backend this module's fast path uses for `hw` tokens."""
        head_dim = self.qkv.kernel.shape[1] // 3 // self.num_heads
        if self.attention_impl == "fast":
            return ops.choose_rel_pos_backend(dtype, head_dim, hw)
        if self.attention_impl == "folded_cudnn":
            limit = ops.cudnn_attention_head_dim_limit()
            needed = ops.folded_head_dim(head_dim, hw)
            if limit == 0 or jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
                raise ValueError(
                    "attention_impl='folded_cudnn' needs an NVIDIA GPU (compute capability "
                    f">= 8.0) and dtype bfloat16 or float16; got {jax.devices()[0].device_kind} "
                    f"and {jnp.dtype(dtype).name}: use attention_impl='fast'"
                )
            if needed > limit:
                raise ValueError(
                    f"folded head dim {needed} exceeds cuDNN's limit {limit} on this GPU: use "
                    "attention_impl='fast'"
                )
            return "cudnn_folded"
        return {"folded": "xla_folded", "bias": "xla_bias"}[self.attention_impl]

    def attend(self, qkv: jax.Array) -> jax.Array:
        """Fast path core: qkv [B, H, W, 3 * dim] (bias included) -> [B, H, W, dim] before
        the output projection."""
        b, h, w, _ = qkv.shape
        qkv = qkv.reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, H*W, heads, head_dim]
        rel_pos_h = self.rel_pos_h[...] if self.use_rel_pos else None
        rel_pos_w = self.rel_pos_w[...] if self.use_rel_pos else None
        backend = self.backend(q.dtype, (h, w))

        def attention(backend: str, max_logits_bytes: int | None = None):
            return lambda q, k, v: ops.rel_pos_attention(
                q, k, v, rel_pos_h, rel_pos_w, (h, w), self.scale, backend, max_logits_bytes
            )

        # Chosen per platform when lowering, not from the tracing host, so one trace exports for
        # any platform: cuDNN's kernel lowers only for CUDA (elsewhere: the same math through
        # XLA), and on a CPU cache-sized pieces of logits pay off (not with a symbolic batch,
        # which cannot be cut into pieces).
        portable = "xla_folded" if backend == "xla_folded" else "xla_bias"
        branches = {}
        if backend == "cudnn_folded":
            branches["cuda"] = attention(backend)
        if portable == "xla_bias" and isinstance(b, int):
            branches["cpu"] = attention(portable, ops.CPU_MAX_LOGITS_BYTES)
        if branches:
            out = jax.lax.platform_dependent(q, k, v, default=attention(portable), **branches)
        else:
            out = attention(portable)(q, k, v)
        return out.reshape(b, h, w, -1)

    def fast_forward(self, x: jax.Array, window_size: int) -> jax.Array:
        """Fast path of a whole block's attention: x [B, H, W, C] normalized tokens (unpadded)
        -> [B, H, W, C], windows of `window_size` (0 = global).

        The official code zero-pads tokens to whole windows before the qkv projection and crops
        after the output projection. A zero token projects to the qkv bias, so projecting the
        unpadded tokens, padding with zeros and then adding the bias gives the same windows
        without projecting padding; the output projection runs after the crop for the same
        reason (for the 64x64 grid and 14-windows: 4096 tokens instead of 4900)."""
        if window_size == 0:
            return self.proj(self.attend(self.qkv(x)))
        h, w = x.shape[1], x.shape[2]
        dtype = self.qkv.dtype or x.dtype
        kernel = self.qkv.kernel[...].astype(dtype)
        qkv = jnp.dot(x.astype(dtype), kernel, precision=precision_for(dtype))
        qkv, padded_hw = ops.window_partition(qkv, window_size)
        if self.qkv.bias is not None:
            qkv = qkv + self.qkv.bias[...].astype(dtype)
        out = self.attend(qkv)
        out = ops.window_unpartition(out, window_size, padded_hw, (h, w))
        return self.proj(out)


class Block(nnx.Module):
    """Pre-norm transformer block; window_size > 0 attends inside non-overlapping windows."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        rngs: nnx.Rngs,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] = (64, 64),
        dtype=None,
        attention_impl: str = "reference",
    ):
        self.norm1 = LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim,
            num_heads,
            input_size if window_size == 0 else (window_size, window_size),
            rngs=rngs,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            dtype=dtype,
            attention_impl=attention_impl,
        )
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), gelu, rngs=rngs, dtype=dtype)
        self.window_size = window_size
        self.dtype = dtype
        self.fast = attention_impl != "reference"

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.fast:
            return self.fast_forward(x)
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, padded_hw = ops.window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = ops.window_unpartition(x, self.window_size, padded_hw, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))

    def fast_forward(self, x: jax.Array) -> jax.Array:
        """The fast path: the residual stream stays float32 (LayerNorm statistics, GELU and the
        additions in float32, fused by XLA into the matmuls' neighbours); matmuls run in the
        compute dtype."""
        dtype = self.dtype or x.dtype
        x = x.astype(jnp.float32)
        x = x + self.attn.fast_forward(self.norm1(x).astype(dtype), self.window_size)
        hidden = self.mlp.lin1(self.norm2(x).astype(dtype))
        hidden = gelu(hidden.astype(jnp.float32)).astype(dtype)
        return x + self.mlp.lin2(hidden)


class PatchEmbed(nnx.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, *, rngs, dtype=None):
        self.proj = Conv(in_chans, embed_dim, patch_size, stride=patch_size, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)  # [B, H, W, 3] -> [B, H/16, W/16, embed_dim]

    def as_matmul(self, x: jax.Array) -> jax.Array:
        """The same patch embedding as one matmul over flattened patches (stride == kernel
        size, no padding, so patches do not overlap): cheaper than a strided conv on CPU."""
        kernel = self.proj.kernel[...]
        p, _, cin, cout = kernel.shape
        b, h, w, c = x.shape
        if c != cin or h % p or w % p:
            raise ValueError(f"input {x.shape} is not a grid of {p}x{p}x{cin} patches")
        dtype = self.proj.dtype or x.dtype
        patches = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(b, h // p, w // p, p * p * c).astype(dtype)
        y = jnp.dot(
            patches, kernel.reshape(p * p * cin, cout).astype(dtype), precision=precision_for(dtype)
        )
        if self.proj.bias is not None:
            y = y + self.proj.bias[...].astype(dtype)
        return y


class ImageEncoderViT(nnx.Module):
    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (),
        dtype=None,
        attention_impl: str = "reference",
        scan_blocks: bool = False,
        early_block: int | None = None,
    ):
        """early_block: append this block's output ([B, 64, 64, embed_dim], the early features
        HQ-SAM's decoder takes) to the output's channels.

        scan_blocks: run the blocks as a `jax.lax.scan` over groups of same-structure blocks
        (weights stacked at call time, stored per block as `blocks.0 ...`): one traced copy of
        each block kind instead of `depth` copies, for GPU compile times that do not grow with
        depth. Stacking copies the block weights once per call. (XLA:CPU compiles the scanned
        encoder more slowly than the unrolled one: leave it off there.)"""
        if early_block is not None and (scan_blocks or not 0 <= early_block < depth):
            raise ValueError(
                f"early_block={early_block} needs 0 <= early_block < depth={depth} and "
                f"scan_blocks=False (a scan keeps no block's output), got scan_blocks={scan_blocks}"
            )
        self.img_size = img_size
        self.dtype = dtype
        self.scan_blocks = scan_blocks
        self.early_block = early_block
        self.fast = attention_impl != "reference"
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, rngs=rngs, dtype=dtype)
        self.pos_embed = (
            nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, grid, grid, embed_dim)))
            if use_abs_pos
            else None
        )
        self.blocks = nnx.List(
            [
                Block(
                    embed_dim,
                    num_heads,
                    rngs=rngs,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    use_rel_pos=use_rel_pos,
                    window_size=0 if i in global_attn_indexes else window_size,
                    input_size=(grid, grid),
                    dtype=dtype,
                    attention_impl=attention_impl,
                )
                for i in range(depth)
            ]
        )
        self.neck = nnx.List(
            [
                Conv(embed_dim, out_chans, 1, use_bias=False, rngs=rngs, dtype=dtype),
                LayerNorm2d(out_chans),
                Conv(out_chans, out_chans, 3, padding=1, use_bias=False, rngs=rngs, dtype=dtype),
                LayerNorm2d(out_chans),
            ]
        )

    def __call__(self, x: jax.Array, *, return_intermediates: bool = False):
        """x: [B, img_size, img_size, 3] normalized pixels -> [B, 64, 64, out_chans] (fp32)."""
        intermediates = {}
        if self.fast:
            x = self.patch_embed.as_matmul(x).astype(jnp.float32)
            if self.pos_embed is not None:
                x = x + self.pos_embed[...]
        else:
            x = self.patch_embed(x)
            if self.pos_embed is not None:
                x = x + self.pos_embed[...].astype(x.dtype)
        intermediates["patch_embed"] = x
        early = None
        if self.scan_blocks and not return_intermediates:
            x = self._scanned_blocks(x)
        else:
            for i, block in enumerate(self.blocks):
                x = block(x)
                if return_intermediates:
                    intermediates[f"block{i}"] = x
                if i == self.early_block:
                    early = x
        for layer in self.neck:
            x = layer(x)
        x = x.astype(jnp.float32)
        intermediates["neck"] = x
        if early is not None:
            x = jnp.concatenate([x, early.astype(jnp.float32)], axis=-1)
        if return_intermediates:
            return x, intermediates
        return x

    def block_pattern(self) -> tuple[int, list[tuple[int, int]]]:
        """(period, runs): the blocks' window sizes repeat every `period` blocks; within one
        period, `runs` lists (start, length) of consecutive blocks of equal structure. SAM's
        sizes: vit_b (window x2, global) x4; vit_l (x5, global) x4; vit_h (x7, global) x4."""
        kinds = [block.window_size for block in self.blocks]
        depth = len(kinds)
        period = next(
            p for p in range(1, depth + 1) if depth % p == 0 and kinds == kinds[:p] * (depth // p)
        )
        runs, start = [], 0
        for i in range(1, period + 1):
            if i == period or kinds[i] != kinds[start]:
                runs.append((start, i - start))
                start = i
        return period, runs

    def _scanned_blocks(self, x: jax.Array) -> jax.Array:
        """The block loop as `lax.scan`s: an outer scan over the repeats of the pattern, inside
        it one scan per run of same-structure blocks. Same math as the loop."""
        period, runs = self.block_pattern()
        repeats = len(self.blocks) // period
        run_graphdefs, run_states = [], []
        for start, length in runs:
            pieces = [
                [nnx.split(self.blocks[g * period + start + i]) for i in range(length)]
                for g in range(repeats)
            ]
            graphdef = pieces[0][0][0]
            if any(gd != graphdef for row in pieces for gd, _ in row):
                raise ValueError("blocks of one run differ in structure; use scan_blocks=False")
            run_graphdefs.append(graphdef)
            # [repeats, length, ...] per weight
            run_states.append(
                jax.tree.map(
                    lambda *leaves, length=length: jnp.stack(leaves).reshape(
                        repeats, length, *leaves[0].shape
                    ),
                    *[state for row in pieces for _, state in row],
                )
            )

        def run_blocks(graphdef, x, states):
            def step(x, state):
                return nnx.merge(graphdef, state)(x), None

            return jax.lax.scan(step, x, states)[0]

        def one_repeat(x, states_of_runs):
            for graphdef, states in zip(run_graphdefs, states_of_runs):
                x = run_blocks(graphdef, x, states)
            return x, None

        return jax.lax.scan(one_repeat, x, run_states)[0]
