"""ctypes bindings and autograd functions for the Mamba mixer's C kernels (csrc/selective_scan.c).

Two operations, each with a forward and a backward kernel:
- the selective scan with delta bias, softplus, padding mask and the silu(z) gate fused in;
- the causal depthwise conv1d with bias, padding mask and SiLU fused in.
Both take (batch, L, channels) tensors whose channel axis has unit stride (views such as the
halves of in_proj's output are read in place), in float32 or float64, and run on
`torch.get_num_threads()` threads: torch's own OpenMP team when its runtime can be found (so the
kernels do not compete with torch's spinning threads), else pthreads (NETMAMBA_KERNEL_THREADS=
pthreads forces that). ctypes releases the GIL during the calls.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

import torch

from netmamba import _native

log = logging.getLogger(__name__)

_ABI_VERSION = 2
_LIBRARY = "selective_scan"
THREADS_ENV = "NETMAMBA_KERNEL_THREADS"  # "pthreads" keeps the kernels off torch's OpenMP team


class ScanArgs(ctypes.Structure):
    """Mirror of `scan_args` in csrc/selective_scan.c."""

    _fields_ = [
        ("batch", ctypes.c_int64),
        ("length", ctypes.c_int64),
        ("channels", ctypes.c_int64),
        ("states", ctypes.c_int64),
        ("u", ctypes.c_void_p),
        ("u_sb", ctypes.c_int64),
        ("u_sl", ctypes.c_int64),
        ("delta", ctypes.c_void_p),
        ("delta_sb", ctypes.c_int64),
        ("delta_sl", ctypes.c_int64),
        ("A", ctypes.c_void_p),
        ("Bm", ctypes.c_void_p),
        ("B_sb", ctypes.c_int64),
        ("B_sl", ctypes.c_int64),
        ("Cm", ctypes.c_void_p),
        ("C_sb", ctypes.c_int64),
        ("C_sl", ctypes.c_int64),
        ("D", ctypes.c_void_p),
        ("z", ctypes.c_void_p),
        ("z_sb", ctypes.c_int64),
        ("z_sl", ctypes.c_int64),
        ("delta_bias", ctypes.c_void_p),
        ("delta_softplus", ctypes.c_int64),
        ("mask", ctypes.c_void_p),
        ("mask_sb", ctypes.c_int64),
        ("mask_sl", ctypes.c_int64),
        ("out", ctypes.c_void_p),
        ("dout", ctypes.c_void_p),
        ("du", ctypes.c_void_p),
        ("ddelta", ctypes.c_void_p),
        ("dz", ctypes.c_void_p),
        ("dA", ctypes.c_void_p),
        ("dB", ctypes.c_void_p),
        ("dC", ctypes.c_void_p),
        ("dD", ctypes.c_void_p),
        ("ddelta_bias", ctypes.c_void_p),
    ]


class ConvArgs(ctypes.Structure):
    """Mirror of `conv_args` in csrc/selective_scan.c."""

    _fields_ = [
        ("batch", ctypes.c_int64),
        ("length", ctypes.c_int64),
        ("channels", ctypes.c_int64),
        ("width", ctypes.c_int64),
        ("x", ctypes.c_void_p),
        ("x_sb", ctypes.c_int64),
        ("x_sl", ctypes.c_int64),
        ("weight", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("mask", ctypes.c_void_p),
        ("mask_sb", ctypes.c_int64),
        ("mask_sl", ctypes.c_int64),
        ("silu", ctypes.c_int64),
        ("out", ctypes.c_void_p),
        ("dout", ctypes.c_void_p),
        ("dx", ctypes.c_void_p),
        ("dweight", ctypes.c_void_p),
        ("dbias", ctypes.c_void_p),
    ]


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None when they are not built, disabled or of another ABI."""
    lib = _native.load(_LIBRARY)
    if lib is None:
        return None
    try:
        lib.nm_kernels_abi_version.restype = ctypes.c_int64
        version = lib.nm_kernels_abi_version()
    except AttributeError:
        version = None
    if version != _ABI_VERSION:
        log.warning(
            "the native Mamba kernels are from another netmamba version (ABI %s, expected %s); "
            "using the PyTorch fallback. Reinstall netmamba to rebuild them.",
            version,
            _ABI_VERSION,
        )
        return None
    lib.nm_use_openmp.argtypes = [ctypes.c_void_p]
    lib.nm_use_openmp.restype = None
    if os.environ.get(THREADS_ENV, "openmp") != "pthreads":
        parallel = _torch_openmp_parallel()
        if parallel:
            lib.nm_use_openmp(parallel)
    for name, args_type in (
        ("nm_selective_scan_fwd", ScanArgs),
        ("nm_selective_scan_bwd", ScanArgs),
        ("nm_causal_conv1d_fwd", ConvArgs),
        ("nm_causal_conv1d_bwd", ConvArgs),
    ):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.POINTER(args_type), ctypes.c_int, ctypes.c_int]
        fn.restype = ctypes.c_int
    return lib


def _torch_openmp_parallel() -> int | None:
    """Address of GOMP_parallel in the OpenMP runtime torch loaded (libgomp, or LLVM's libomp
    which exports it too), so the kernels run on torch's threads; None when there is none."""
    try:
        with open("/proc/self/maps") as maps:  # Linux; elsewhere the kernels use pthreads
            paths = {line.split()[-1] for line in maps if "omp" in line.rsplit("/", 1)[-1]}
    except OSError:
        return None
    for path in sorted(paths, key=lambda p: "torch" not in p):  # torch's own first
        try:
            runtime = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | os.RTLD_LAZY)
            return ctypes.cast(runtime.GOMP_parallel, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


def available() -> bool:
    return library() is not None


def supports(x: torch.Tensor) -> bool:
    """Whether the kernels can take x (a CPU tensor; other float types are computed in float32)."""
    return x.device.type == "cpu" and x.dtype.is_floating_point


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _call(fn, args: ctypes.Structure, is_double: bool) -> None:
    status = fn(ctypes.byref(args), int(is_double), torch.get_num_threads())
    if status == -2:
        raise ValueError("causal conv: the native kernel takes kernel widths from 1 to 64")
    if status != 0:
        raise MemoryError("netmamba native kernel: out of memory for its work buffers")


def _ptr(x: torch.Tensor | None) -> int | None:
    return x.data_ptr() if x is not None else None


def unit_channel_stride(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """x in `dtype` with a unit stride on its last axis (a view when it already has one)."""
    if x is None:
        return None
    x = x.to(dtype)
    return x if x.stride(-1) == 1 else x.contiguous()


def mask_bytes(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A (batch, L) mask as one byte per position (bool already is)."""
    if mask is None:
        return None
    mask = mask.to(torch.bool)
    return mask.view(torch.uint8)


# ---- selective scan ---------------------------------------------------------------------


def _scan_args(u, delta, A, B, C, D, z, delta_bias, softplus, mask) -> ScanArgs:
    batch, length, channels = u.shape
    args = ScanArgs()
    args.batch, args.length, args.channels, args.states = batch, length, channels, A.shape[1]
    args.u, args.u_sb, args.u_sl = u.data_ptr(), u.stride(0), u.stride(1)
    args.delta, args.delta_sb, args.delta_sl = delta.data_ptr(), delta.stride(0), delta.stride(1)
    args.A = A.data_ptr()
    args.Bm, args.B_sb, args.B_sl = B.data_ptr(), B.stride(0), B.stride(1)
    args.Cm, args.C_sb, args.C_sl = C.data_ptr(), C.stride(0), C.stride(1)
    args.D = _ptr(D)
    if z is not None:
        args.z, args.z_sb, args.z_sl = z.data_ptr(), z.stride(0), z.stride(1)
    args.delta_bias = _ptr(delta_bias)
    args.delta_softplus = int(softplus)
    if mask is not None:
        args.mask, args.mask_sb, args.mask_sl = mask.data_ptr(), mask.stride(0), mask.stride(1)
    return args


class SelectiveScan(torch.autograd.Function):
    """The native selective scan; inputs already in one float dtype with unit channel stride."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, mask):
        out = torch.empty(u.shape, dtype=u.dtype)
        args = _scan_args(u, delta, A, B, C, D, z, delta_bias, softplus, mask)
        args.out = out.data_ptr()
        _call(library().nm_selective_scan_fwd, args, u.dtype == torch.float64)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, mask)
        ctx.softplus = softplus
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, mask = ctx.saved_tensors
        dout = dout.contiguous()
        batch, length, channels = u.shape
        states = A.shape[1]
        dtype = u.dtype
        du, ddelta = torch.empty_like(dout), torch.empty_like(dout)
        dz = torch.empty_like(dout) if z is not None else None
        dA = torch.empty(channels, states, dtype=dtype)
        dB = torch.empty(batch, length, states, dtype=dtype)
        dC = torch.empty(batch, length, states, dtype=dtype)
        dD = torch.empty(channels, dtype=dtype) if D is not None else None
        dbias = torch.empty(channels, dtype=dtype) if delta_bias is not None else None
        args = _scan_args(u, delta, A, B, C, D, z, delta_bias, ctx.softplus, mask)
        args.dout, args.du, args.ddelta = dout.data_ptr(), du.data_ptr(), ddelta.data_ptr()
        args.dz, args.dA, args.dB, args.dC = _ptr(dz), dA.data_ptr(), dB.data_ptr(), dC.data_ptr()
        args.dD, args.ddelta_bias = _ptr(dD), _ptr(dbias)
        _call(library().nm_selective_scan_bwd, args, dtype == torch.float64)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None, None


def selective_scan(u, delta, A, B, C, D, z, delta_bias, softplus, mask) -> torch.Tensor:
    """The native scan for any float dtype (others than float32/64 are computed in float32)."""
    dtype = compute_dtype(u)

    def prep(x: torch.Tensor | None) -> torch.Tensor | None:
        return unit_channel_stride(x, dtype)

    A = A.to(dtype).contiguous()
    D = D.to(dtype).contiguous() if D is not None else None
    delta_bias = delta_bias.to(dtype).contiguous() if delta_bias is not None else None
    out = SelectiveScan.apply(
        prep(u),
        prep(delta),
        A,
        prep(B),
        prep(C),
        D,
        prep(z),
        delta_bias,
        bool(softplus),
        mask_bytes(mask),
    )
    return out.to(u.dtype)


# ---- causal depthwise conv1d --------------------------------------------------------------


def _conv_args(x, weight_t, bias, mask, silu) -> ConvArgs:
    batch, length, channels = x.shape
    args = ConvArgs()
    args.batch, args.length, args.channels, args.width = batch, length, channels, weight_t.shape[0]
    args.x, args.x_sb, args.x_sl = x.data_ptr(), x.stride(0), x.stride(1)
    args.weight, args.bias = weight_t.data_ptr(), _ptr(bias)
    if mask is not None:
        args.mask, args.mask_sb, args.mask_sl = mask.data_ptr(), mask.stride(0), mask.stride(1)
    args.silu = int(silu)
    return args


class CausalConv1d(torch.autograd.Function):
    """The native causal depthwise conv; weight_t is (K, channels) contiguous."""

    @staticmethod
    def forward(ctx, x, weight_t, bias, mask, silu):
        out = torch.empty(x.shape, dtype=x.dtype)
        args = _conv_args(x, weight_t, bias, mask, silu)
        args.out = out.data_ptr()
        _call(library().nm_causal_conv1d_fwd, args, x.dtype == torch.float64)
        ctx.save_for_backward(x, weight_t, bias, mask)
        ctx.silu = silu
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight_t, bias, mask = ctx.saved_tensors
        dout = dout.contiguous()
        dx = torch.empty_like(dout)
        dweight_t = torch.empty_like(weight_t)
        dbias = torch.empty_like(bias) if bias is not None else None
        args = _conv_args(x, weight_t, bias, mask, ctx.silu)
        args.dout, args.dx, args.dweight, args.dbias = (
            dout.data_ptr(),
            dx.data_ptr(),
            dweight_t.data_ptr(),
            _ptr(dbias),
        )
        _call(library().nm_causal_conv1d_bwd, args, x.dtype == torch.float64)
        return dx, dweight_t, dbias, None, None


def causal_conv1d(x, weight, bias, mask, silu) -> torch.Tensor:
    """x (batch, L, channels); weight (channels, K) (or nn.Conv1d's (channels, 1, K))."""
    dtype = compute_dtype(x)
    weight_t = weight.reshape(weight.shape[0], -1).t().to(dtype).contiguous()  # (K, channels)
    bias = bias.to(dtype).contiguous() if bias is not None else None
    out = CausalConv1d.apply(
        unit_channel_stride(x, dtype), weight_t, bias, mask_bytes(mask), bool(silu)
    )
    return out.to(x.dtype)
