"""Gradient rule of the fused Attention op (opset 23+) against float64 central differences and
torch autograd of the op's definition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.gradcheck import check_op

BATCH, S, L, D = 2, 3, 4, 3


def _torch_attention(q, k, v, mask=None, *, scale=None, is_causal=0, softcap=0.0, heads=None):
    """Y of ONNX Attention from its definition (float64 torch)."""
    import torch

    if heads is not None:  # 3-D inputs: [B, S, heads*D] -> [B, heads, S, D]
        hq, hk = heads
        q = q.reshape(q.shape[0], q.shape[1], hq, -1).transpose(1, 2)
        k = k.reshape(k.shape[0], k.shape[1], hk, -1).transpose(1, 2)
        v = v.reshape(v.shape[0], v.shape[1], hk, -1).transpose(1, 2)
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    s = (q @ k.transpose(-1, -2)) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    if is_causal:
        keep = torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool).tril()
        s = s.masked_fill(~keep, float("-inf"))
    y = torch.softmax(s, -1) @ v
    if heads is not None:
        y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
    return y


def _qkv(hq, hk, seed=0, three_d=False):
    rng = np.random.default_rng(seed)
    if three_d:
        return {
            "Q": rng.standard_normal((BATCH, S, hq * D)),
            "K": rng.standard_normal((BATCH, L, hk * D)),
            "V": rng.standard_normal((BATCH, L, hk * D)),
        }
    return {
        "Q": rng.standard_normal((BATCH, hq, S, D)),
        "K": rng.standard_normal((BATCH, hk, L, D)),
        "V": rng.standard_normal((BATCH, hk, L, D)),
    }


@pytest.mark.parametrize("opset", [23, 24, 25])
def test_attention_basic(opset):
    check_op(
        "Attention",
        _qkv(2, 2),
        torch_fn=lambda Q, K, V: _torch_attention(Q, K, V),
        opset=opset,
    )


@pytest.mark.parametrize("causal", [0, 1])
def test_attention_float_mask(causal):
    inputs = _qkv(2, 2)
    inputs["M"] = np.random.default_rng(1).standard_normal((S, L))
    check_op(
        "Attention",
        inputs,
        attrs={"is_causal": causal, "scale": 0.4},
        torch_fn=lambda Q, K, V, M: _torch_attention(Q, K, V, M, scale=0.4, is_causal=causal),
        opset=23,
    )


def test_attention_bool_mask_gqa_causal():
    mask = np.random.default_rng(2).random((BATCH, 1, S, L)) > 0.3
    mask[..., 0] = True  # no fully masked row under the causal mask
    check_op(
        "Attention",
        _qkv(4, 2),
        consts={"M": mask},
        attrs={"is_causal": 1},
        torch_fn=lambda Q, K, V, M: _torch_attention(Q, K, V, M, is_causal=1),
        opset=23,
    )


def test_attention_3d_gqa_softcap():
    check_op(
        "Attention",
        _qkv(2, 1, three_d=True),
        attrs={"q_num_heads": 2, "kv_num_heads": 1, "softcap": 1.5},
        torch_fn=lambda Q, K, V: _torch_attention(Q, K, V, softcap=1.5, heads=(2, 1)),
        opset=23,
    )


@pytest.mark.parametrize("three_d", [False, True])
def test_attention_kv_cache(three_d):
    """past_key/past_value (differentiable) and the present_key/present_value outputs in the
    loss; causal with the cache offset (query i sees keys j <= i + past length)."""
    import torch

    past = 2
    hq, hk = (2, 1) if three_d else (2, 2)
    inputs = _qkv(hq, hk, three_d=three_d)
    rng = np.random.default_rng(4)
    inputs["pk"] = rng.standard_normal((BATCH, hk, past, D))
    inputs["pv"] = rng.standard_normal((BATCH, hk, past, D))
    attrs = {"is_causal": 1}
    if three_d:
        attrs.update(q_num_heads=hq, kv_num_heads=hk)

    def torch_fn(Q, K, V, pk, pv):
        if three_d:
            K = K.reshape(BATCH, L, hk, D).transpose(1, 2)
            V = V.reshape(BATCH, L, hk, D).transpose(1, 2)
        k_all, v_all = torch.cat([pk, K], 2), torch.cat([pv, V], 2)
        keep = torch.ones(S, past + L, dtype=torch.bool).tril(diagonal=past)
        if three_d:
            q = Q.reshape(BATCH, S, hq, D).transpose(1, 2)
            y = _torch_attention(q, k_all, v_all, keep)
            y = y.transpose(1, 2).reshape(BATCH, S, hq * D)
        else:
            y = _torch_attention(Q, k_all, v_all, keep)
        return y, k_all, v_all

    check_op(
        "Attention",
        inputs,
        attrs=attrs,
        order=["Q", "K", "V", "", "pk", "pv"],
        num_outputs=3,
        torch_fn=torch_fn,
        opset=23,
    )


def test_attention_nonpad_kv_seqlen_broadcast_mask():
    """opset 24: keys past nonpad_kv_seqlen are padding (P is 0 there); a float mask
    broadcast over batch and heads gets its gradient summed back."""
    import torch

    inputs = _qkv(2, 2)
    inputs["M"] = np.random.default_rng(3).standard_normal((1, 1, S, L))
    lens = np.array([3, 4], dtype=np.int64)

    def torch_fn(Q, K, V, M, lens):
        pad = torch.arange(L)[None, :] < lens[:, None]  # [B, L]
        bias = M + torch.where(pad, 0.0, float("-inf"))[:, None, None, :].to(M.dtype)
        return _torch_attention(Q, K, V, bias)

    check_op(
        "Attention",
        inputs,
        consts={"lens": lens},
        order=["Q", "K", "V", "M", "", "", "lens"],
        torch_fn=torch_fn,
        opset=24,
    )
