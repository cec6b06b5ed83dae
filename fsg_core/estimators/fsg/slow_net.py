"""FSG's slow net: a selective state-space block (Mamba-style) or a GRU over gradient histories.

Two sequence layouts (FSG_SPEC §4 step 3):

* ``temporal`` (default): each weight coordinate is its own sequence ``[e_l, g_{t-K}, ..., g_{t-1}]``
  of length K+1, batched over coordinates; only the last position's output is computed.
* ``flat`` (the research code): per layer, the K snapshots are flattened into one sequence of length
  ``K n_l + 1`` and the last ``n_l`` outputs are taken. Long sequences: a chunked scan on CPU,
  ``mamba_ssm``'s fused kernel on CUDA when installed.

The temporal SSM runs in a fused kernel (``kernels/``: C++ on the CPU, Triton on CUDA) unless
``kernel="torch"``; the pure-PyTorch path stays as the reference and the fallback, processing coordinates
in chunks with activation checkpointing to bound memory.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from fsg_core.estimators.fsg.kernels import Backend, KernelChoice, resolve, temporal_ssm

__all__ = ["SelectiveSSM", "SlowNet", "has_mamba_kernels"]


@functools.cache
def has_mamba_kernels() -> bool:
    """Whether ``mamba_ssm``'s fused selective-scan kernel can be imported.

    Cached: the slow net asks once per chunk, and a failing import searches ``sys.path`` each time.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception:  # ImportError, or a CUDA/ABI mismatch raising at import
        return False
    return True


class SelectiveSSM(nn.Module):
    """One Mamba block: input projection, short causal depthwise conv, SiLU, input-dependent
    ``dt``/``B``/``C``, diagonal selective scan, output gated by ``SiLU(z)``.

    ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t``; ``y_t = C_t h_t + D x_t``; ``out = W_o (y * SiLU(z))``.

    Args:
        d_model: token width (1: a token is one scalar, a gradient or a layer embedding).
        d_state: state size per channel.
        d_conv: causal conv width.
        expand: ``d_inner = expand * d_model``.
        use_kernels: use ``mamba_ssm``'s fused scan when the inputs are on CUDA and it is installed.

    References:
        Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023.
    """

    def __init__(
        self,
        d_model: int = 1,
        d_state: int = 16,
        d_conv: int = 8,
        expand: int = 100,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        use_kernels: bool = True,
    ) -> None:
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = max(1, math.ceil(d_model / 16))
        self.use_kernels = use_kernels
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        # Mamba's initialisation: dt log-uniform in [dt_min, dt_max] through an inverse softplus.
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # (D, S)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def _project(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """u (B, L, d_model) -> x, z, dt (B, L, D) and B, C (B, L, S)."""
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = F.silu(self._causal_conv(x))
        dt, b, c = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return x, z, F.softplus(self.dt_proj(dt)), b, c

    def _causal_conv(self, x: Tensor) -> Tensor:
        """Depthwise causal conv over time: (B, L, D) -> (B, L, D).

        Short sequences (the temporal layout, L = K + 1) use one multiply-add per tap: oneDNN's
        depthwise conv1d took ~70% of the slow net's CPU time on (N, D, 6) inputs.
        """
        length = x.shape[1]
        if length > 4 * self.conv.kernel_size[0]:
            return self.conv(x.transpose(1, 2))[..., :length].transpose(1, 2)
        taps = self.conv.weight[:, 0].flip(-1)  # (D, d_conv), taps[:, k] weighs x_{t-k}
        assert self.conv.bias is not None
        out = self.conv.bias + taps[:, 0] * x
        for k in range(1, min(length, taps.shape[1])):
            out = out + F.pad(taps[:, k] * x[:, : length - k], (0, 0, k, 0))
        return out

    def _kernel_ready(self, u: Tensor) -> bool:
        """The fused kernel only on CUDA tensors with ``mamba_ssm`` importable; the scan in PyTorch otherwise."""
        return self.use_kernels and _is_cuda(u) and has_mamba_kernels()

    def forward(self, u: Tensor) -> Tensor:
        """All positions' outputs: u (B, L, d_model) -> (B, L, d_model)."""
        if self._kernel_ready(u):
            return self._forward_kernel(u)
        x, z, dt, b, c = self._project(u)
        y = _scan_all(x, dt, -torch.exp(self.A_log), b, c) + self.D * x  # (B, L, D)
        return self.out_proj(y * F.silu(z))

    def forward_last(self, u: Tensor) -> Tensor:
        """The last position's output only: u (B, L, d_model) -> (B, d_model). Cheap for short L."""
        if self._kernel_ready(u):
            return self._forward_kernel(u)[:, -1]
        x, z, dt, b, c = self._project(u)
        y = _scan_last(x, dt, -torch.exp(self.A_log), b, c) + self.D * x[:, -1]  # (B, D)
        return self.out_proj(y * F.silu(z[:, -1]))

    def _forward_kernel(self, u: Tensor) -> Tensor:
        """``forward`` through ``selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)``,
        which takes channels-first (B, D, L) inputs, B and C as (B, S, L), adds ``delta_bias`` and
        applies softplus to ``delta`` itself, and returns ``(scan + D u) * SiLU(z)``."""
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        length = u.shape[1]
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = F.silu(self.conv(x.transpose(1, 2))[..., :length])  # (B, D, L)
        dt, b, c = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (B, D, L), bias added by the kernel
        y = selective_scan_fn(
            x.contiguous(),
            dt.contiguous(),
            -torch.exp(self.A_log.float()),
            b.transpose(1, 2).contiguous(),
            c.transpose(1, 2).contiguous(),
            self.D.float(),
            z=z.transpose(1, 2).contiguous(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )  # (B, D, L), already gated by SiLU(z)
        return self.out_proj(y.transpose(1, 2))


def _is_cuda(t: Tensor) -> bool:
    # One place for the device check, so a test can stand in for a GPU.
    return t.is_cuda


def _scan_last(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Recurrent selective scan returning ``C_L h_L`` only: (B, L, D) inputs -> (B, D)."""
    h: Tensor | None = None
    # unbind, not x[:, t]: each indexing op's backward would allocate and fill a full-size zero tensor.
    for x_t, dt_t, b_t in zip(x.unbind(1), dt.unbind(1), b.unbind(1), strict=True):
        dbx = (dt_t * x_t).unsqueeze(-1) * b_t.unsqueeze(1)  # (B, D, S)
        h = dbx if h is None else torch.exp(dt_t.unsqueeze(-1) * a) * h + dbx
    assert h is not None
    return (h * c[:, -1].unsqueeze(1)).sum(-1)


def _scan_chunk(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """Exact scan of one chunk of T positions from state ``h0`` (B, D, S) -> (y (B, T, D), h_T).

    ``h_t = exp(cum_t) h0 + sum_{s<=t} exp(cum_t - cum_s) dt_s B_s x_s`` with ``cum`` the running sum
    of ``dt A``; differences of ``cum`` keep it stable where a running product would underflow.
    """
    cum = (dt.unsqueeze(-1) * a).cumsum(1)  # (B, T, D, S)
    dbx = (dt * x).unsqueeze(-1) * b.unsqueeze(2)  # (B, T, D, S)
    length = x.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()  # (t, s)
    seg = (cum.unsqueeze(2) - cum.unsqueeze(1)).masked_fill(~causal[:, :, None, None], float("-inf"))
    hs = torch.einsum("btsdn,bsdn->btdn", torch.exp(seg), dbx) + torch.exp(cum) * h0.unsqueeze(1)
    return (hs * c.unsqueeze(2)).sum(-1), hs[:, -1]


def _scan_all(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, chunk: int = 32) -> Tensor:
    """Chunked selective scan over long sequences: (B, L, D) inputs -> ``C_t h_t`` (B, L, D)."""
    h = x.new_zeros(x.shape[0], x.shape[2], a.shape[1])
    ys = []
    for start in range(0, x.shape[1], chunk):
        sl = slice(start, start + chunk)
        args = (x[:, sl], dt[:, sl], a, b[:, sl], c[:, sl], h)
        if torch.is_grad_enabled():
            y, h = activation_checkpoint(_scan_chunk, *args, use_reentrant=False)
        else:
            y, h = _scan_chunk(*args)
        ys.append(y)
    return torch.cat(ys, dim=1)


class SlowNet(nn.Module):
    """The slow gradient generator ``s = S([e_l ; history])`` over every binary weight.

    Args:
        sizes: weights per binary layer (the flat order of the history).
        kind: ``ssm`` (selective state space, the paper) or ``gru`` (a cheap alternative).
        layout: ``temporal`` or ``flat`` (module docstring).
        d_state, d_conv, expand: SSM sizes. gru_hidden: GRU width.
        normalize: divide each layer's history by the RMS of its newest gradient and multiply the
            output back. Gradients are ~1e-4 while the layer tokens are O(1); without this the token
            dominates every sequence. Our choice, not the paper's; ``false`` reproduces the reference.
        history_length: K, the full history length (compilation waits until the history is full).
        chunk_size: coordinates per chunk in the temporal layout (4096 keeps a chunk in cache).
        compile: fuse the temporal SSM chunk with ``torch.compile`` (about 5x faster on CPU; falls
            back to eager where compilation fails).
        checkpoint: recompute each chunk in backward instead of keeping its activations (memory
            O(chunk) instead of O(N) for a ~30% slower slow net); skipped for tiny models.
        kernel: ``auto`` (the fused kernel of the device when it builds, else PyTorch with a warning),
            ``fused`` (the kernel or an error) or ``torch`` (the reference). Only the temporal SSM has a
            kernel; ``chunk_size``, ``compile`` and ``checkpoint`` apply to the PyTorch path.
    """

    layer_index: Tensor  # (N,) the binary layer of every flat coordinate
    layer_start: Tensor  # (layers + 1,) offset of each layer's first coordinate, then N

    def __init__(
        self,
        sizes: list[int],
        *,
        kind: Literal["ssm", "gru"] = "ssm",
        layout: Literal["temporal", "flat"] = "temporal",
        d_state: int = 4,
        d_conv: int = 8,
        expand: int = 8,
        gru_hidden: int = 16,
        history_length: int = 5,
        normalize: bool = True,
        chunk_size: int = 4096,
        compile: bool = True,
        checkpoint: bool = True,
        kernel: KernelChoice = "auto",
    ) -> None:
        super().__init__()
        self.sizes = sizes
        self.kind = kind
        self.layout = layout
        self.normalize = normalize
        self.chunk_size = chunk_size
        self.use_compile = compile
        self.history_length = history_length
        self.checkpoint = checkpoint
        self.kernel: KernelChoice = kernel
        self._backend: dict[torch.device, Backend | None] = {}
        self._orders: dict[tuple[torch.device, tuple[int, ...]], Tensor] = {}
        self._compiled: Any = None
        self._compile_verified = False
        self.ssm: SelectiveSSM | None = None
        self.gru: nn.GRU | None = None
        if kind == "ssm":
            self.ssm = SelectiveSSM(1, d_state=d_state, d_conv=d_conv, expand=expand)
        else:
            self.gru = nn.GRU(1, gru_hidden, batch_first=True)
            self.gru_out = nn.Linear(gru_hidden, 1)
        index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        self.register_buffer("layer_index", index, persistent=False)  # (N,)
        start = torch.tensor([0, *sizes]).cumsum(0)
        self.register_buffer("layer_start", start, persistent=False)  # (layers + 1,)

    def _last(self, seq: Tensor) -> Tensor:
        """(B, L, 1) -> (B,), the last position's output."""
        if self.ssm is not None:
            return self.ssm.forward_last(seq)[:, 0]
        assert self.gru is not None
        _, h = self.gru(seq)  # h (1, B, H)
        return self.gru_out(h[0])[:, 0]

    def _all(self, seq: Tensor) -> Tensor:
        """(B, L, 1) -> (B, L), every position's output."""
        if self.ssm is not None:
            return self.ssm(seq)[..., 0]
        assert self.gru is not None
        out, _ = self.gru(seq)
        return self.gru_out(out)[..., 0]

    def layer_scale(self, history: Tensor, rows: Sequence[int] | None = None) -> Tensor:
        """Per-layer RMS over the whole history window, (num_layers,); ones without normalisation.

        The window, not the newest gradient alone: one vanishing gradient must not blow up the
        normalised values of the others. ``rows``: the rows of ``history`` in the window (default all).
        """
        if not self.normalize:
            return history.new_ones(len(self.sizes))
        rows = range(history.shape[0]) if rows is None else rows
        # Summed oldest first, one row at a time: the same bits wherever the ring buffer's head is
        # (a resumed run's ring starts at row 0), and no gathered copy of the window.
        squares = history[rows[0]].square()  # (N,)
        for r in rows[1:]:
            squares.addcmul_(history[r], history[r])
        squares = squares / len(rows)
        sums = history.new_zeros(len(self.sizes)).index_add_(0, self.layer_index, squares)
        sizes = (self.layer_start[1:] - self.layer_start[:-1]).to(history.dtype)  # no host-to-GPU copy per step
        return (sums / sizes).sqrt().clamp_min(1e-12)

    def backend(self, device: torch.device) -> Backend | None:
        """The fused kernel used on ``device`` (None: the PyTorch path), resolved once per device.

        Raises:
            KernelUnavailableError: ``kernel="fused"`` and no kernel runs on ``device``.
        """
        if self.layout != "temporal" or self.ssm is None:
            return None
        if device not in self._backend:
            self._backend[device] = resolve(self.kernel, device)
        return self._backend[device]

    def _order(self, rows: Sequence[int], device: torch.device) -> Tensor:
        key = (device, tuple(rows))
        if key not in self._orders:  # a ring buffer of K rows has K orders once full: no copy per step
            self._orders[key] = torch.tensor(list(rows), dtype=torch.long, device=device)
        return self._orders[key]

    def forward(self, history: Tensor, tokens: Tensor, order: Sequence[int] | None = None) -> Tensor:
        """history (K, N) and layer tokens (num_layers, 1) -> s (N,).

        ``order``: the rows of ``history`` to read, oldest first (default: every row, in order), so
        that a ring buffer is read in place.
        """
        rows = list(range(history.shape[0])) if order is None else list(order)
        scale = self.layer_scale(history, rows)  # (num_layers,)
        backend = self.backend(history.device)
        if backend is not None:
            assert self.ssm is not None
            index = self._order(rows, history.device)
            return temporal_ssm(backend, self.ssm, history, index, self.layer_start, scale, tokens)
        ordered = history if rows == list(range(history.shape[0])) else history[rows]
        if self.layout == "temporal":
            return self._temporal(ordered, tokens, scale)
        return self._flat(ordered, tokens, scale)

    def _chunk_fn(self, full_history: bool) -> Callable[[Tensor], Tensor]:
        """The per-chunk function: compiled once the history is full (one shape, one compilation;
        the K-1 warm-up steps run eagerly rather than compiling a graph per length)."""
        if not (self.use_compile and full_history and self.ssm is not None):
            return self._last
        if self._compiled is None:
            self._compiled = torch.compile(self._last, dynamic=False)
        return cast(Callable[[Tensor], Tensor], self._compiled)

    def _needs_checkpoint(self, n: int, length: int) -> bool:
        # Recomputing a chunk in backward costs ~30% more slow-net time; without it the scan's
        # saved activations (about 4 floats per coordinate x step x D x S) grow with the model:
        # ~0.8 GB for ResNet-20 with the lite preset, ~34 GB for ResNet-18.
        if self.ssm is None or not self.checkpoint:
            return False
        return 16 * n * length * self.ssm.d_inner * self.ssm.d_state > 64 * 2**20

    def _temporal(self, history: Tensor, tokens: Tensor, scale: Tensor) -> Tensor:
        coord_scale = scale[self.layer_index]  # (N,)
        seq = torch.cat([tokens[self.layer_index], (history / coord_scale).t()], dim=1)  # (N, k+1)
        n = seq.shape[0]
        chunk = min(self.chunk_size, n)
        seq = F.pad(seq, (0, 0, 0, (-n) % chunk))  # equal chunks: one compiled shape
        fn = self._chunk_fn(full_history=history.shape[0] == self.history_length)
        use_checkpoint = torch.is_grad_enabled() and self._needs_checkpoint(n, seq.shape[1])

        def run(fn: Callable[[Tensor], Tensor]) -> Tensor:
            outs = []
            for part in seq.split(chunk):
                part = part.unsqueeze(-1)  # (chunk, k+1, 1)
                outs.append(activation_checkpoint(fn, part, use_reentrant=False) if use_checkpoint else fn(part))
            return torch.cat(outs)[:n]

        if fn is self._compiled and not self._compile_verified:
            try:
                out = run(fn)
            except Exception as exc:  # no C++ compiler, unsupported platform: eager still works
                warnings.warn(f"torch.compile of the FSG slow net failed, running eagerly: {exc}", stacklevel=2)
                self.use_compile, self._compiled = False, None
                out = run(self._last)
            self._compile_verified = True
        else:
            out = run(fn)
        return out * coord_scale

    def _flat(self, history: Tensor, tokens: Tensor, scale: Tensor) -> Tensor:
        k = history.shape[0]
        per_layer = history.split(self.sizes, dim=1)  # each (k, n_l)
        longest = 1 + k * max(self.sizes)
        seqs = []
        for layer, hist in enumerate(per_layer):
            seq = torch.cat([tokens[layer], (hist / scale[layer]).reshape(-1)])  # (1 + k n_l,), time-major
            seqs.append(F.pad(seq, (0, longest - seq.numel())))  # causal: padding at the end is never read
        out = self._all(torch.stack(seqs).unsqueeze(-1))  # (layers, longest)
        parts = [
            out[layer, 1 + (k - 1) * n : 1 + k * n] * scale[layer] for layer, n in enumerate(self.sizes)
        ]  # the outputs at the newest snapshot
        return torch.cat(parts)
