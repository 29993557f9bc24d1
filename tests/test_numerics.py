"""Precision and determinism settings, resolved without a GPU; the identity of a CUDA configuration."""

import dataclasses

import pytest
import torch

from weightspace import numerics
from weightspace.config import ParamError, build_config


@pytest.mark.parametrize("device, precision, tf32, matmul, bf16", [
    ("cuda", "fp32", False, "highest", False),
    ("cuda", "tf32", True, "high", False),
    ("cuda", "bf16", False, "highest", True),
    ("cpu", "fp32", False, "highest", False),
    ("cpu", "bf16", False, "highest", True),
])
def test_fp32_is_fp32_everywhere_and_tf32_is_an_explicit_opt_in(device, precision, tf32, matmul, bf16):
    n = numerics.resolve(device, precision, cpu_flags={"avx512_bf16"})
    assert (n.allow_tf32, n.matmul_precision, n.autocast_bf16) == (tf32, matmul, bf16)
    assert n.cudnn_deterministic and not n.cudnn_benchmark
    assert n.as_params() == {"allow_tf32": str(tf32), "matmul_precision": matmul,
                             "cudnn_deterministic": "True", "cudnn_benchmark": "False"}


def test_apply_sets_torch_flags():
    old = (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        numerics.resolve("cuda", "tf32").apply()
        assert torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "high"
        numerics.resolve("cuda", "fp32").apply()
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old[0], old[1]
        torch.set_float32_matmul_precision(old[2])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old[3], old[4]


def test_tf32_on_a_cpu_is_refused_in_one_line():
    with pytest.raises(ParamError, match=r"^parameter 'precision': tf32 needs a CUDA device"):
        numerics.resolve("cpu", "tf32")


def test_bf16_warns_once_only_on_a_cpu_without_native_bf16(capsys, monkeypatch):
    monkeypatch.setattr(numerics, "_warned", set())
    numerics.resolve("cpu", "bf16", cpu_flags={"avx512_bf16", "avx2"})
    assert capsys.readouterr().err == ""
    numerics.resolve("cpu", "bf16", cpu_flags={"avx2", "fma"})
    numerics.resolve("cpu", "bf16", cpu_flags={"avx2", "fma"})
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "precision=bf16" in err[0] and "avx512_bf16" in err[0]
    numerics.resolve("cuda", "bf16", cpu_flags=set())  # a GPU has its own bf16 units
    assert numerics.native_bf16({"amx_bf16"}) and not numerics.native_bf16({"avx512f", "avx512_vnni"})


def test_a_cuda_configuration_has_its_own_identity_and_cpu_groups_keep_theirs():
    cpu = build_config("same_init", {"shuffle_seed": "3", "width": "0.5", "device": "cpu"})
    assert cpu.group == "same_init-a8839a4db07c"  # the hash from before the device entered the identity
    gpu = dataclasses.replace(cpu, device="cuda")
    assert gpu.device_type == "cuda" and gpu.group != cpu.group and gpu.run_key != cpu.run_key
    assert dataclasses.replace(cpu, device="cuda:1").group == gpu.group  # which GPU is plumbing
    assert dataclasses.replace(cpu, device="auto").device_type == (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    tf = build_config(
        "same_init", {"shuffle_seed": "3", "width": "0.5", "precision": "tf32", "device": "cuda"}
    )
    assert tf.group not in (gpu.group, cpu.group)
