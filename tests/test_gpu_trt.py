"""TensorRT first-contact helpers (issue #11 item 7) that need neither TensorRT nor a GPU."""
import pytest
import torch

from msf_export.tensorrt import ALIGNMENT, aligned, is_aligned, timing_cache_path, unavailable_reason, wheel_for_torch
from msf_train.errors import MsfError


def test_wheel_follows_torchs_cuda_major_version():
    assert wheel_for_torch("12.8") == "tensorrt-cu12"
    assert wheel_for_torch("13.0") == "tensorrt-cu13"
    with pytest.raises(MsfError, match="CPU build"):
        wheel_for_torch(None)


def test_timing_cache_is_keyed_by_tensorrt_version_and_gpu(tmp_path):
    a = timing_cache_path(tmp_path, "10.13.0", "NVIDIA H100 80GB HBM3", "9.0")
    assert a.parent == tmp_path and a.name == "tensorrt-timing-trt10.13.0-NVIDIA-H100-80GB-HBM3-sm9.0.cache"
    others = {timing_cache_path(tmp_path, "11.0.0", "NVIDIA H100 80GB HBM3", "9.0"),
              timing_cache_path(tmp_path, "10.13.0", "NVIDIA H200", "9.0"),
              timing_cache_path(tmp_path, "10.13.0", "NVIDIA H100 80GB HBM3", "8.9")}
    assert a not in others and len(others) == 3


def test_a_misaligned_slice_is_copied_to_an_aligned_buffer():
    raw = torch.zeros(8 * ALIGNMENT, dtype=torch.uint8)  # CPU allocations are only 64-byte aligned
    off = -raw.data_ptr() % ALIGNMENT
    base = raw[off:off + 4 * ALIGNMENT]
    assert is_aligned(base) and aligned(base).data_ptr() == base.data_ptr()  # no copy when not needed
    part = base[1:1 + ALIGNMENT]  # a slice one byte in: misaligned
    assert not is_aligned(part)
    fixed = aligned(part)
    assert is_aligned(fixed) and torch.equal(fixed, part)
    chunk = base.view(torch.float32)[21:]  # a decoder chunk: contiguous but offset by 21 floats
    assert not is_aligned(chunk) and is_aligned(aligned(chunk)) and torch.equal(aligned(chunk), chunk)


def test_availability_check_says_why_in_one_line():
    why = unavailable_reason()
    if why is None:
        pytest.skip("TensorRT and CUDA are present")
    assert "\n" not in why and ("tensorrt" in why.lower() or "CUDA" in why)
