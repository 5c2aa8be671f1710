"""
What a resumable run saves (Trainer.save_checkpoint) and how it is read back.
A checkpoint holds only tensors and plain values, so it loads with
torch.load(weights_only=True): a crafted file cannot run code. The random
generators are saved per torchrun rank, so that each rank resumes its own
corruption and dropout streams.
"""

import pickle
import random

import numpy as np
import torch

FORMAT = 2  # 1 (until 2026-11) pickled numpy's RNG state and loaded only with weights_only=False
# what Trainer.load_checkpoint reads: a checkpoint without one of them cannot be resumed
KEYS = ("run", "model", "optimizer", "scaler", "tokens", "step", "epoch", "batches_done", "rng")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: unreadable, of an older format, or of another run."""


def load(path, device="cpu"):
    """A checkpoint's contents; CheckpointError for anything but a checkpoint of this format."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError("holds objects other than tensors and plain numbers, so it cannot be loaded "
                              "safely (a checkpoint of an older version of this project?); delete it to "
                              "start over") from None
    except Exception as e:  # zip, EOF and torch errors all mean: not a checkpoint
        first = str(e).splitlines()[0][:80] if str(e) else ""
        raise CheckpointError(f"not a checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"not a checkpoint of this version (format {FORMAT}); delete it to start over")
    missing = [key for key in KEYS if key not in state]
    if missing:
        raise CheckpointError(f"damaged: it has no {', '.join(missing)}; delete it to start over")
    return state


def check_same_run(saved, mine):
    """The arguments that decide a run's computation (run.py's run_args) must match to resume."""
    for key in mine:
        if key in saved and saved[key] != mine[key]:
            raise CheckpointError(f"was written by a run with {key} {saved[key]}, but this run has "
                                  f"{key} {mine[key]}: resume with the same arguments, or delete it to start over")


def rng_state(device):
    """This process's random generators, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
            # the current device's generator only: all visible devices' would not fit fewer GPUs
            "cuda": torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None}


def set_rng_state(state, device):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
