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
        # oneDNN computes bf16 (fp16) in hardware only with the AVX512-BF16 (AVX512-FP16) or AMX
        # instructions; without them it emulates the type, no faster than float32 and on AVX2 many
        # times slower (results/README.md, "Speed notes"). Not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        # it asks only for AVX-512 (bw, vl, dq), which Skylake-SP to Ice Lake have without BF16.
        # ATEN_CPU_CAPABILITY=avx2 imitates an AVX2-only CPU; a torch that cannot say: float32
        if torch.backends.cpu.get_cpu_capability() == "AVX2" or not hasattr(torch.cpu, "get_capabilities"):
            return False
        kind = "bf16" if dtype == "bfloat16" else "fp16"
        has = torch.cpu.get_capabilities()
        return bool(has.get(f"avx512_{kind}") or has.get(f"amx_{kind}"))
    return True


def pick_dtype(requested, device="cpu", plain=False):
    """
    The autocast precision of training. auto: bf16 on a CPU that computes it, else
    float32, GPUs included (bf16 and fp16 on a GPU only on request: --dtype).
    """
    if plain:
        return "float32"
    if requested == "auto":
        # bf16 only on CPU, where it tracked float32's loss curve under the course's decay rule and
        # doubles the step rate. On an H100 the handout's pretraining on the bf16 default path never
        # left its loss plateau, then rose to 3.4 (one run, cause not isolated), and its step was no
        # faster than float32's (results/gpu/README.md); fp16 was less accurate on the plateau (results/README.md)
        native = device == "cpu" and native_dtype("bfloat16", device)
        return "bfloat16" if native else "float32"
    if not native_dtype(requested, device):
        print(f"run.py: note: this {device} has no {requested} arithmetic of its own (emulated, no faster "
              f"than float32): training in float32", file=sys.stderr)
        return "float32"
    return requested


def sub_batches_for(rows, dtype="float32", device="cpu"):
    """
    How many sub-batches (sub_batches.py) to cut a batch of `rows` rows into: on CPU
    about 16 rows each in float32 and 32 in bf16, 2 to 8 of them (measured fastest:
    results/README.md, "Speed notes"). A GPU takes the whole batch: its step is bound
    by kernel launches, and cutting needs the row lengths on the host.
    """
    if torch.device(device).type != "cpu":
        return 1
    return max(2, min(8, rows // (16 if dtype == "float32" else 32)))


def speed_settings(device, dtype, rows, plain=False, compile=False):
    """
    TrainerConfig's speed fields for a device and precision (rows: a process's batch).
    plain: the course's computation (whole batches, torch's default AdamW, a DataLoader).
    """
    return dict(
        dtype=dtype, compile=compile,
        fused_adamw=not plain,
        sub_batches=1 if plain or compile else sub_batches_for(rows, dtype, device),
        # a GPU makes its pretraining batches itself and reads the loss back every 25 steps,
        # so that the host queues work ahead of the device instead of waiting for it
        device_batches=device.startswith("cuda") and not plain,
        log_every=1 if device == "cpu" else 25)
