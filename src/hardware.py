"""
Where run.py trains: the device, the autocast precision, and the processes
under torchrun. Nothing here changes what is computed, only where and how fast.
"""

import os
import sys

import torch
import torch.distributed as dist


def pick_device(name):
    """auto: cuda, then mps, then cpu."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def describe(device):
    """The device as a user would recognise it: cuda:0 (NVIDIA H100 80GB HBM3), cpu (2 threads, AVX512)."""
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device == "cpu":
        return f"cpu ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})"
    return device


def setup_distributed(device):
    """
    Under torchrun (WORLD_SIZE > 1): one process per device, NCCL between GPUs,
    gloo between CPU processes. Returns (device, (rank, world_size)).
    """
    if device == "cpu":
        # as attention sharpens, softmax produces subnormal floats, which x86 CPUs
        # process many times slower; flushing them to zero changes nothing visible
        torch.set_flush_denormal(True)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return device, (0, 1)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return device, (rank, world_size)


def native_dtype(dtype, device):
    """Whether the device does dtype's arithmetic in hardware (float32 always does)."""
    if dtype == "float32":
        return True
    if device.startswith("cuda"):
        # is_bf16_supported() counts emulation by default: True on a T4 or V100 (compute
        # capability 7.x), whose bf16 matmuls are emulated and lose SDPA's fused kernels
        return dtype == "float16" or torch.cuda.is_bf16_supported(including_emulation=False)
    if device == "cpu":
        # without AVX512-BF16/FP16 or AMX, oneDNN emulates them: a bf16 matmul ran ~40x slower than
        # float32 on an AVX2-only EPYC (0.7 against 32 GFLOP/s, one thread each). ATEN_CPU_CAPABILITY=avx2
        # (torch's switch to its AVX2 kernels) also means no bf16 here, so such a CPU can be imitated
        if torch.backends.cpu.get_cpu_capability() == "AVX2":
            return False
        if dtype == "bfloat16":
            return torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return torch.ops.mkldnn._is_mkldnn_fp16_supported()
    return True


def pick_dtype(requested, device="cpu", plain=False):
    """
    The autocast precision of training. auto: bf16 where the device computes it,
    else float32 (fp16 only on request: --dtype float16).
    """
    if plain:
        return "float32"
    if requested == "auto":
        # bf16: under the course's decay rule the attention logits stay in the hundreds, its gradient's
        # cosine to the exact one was 0.92-0.99 at epochs 40-60 of the handout's pretraining, and 10
        # epochs continued in bf16 tracked float32's loss within 0.005 (results/README.md). Not fp16 on
        # GPUs without bf16 (Colab's T4): on the plateau's params (epoch 20) its gradient's cosine was
        # 0.40 against bf16's 0.58, and no fp16 run was measured against the course's curve
        native = device.split(":")[0] in ("cpu", "cuda") and native_dtype("bfloat16", device)
        return "bfloat16" if native else "float32"
    if not native_dtype(requested, device):
        print(f"run.py: note: this {device} has no {requested} arithmetic of its own (emulated, many times "
              f"slower than float32): training in float32", file=sys.stderr)
        return "float32"
    return requested
