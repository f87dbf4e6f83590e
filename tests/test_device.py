"""Device, precision and determinism helpers (CPU here; CUDA parts skip without CUDA)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from fedp13n.utils import device as dev

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")

FLAGS_PLAIN = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
FLAGS_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
FLAGS_AMX = "processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n"


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a Linux CPU with the given /proc/cpuinfo text."""

    def use(text: str) -> None:
        monkeypatch.setattr(dev.sys, "platform", "linux")
        monkeypatch.setattr(dev, "_read_cpuinfo", lambda: text)
        monkeypatch.setattr(dev, "_warned", set())

    return use


def test_resolve_device_cpu_and_auto():
    assert dev.resolve_device("cpu") == torch.device("cpu")
    assert dev.resolve_device(" CPU ") == torch.device("cpu")
    assert dev.resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert dev.resolve_device("auto").type == ("cuda" if CUDA else "cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu", ""])
def test_resolve_device_rejects_unknown_names(name):
    with pytest.raises(ValueError, match="available: cpu") as e:
        dev.resolve_device(name)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(CUDA, reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_resolve_device_without_cuda_says_what_there_is(name):
    with pytest.raises(ValueError, match=r"not available.*available: cpu"):
        dev.resolve_device(name)


def test_resolve_device_mps_when_absent(monkeypatch):
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    with pytest.raises(ValueError, match="'mps' is not available"):
        dev.resolve_device("mps")


@needs_cuda
def test_resolve_device_cuda():
    assert dev.resolve_device("cuda").type == "cuda"
    assert dev.resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="not available"):
        dev.resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize(
    "text,native", [(FLAGS_PLAIN, False), (FLAGS_BF16, True), (FLAGS_AMX, True), ("", False)]
)
def test_cpu_has_native_bf16_reads_cpuinfo_flags(cpu, text, native):
    cpu(text)
    assert dev.cpu_has_native_bf16() is native


def test_cpu_has_native_bf16_is_false_off_linux(monkeypatch):
    monkeypatch.setattr(dev.sys, "platform", "darwin")
    monkeypatch.setattr(dev, "_read_cpuinfo", lambda: FLAGS_BF16)
    assert dev.cpu_has_native_bf16() is False


def test_fp32_and_auto_change_nothing(cpu):
    cpu(FLAGS_BF16)
    for name in ("fp32", "auto", "FP32"):
        p = dev.resolve_precision(name, "cpu")
        assert p.name == "fp32"
        with p:
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_bf16_on_a_native_cpu_autocasts_without_warning(cpu):
    cpu(FLAGS_BF16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = dev.resolve_precision("bf16", "cpu")
    w = torch.nn.Parameter(torch.ones(3, 3))
    with p:
        out = torch.ones(2, 3) @ w
        assert out.dtype == torch.bfloat16
    assert w.dtype == torch.float32  # float32 master weights
    with p:  # reusable
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


def test_bf16_on_an_emulating_cpu_warns_once(cpu):
    cpu(FLAGS_PLAIN)
    with pytest.warns(RuntimeWarning, match="emulated"):
        p = dev.resolve_precision("bf16", "cpu")
    assert p.name == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dev.resolve_precision("bf16", "cpu")  # said once
    assert dev.resolve_precision("auto", "cpu").name == "fp32"  # auto never picks bf16


def test_tf32_is_a_cuda_setting():
    with pytest.raises(ValueError, match="tf32.*CUDA"):
        dev.resolve_precision("tf32", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        dev.resolve_precision("fp16", "cpu")


@needs_cuda
def test_tf32_context_sets_and_restores_cuda_flags():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with dev.resolve_precision("tf32", "cuda"):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@needs_cuda
def test_bf16_on_cuda_autocasts():
    with dev.resolve_precision("bf16", "cuda"):
        out = torch.ones(2, 3, device="cuda") @ torch.ones(3, 3, device="cuda")
    assert out.dtype == torch.bfloat16


def test_set_deterministic(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    old = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    old_det = torch.backends.cudnn.deterministic
    try:
        torch.backends.cudnn.benchmark = True
        dev.set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cudnn.deterministic is True
        dev.set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(old[0])
        torch.backends.cudnn.benchmark = old[1]
        torch.backends.cudnn.deterministic = old_det
