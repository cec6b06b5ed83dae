"""The temporal slow net in Triton: forward and backward, one launch each over every coordinate of every layer.

The same math and the same split of the work as the C++ kernel (``ssm_temporal.cpp``): one program per
block of ``BLOCK`` coordinates of one layer (a block never crosses a layer), the layer token's
position 0 precomputed per layer by the caller. Inside a program the k history positions are a tile
axis (padded to a power of two), the state a second one. Passes over ``d_inner``:

1. conv, SiLU and the projections ``dtr``, ``B`` (every position) and ``C`` (the last), summed over ``d``;
2. per channel ``d``: ``dt``, the scan and the output (forward), or the scan, its reverse and the
   reductions over ``d`` that the projections' backward needs (``dB``, ``dC``, ``d dtr``);
3. (backward only) per channel: the scan's adjoint again, then the projections', SiLU's and the conv's.

Every program writes its parameter gradients, summed over its lanes, to its own row of a partial
buffer; the rows are reduced afterwards in a fixed order (no atomics): deterministic. Runs on CUDA, and
on CPU tensors under ``TRITON_INTERPRET=1`` (the tests).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["BLOCK", "backward", "forward"]

BLOCK = 64  # coordinates per program (32 when the state tiles are large: see block_size)


def block_size(k: int, d_state: int) -> int:
    """Coordinates per program: 64, or 32 where a (BLOCK, k, d_state) tile, padded to powers of two, would
    pass 4,096 values (the paper preset), so that a program's live tiles stay near the register file."""
    return BLOCK if triton.next_power_of_2(k) * triton.next_power_of_2(d_state) <= 64 else BLOCK // 2


# ------------------------------------------------------------------------------------------- device code
@triton.jit
def _softplus(v):
    """torch's softplus (threshold 20) and its slope; log1p(e) as 2 atanh(e / (2 + e)), exact for small e."""
    e = tl.exp(-tl.abs(v))
    s = e / (2.0 + e)
    s2 = s * s
    p = s2 * (1.0 / 15.0) + 1.0 / 13.0
    p = p * s2 + 1.0 / 11.0
    p = p * s2 + 1.0 / 9.0
    p = p * s2 + 1.0 / 7.0
    p = p * s2 + 1.0 / 5.0
    p = p * s2 + 1.0 / 3.0
    p = p * s2 + 1.0
    value = tl.where(v > 20.0, v, tl.maximum(v, 0.0) + 2.0 * s * p)
    inv = 1.0 / (1.0 + e)
    slope = tl.where(v > 20.0, 1.0, tl.where(v >= 0.0, inv, e * inv))
    return value, slope


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _column(tile, tv, t):
    """tile[:, t] of a (BLOCK, KP) tile."""
    return tl.sum(tl.where(tv[None, :] == t, tile, 0.0), axis=1)


@triton.jit
def _column3(tile, tv, t):
    """tile[:, t, :] of a (BLOCK, KP, SP) tile."""
    return tl.sum(tl.where(tv[None, :, None] == t, tile, 0.0), axis=1)


@triton.jit
def _conv_silu(
    u, d, layer, tv, t_mask, win_x_ptr, taps_ptr, convb_ptr, tok_ptr, D, K: tl.constexpr, DCONV: tl.constexpr
):
    """Channel d at every position: xc (pre-activation), its sigmoid and x = SiLU(xc), (BLOCK, KP) each,
    x zero at padded positions. Also the conv matrix without win_x, (KP, KP), for the backward."""
    diff = tv[:, None] - tv[None, :]  # (t, t'): x_t reads u_{t'} through tap t - t'
    valid = (diff >= 0) & (diff < DCONV) & t_mask[:, None] & t_mask[None, :]
    taps = tl.load(taps_ptr + d * DCONV + diff, mask=valid, other=0.0)  # (KP, KP)
    wx = tl.load(win_x_ptr + d)
    base = tl.load(convb_ptr + d) + tl.load(tok_ptr + (layer * K + tv) * D + d, mask=t_mask, other=0.0)  # (KP,)
    xc = base[None, :] + tl.sum(u[:, None, :] * (taps * wx)[None, :, :], axis=2)
    sg = _sigmoid(xc)
    x = tl.where(t_mask[None, :], xc * sg, 0.0)
    return xc, sg, x, taps, valid


@triton.jit
def _project(
    u,
    layer,
    tv,
    t_mask,
    sv,
    s_mask,
    win_x_ptr,
    taps_ptr,
    convb_ptr,
    tok_ptr,
    wx_ptr,
    D,
    K: tl.constexpr,
    S: tl.constexpr,
    DCONV: tl.constexpr,
    BLOCK: tl.constexpr,
    KP: tl.constexpr,
    SP: tl.constexpr,
):
    """Pass 1: dtr (BLOCK, KP), B (BLOCK, KP, SP) and C (BLOCK, SP), each summed over the d_inner channels."""
    dtr = tl.zeros((BLOCK, KP), dtype=tl.float32)
    b = tl.zeros((BLOCK, KP, SP), dtype=tl.float32)
    c = tl.zeros((BLOCK, SP), dtype=tl.float32)
    for d in range(D):
        xc, sg, x, taps, valid = _conv_silu(
            u, d, layer, tv, t_mask, win_x_ptr, taps_ptr, convb_ptr, tok_ptr, D, K, DCONV
        )
        dtr += tl.load(wx_ptr + d) * x
        wb = tl.load(wx_ptr + (1 + sv) * D + d, mask=s_mask, other=0.0)  # (SP,)
        wc = tl.load(wx_ptr + (1 + S + sv) * D + d, mask=s_mask, other=0.0)
        b += x[:, :, None] * wb[None, None, :]
        c += _column(x, tv, K - 1)[:, None] * wc[None, :]
    return dtr, b, c


@triton.jit
def _load_u(hist_ptr, order_ptr, scale, n, lane_mask, tv, t_mask, N):
    rows = tl.load(order_ptr + tv, mask=t_mask, other=0)
    raw = tl.load(hist_ptr + rows[None, :] * N + n[:, None], mask=lane_mask[:, None] & t_mask[None, :], other=0.0)
    return raw / scale


@triton.jit
def _forward_kernel(
    hist_ptr, order_ptr, blk_layer_ptr, blk_start_ptr, blk_end_ptr, scale_ptr,
    win_x_ptr, win_z_ptr, taps_ptr, convb_ptr, wx_ptr, wdt_ptr, bdt_ptr, a_ptr, dp_ptr, wout_ptr, tok_ptr, h0_ptr,
    out_ptr, N, D,
    K: tl.constexpr, S: tl.constexpr, DCONV: tl.constexpr, BLOCK: tl.constexpr, KP: tl.constexpr, SP: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    layer = tl.load(blk_layer_ptr + pid)
    start = tl.load(blk_start_ptr + pid)
    end = tl.load(blk_end_ptr + pid)
    scale = tl.load(scale_ptr + layer)
    n = start + tl.arange(0, BLOCK)
    lane_mask = n < end
    tv = tl.arange(0, KP)
    t_mask = tv < K
    sv = tl.arange(0, SP)
    s_mask = sv < S
    u = _load_u(hist_ptr, order_ptr, scale, n, lane_mask, tv, t_mask, N)
    dtr, b, c = _project(u, layer, tv, t_mask, sv, s_mask, win_x_ptr, taps_ptr, convb_ptr, tok_ptr, wx_ptr, D,
                         K, S, DCONV, BLOCK, KP, SP)  # fmt: skip
    u_last = _column(u, tv, K - 1)
    out = tl.zeros((BLOCK,), dtype=tl.float32)
    for d in range(D):
        xc, sg, x, taps, valid = _conv_silu(
            u, d, layer, tv, t_mask, win_x_ptr, taps_ptr, convb_ptr, tok_ptr, D, K, DCONV
        )
        dt, slope = _softplus(tl.load(wdt_ptr + d) * dtr + tl.load(bdt_ptr + d))
        a_d = tl.load(a_ptr + d * S + sv, mask=s_mask, other=0.0)
        h = (
            tl.zeros((BLOCK, SP), dtype=tl.float32)
            + tl.load(h0_ptr + (layer * D + d) * S + sv, mask=s_mask, other=0.0)[None, :]
        )
        for t in tl.static_range(K):
            dt_t = _column(dt, tv, t)
            h = tl.exp(dt_t[:, None] * a_d[None, :]) * h + (dt_t * _column(x, tv, t))[:, None] * _column3(b, tv, t)
        y = tl.sum(c * h, axis=1) + tl.load(dp_ptr + d) * _column(x, tv, K - 1)
        z = tl.load(win_z_ptr + d) * u_last
        out += tl.load(wout_ptr + d) * y * z * _sigmoid(z)
    tl.store(out_ptr + n, out * scale, mask=lane_mask)


@triton.jit
def _scan_adjoint(dy, c, b, dt, x, a_d, h0, tv, K: tl.constexpr, BLOCK: tl.constexpr, KP: tl.constexpr,
                  SP: tl.constexpr):  # fmt: skip
    """The scan of one channel, then its reverse from dL/dy. Returns the last state, dL/d(dt) and the
    scan's part of dL/dx (BLOCK, KP), dL/dA summed over lanes' factors (BLOCK, SP), dL/dh0 (BLOCK, SP)
    and this channel's share of dL/dB (BLOCK, KP, SP)."""
    h = tl.zeros((BLOCK, SP), dtype=tl.float32) + h0[None, :]
    states = tl.zeros((BLOCK, KP, SP), dtype=tl.float32)  # the state before position t
    decays = tl.zeros((BLOCK, KP, SP), dtype=tl.float32)
    for t in tl.static_range(K):
        sel = tv[None, :, None] == t
        dt_t = _column(dt, tv, t)
        a = tl.exp(dt_t[:, None] * a_d[None, :])
        states = tl.where(sel, h[:, None, :], states)
        decays = tl.where(sel, a[:, None, :], decays)
        h = a * h + (dt_t * _column(x, tv, t))[:, None] * _column3(b, tv, t)
    dh = dy[:, None] * c
    ddt = tl.zeros((BLOCK, KP), dtype=tl.float32)
    dx = tl.zeros((BLOCK, KP), dtype=tl.float32)
    g_a = tl.zeros((BLOCK, SP), dtype=tl.float32)
    db = tl.zeros((BLOCK, KP, SP), dtype=tl.float32)
    for i in tl.static_range(K):
        t = K - 1 - i
        sel = tv[None, :] == t
        a = _column3(decays, tv, t)
        b_t = _column3(b, tv, t)
        dt_t = _column(dt, tv, t)
        x_t = _column(x, tv, t)
        dad = dh * _column3(states, tv, t) * a  # dL/d(dt A) through the decay
        g_a += dad * dt_t[:, None]
        ddt = tl.where(sel, tl.sum(dad * a_d[None, :] + dh * x_t[:, None] * b_t, axis=1)[:, None], ddt)
        dx = tl.where(sel, (dt_t * tl.sum(dh * b_t, axis=1))[:, None], dx)
        db += tl.where(tv[None, :, None] == t, (dh * (dt_t * x_t)[:, None])[:, None, :], 0.0)
        dh = dh * a
    return h, ddt, dx, g_a, dh, db


@triton.jit
def _backward_kernel(
    gout_ptr, hist_ptr, order_ptr, blk_layer_ptr, blk_start_ptr, blk_end_ptr, scale_ptr,
    win_x_ptr, win_z_ptr, taps_ptr, convb_ptr, wx_ptr, wdt_ptr, bdt_ptr, a_ptr, dp_ptr, wout_ptr, tok_ptr, h0_ptr,
    part_ptr, N, D, P,
    O_WIN_X, O_WIN_Z, O_TAPS, O_CONVB, O_WX, O_WDT, O_BDT, O_A, O_DP, O_WOUT, O_TOK, O_H0,
    K: tl.constexpr, S: tl.constexpr, DCONV: tl.constexpr, BLOCK: tl.constexpr, KP: tl.constexpr, SP: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    layer = tl.load(blk_layer_ptr + pid)
    start = tl.load(blk_start_ptr + pid)
    end = tl.load(blk_end_ptr + pid)
    scale = tl.load(scale_ptr + layer)
    n = start + tl.arange(0, BLOCK)
    lane_mask = n < end
    tv = tl.arange(0, KP)
    t_mask = tv < K
    sv = tl.arange(0, SP)
    s_mask = sv < S
    row = part_ptr + pid.to(tl.int64) * P
    u = _load_u(hist_ptr, order_ptr, scale, n, lane_mask, tv, t_mask, N)
    go = tl.load(gout_ptr + n, mask=lane_mask, other=0.0) * scale  # padding lanes: 0, so they add nothing
    dtr, b, c = _project(u, layer, tv, t_mask, sv, s_mask, win_x_ptr, taps_ptr, convb_ptr, tok_ptr, wx_ptr, D,
                         K, S, DCONV, BLOCK, KP, SP)  # fmt: skip
    u_last = _column(u, tv, K - 1)

    # pass 2: per channel, the scan's adjoint; sums over d of dB, dC and d(dtr)
    db = tl.zeros((BLOCK, KP, SP), dtype=tl.float32)
    dc = tl.zeros((BLOCK, SP), dtype=tl.float32)
    ddtr = tl.zeros((BLOCK, KP), dtype=tl.float32)
    for d in range(D):
        xc, sg, x, taps, valid = _conv_silu(
            u, d, layer, tv, t_mask, win_x_ptr, taps_ptr, convb_ptr, tok_ptr, D, K, DCONV
        )
        wdt = tl.load(wdt_ptr + d)
        dt, slope = _softplus(wdt * dtr + tl.load(bdt_ptr + d))
        a_d = tl.load(a_ptr + d * S + sv, mask=s_mask, other=0.0)
        h0 = tl.load(h0_ptr + (layer * D + d) * S + sv, mask=s_mask, other=0.0)
        z = tl.load(win_z_ptr + d) * u_last
        sz_sig = _sigmoid(z)
        sz = z * sz_sig
        wout = tl.load(wout_ptr + d)
        dp = tl.load(dp_ptr + d)
        x_last = _column(x, tv, K - 1)
        h_fwd = tl.zeros((BLOCK, SP), dtype=tl.float32) + h0[None, :]
        for t in tl.static_range(K):
            dt_t = _column(dt, tv, t)
            h_fwd = tl.exp(dt_t[:, None] * a_d[None, :]) * h_fwd + (dt_t * _column(x, tv, t))[:, None] * _column3(
                b, tv, t
            )
        y = tl.sum(c * h_fwd, axis=1) + dp * x_last
        dy = go * wout * sz
        tl.store(row + O_WOUT + d, tl.sum(go * y * sz, axis=0))
        tl.store(row + O_WIN_Z + d, tl.sum(go * wout * y * sz_sig * (1.0 + z * (1.0 - sz_sig)) * u_last, axis=0))
        tl.store(row + O_DP + d, tl.sum(dy * x_last, axis=0))
        h, ddt, dx_scan, g_a, dh0, db_d = _scan_adjoint(dy, c, b, dt, x, a_d, h0, tv, K, BLOCK, KP, SP)
        dc += dy[:, None] * h
        db += db_d
        tl.store(row + O_A + d * S + sv, tl.sum(g_a, axis=0), mask=s_mask)
        tl.store(row + O_H0 + d * S + sv, tl.sum(dh0, axis=0), mask=s_mask)
        dv = ddt * slope  # zero at padded positions (ddt is)
        tl.store(row + O_WDT + d, tl.sum(tl.sum(dv * dtr, axis=1), axis=0))
        tl.store(row + O_BDT + d, tl.sum(tl.sum(dv, axis=1), axis=0))
        ddtr += dv * wdt

    # pass 3: per channel, dL/dx from every path, then SiLU and the conv
    last = tv[None, :] == K - 1
    for d in range(D):
        xc, sg, x, taps, valid = _conv_silu(
            u, d, layer, tv, t_mask, win_x_ptr, taps_ptr, convb_ptr, tok_ptr, D, K, DCONV
        )
        dt, slope = _softplus(tl.load(wdt_ptr + d) * dtr + tl.load(bdt_ptr + d))
        a_d = tl.load(a_ptr + d * S + sv, mask=s_mask, other=0.0)
        h0 = tl.load(h0_ptr + (layer * D + d) * S + sv, mask=s_mask, other=0.0)
        z = tl.load(win_z_ptr + d) * u_last
        dy = go * tl.load(wout_ptr + d) * z * _sigmoid(z)
        h, ddt, dx, g_a, dh0, db_d = _scan_adjoint(dy, c, b, dt, x, a_d, h0, tv, K, BLOCK, KP, SP)
        wx0 = tl.load(wx_ptr + d)
        wb = tl.load(wx_ptr + (1 + sv) * D + d, mask=s_mask, other=0.0)
        wc = tl.load(wx_ptr + (1 + S + sv) * D + d, mask=s_mask, other=0.0)
        x_last = _column(x, tv, K - 1)
        dx += tl.where(last, (dy * tl.load(dp_ptr + d) + tl.sum(dc * wc[None, :], axis=1))[:, None], 0.0)
        dx += ddtr * wx0 + tl.sum(db * wb[None, None, :], axis=2)
        dx = tl.where(t_mask[None, :], dx, 0.0)
        tl.store(row + O_WX + d, tl.sum(tl.sum(ddtr * x, axis=1), axis=0))
        tl.store(row + O_WX + (1 + sv) * D + d, tl.sum(tl.sum(db * x[:, :, None], axis=1), axis=0), mask=s_mask)
        tl.store(row + O_WX + (1 + S + sv) * D + d, tl.sum(dc * x_last[:, None], axis=0), mask=s_mask)
        dxc = dx * sg * (1.0 + xc * (1.0 - sg))
        tl.store(row + O_CONVB + d, tl.sum(tl.sum(dxc, axis=1), axis=0))
        tl.store(row + O_TOK + tv * D + d, tl.sum(dxc, axis=0), mask=t_mask)
        grid = tl.sum(dxc[:, :, None] * u[:, None, :], axis=0)  # (t, t'): sum over lanes of dxc_t u_t'
        wx_in = tl.load(win_x_ptr + d)
        tl.store(row + O_WIN_X + d, tl.sum(tl.sum(grid * taps, axis=1), axis=0))
        diff = tv[:, None] - tv[None, :]
        for j in tl.static_range(DCONV):
            tl.store(
                row + O_TAPS + d * DCONV + j,
                wx_in * tl.sum(tl.sum(tl.where(valid & (diff == j), grid, 0.0), axis=1), axis=0),
            )


# --------------------------------------------------------------------------------------------- host code
def _layout(d: int, s: int, d_conv: int, k: int) -> dict[str, int]:
    """Offsets of each gradient in a program's row: the C++ kernel's Layout."""
    sizes = [("win_x", d), ("win_z", d), ("taps", d * d_conv), ("convb", d), ("wx", (1 + 2 * s) * d), ("wdt", d),
             ("bdt", d), ("A", d * s), ("Dp", d), ("wout", d), ("tok", k * d), ("h0", d * s)]  # fmt: skip
    out, offset = {}, 0
    for name, size in sizes:
        out[name] = offset
        offset += size
    out["shared"], out["total"] = out["tok"], offset
    return out


@functools.lru_cache(maxsize=16)
def _blocks(starts: tuple[int, ...], block: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Blocks of ``block`` coordinates inside each layer: their layer, start, end (int64 on ``device``),
    and for each layer the rows of its blocks padded with a pointer to a zero row (for the reduction)."""
    layer: list[int] = []
    start: list[int] = []
    end: list[int] = []
    per_layer: list[list[int]] = []
    for i in range(len(starts) - 1):
        rows: list[int] = []
        for s in range(starts[i], starts[i + 1], block):
            rows.append(len(layer))
            layer.append(i)
            start.append(s)
            end.append(min(s + block, starts[i + 1]))
        per_layer.append(rows)
    width = max(len(r) for r in per_layer)
    zero_row = len(layer)
    gather = [r + [zero_row] * (width - len(r)) for r in per_layer]

    def on(values: list[int] | list[list[int]]) -> Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    return on(layer), on(start), on(end), on(gather)


_STARTS: dict[tuple[int, int, torch.device], tuple[int, ...]] = {}


def _starts(layer_start: Tensor) -> tuple[int, ...]:
    """The layer offsets as ints, read from the device once per tensor (a read is a host sync on CUDA)."""
    key = (layer_start.data_ptr(), layer_start.numel(), layer_start.device)
    if key not in _STARTS:
        _STARTS[key] = tuple(int(v) for v in layer_start.cpu().tolist())
    return _STARTS[key]


def _launch_args(
    hist: Tensor, order: Tensor, layer_start: Tensor, scale: Tensor, weights: Sequence[Tensor]
) -> tuple[tuple[Tensor, ...], dict[str, int], Tensor, int]:
    for w in weights:
        if w.dtype != torch.float32 or not w.is_contiguous():
            raise ValueError("the Triton slow-net kernel takes contiguous float32 tensors")
    if hist.dtype != torch.float32:
        raise ValueError("the Triton slow-net kernel takes a float32 history")
    starts = _starts(layer_start)
    d, s, d_conv, k = weights[0].numel(), weights[7].shape[1], weights[2].shape[1], order.numel()
    block = block_size(k, s)
    blk_layer, blk_start, blk_end, gather = _blocks(starts, block, hist.device)
    meta = {"K": k, "S": s, "DCONV": d_conv, "BLOCK": block, "KP": triton.next_power_of_2(k),
            "SP": triton.next_power_of_2(s), "D": d}  # fmt: skip
    return (blk_layer, blk_start, blk_end), meta, gather, int(blk_layer.numel())


def forward(hist: Tensor, order: Tensor, layer_start: Tensor, scale: Tensor, weights: Sequence[Tensor]) -> Tensor:
    """s (N,) for every coordinate (the C++ op's contract)."""
    blocks, meta, _, nb = _launch_args(hist, order, layer_start, scale, weights)
    out = torch.empty(hist.shape[1], dtype=hist.dtype, device=hist.device)
    d = meta.pop("D")
    _forward_kernel[(nb,)](hist, order, *blocks, scale, *weights, out, hist.shape[1], d, **meta)
    return out


def backward(
    gout: Tensor, hist: Tensor, order: Tensor, layer_start: Tensor, scale: Tensor, weights: Sequence[Tensor]
) -> list[Tensor]:
    """Gradients of the 12 weights (the C++ op's contract), reduced over programs in a fixed order."""
    blocks, meta, gather, nb = _launch_args(hist, order, layer_start, scale, weights)
    d = meta.pop("D")
    s, d_conv, k = meta["S"], meta["DCONV"], meta["K"]
    lay = _layout(d, s, d_conv, k)
    part = torch.zeros(nb + 1, lay["total"], dtype=hist.dtype, device=hist.device)  # + a zero row
    offsets = [
        lay[name] for name in ("win_x", "win_z", "taps", "convb", "wx", "wdt", "bdt", "A", "Dp", "wout", "tok", "h0")
    ]
    _backward_kernel[(nb,)](
        gout, hist, order, *blocks, scale, *weights, part, hist.shape[1], d, lay["total"], *offsets, **meta
    )
    shared = part[:nb, : lay["shared"]].sum(0)  # a plain reduction: no atomics, the same order every time
    per_layer = part[:, lay["shared"] :][gather].sum(1)  # (layers, width): each layer's rows, zero-padded
    pieces = [
        shared[lay["win_x"] : lay["win_z"]],
        shared[lay["win_z"] : lay["taps"]],
        shared[lay["taps"] : lay["convb"]].view(d, d_conv),
        shared[lay["convb"] : lay["wx"]],
        shared[lay["wx"] : lay["wdt"]].view(1 + 2 * s, d),
        shared[lay["wdt"] : lay["bdt"]],
        shared[lay["bdt"] : lay["A"]],
        shared[lay["A"] : lay["Dp"]].view(d, s),
        shared[lay["Dp"] : lay["wout"]],
        shared[lay["wout"] : lay["shared"]],
        per_layer[:, : k * d].reshape(-1, k, d),
        per_layer[:, k * d :].reshape(-1, d, s),
    ]
    return [p.contiguous() for p in pieces]
