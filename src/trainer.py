"""
Simple training loop; boilerplate that could apply to any arbitrary neural network,
so nothing in this file really has anything to do with GPT specifically.

As in the course's minGPT fork: AdamW with weight decay on every parameter whose
name lacks "bias", grad-norm clipping, batches in file order, and a linear-warmup
cosine lr schedule driven by a running token count.
On top of it, exact up to float rounding:
- padding-aware sub-batches (`trim`): rows are sorted by the position of their
  last real target and cut into a few sub-batches, each trimmed to its own
  longest row. The model is causal, so logits before the cut do not change; the
  sub-batch losses are weighted by their share of the batch's real targets, so
  the accumulated gradient is the full batch's.
- autocast to bf16 (run.py's default where the hardware has it, see hardware.pick_dtype), or
  fp16 with a grad scaler.
torch.compile is opt-in (config.compile, run.py --compile): on 2 CPU cores a compiled
bf16 step took 0.61 s (dynamic shapes, sub-batches) and 1.36-1.51 s (static, whole
batch) against 0.49 s eager, after 18-44 s of compiling; on a GPU it is timed by
bench/gpu_check.sh.
"""

import contextlib
import math
import os
import pickle
import random
import signal
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from torch.utils.data.dataloader import DataLoader
from tqdm import tqdm

from utils import save_atomic


class TrainerConfig:
    # optimization parameters
    max_epochs = 10
    batch_size = 64
    learning_rate = 3e-4
    betas = (0.9, 0.95)
    grad_norm_clip = 1.0
    weight_decay = 0.1  # on every parameter but biases (the course's name rule, see configure_optimizer)
    # learning rate decay params: linear warmup followed by cosine decay to 10% of original
    lr_decay = False
    warmup_tokens = 375e6
    final_tokens = 260e9
    # checkpoint settings
    ckpt_path = None  # written after every epoch and on SIGINT/SIGTERM, for resuming
    save_every = 0  # >0: also keep a copy of the checkpoint every this many epochs, <ckpt_path>.epochE
    shuffle = False  # the course's DataLoader keeps file order every epoch; True: a new order per epoch
    seed = 0  # the shuffled order of every epoch, when shuffle is on
    num_workers = 0  # DataLoader worker processes; 0 loads in the training process
    writer = None  # a tensorboard SummaryWriter, or None
    # speed (none of these changes what is computed, up to float rounding)
    device = "cpu"
    dtype = "float32"  # or "bfloat16" / "float16": autocast precision of the forward pass
    sub_batches = 1  # >1: sort rows by length and trim the padded tail of each sub-batch
    device_batches = False  # make each batch on the device (dataset.corrupt_batch) instead of a DataLoader
    log_every = 1  # read the loss back from the device every this many steps (the GPU need not wait)
    compile = False  # torch.compile the model (CUDA graphs on a GPU); needs whole batches (sub_batches = 1)
    # distributed data parallel (set by run.py under torchrun): each rank takes batch_size / world_size rows
    rank = 0
    world_size = 1
    # what decides the run's computation (run.py: variant, batch size, lrs, epochs, seed, corpus hash...):
    # stored in the checkpoint, and a resume with other values is refused
    run_args = None

    def __init__(self, **kwargs):
        for k, v in kwargs.items():
            setattr(self, k, v)


def lr_multiplier(tokens, config):
    """
    The course schedule: linear warmup over warmup_tokens, then a cosine with a
    floor of 0.1. progress is not clamped at 1, so past final_tokens the cosine
    rises again (the handout's mid-training plateau and second descent).
    """
    if tokens < config.warmup_tokens:
        return float(tokens) / float(max(1, config.warmup_tokens))
    progress = float(tokens - config.warmup_tokens) / float(max(1, config.final_tokens - config.warmup_tokens))
    return max(0.1, 0.5 * (1.0 + math.cos(math.pi * progress)))


def configure_optimizer(model, config):
    # The course's rule, by name: no decay where the name contains "bias" or "LayerNorm.weight".
    # The LayerNorms are named ln1, ln2, ln_f, so the second pattern matches nothing: LayerNorm
    # gains, embeddings, pos_emb and the Perceiver's C are all decayed. Keep it so: exempting the
    # gains kept the handout's pretraining on its loss plateau (0-5% dev instead of 22-28%; SPEC 8).
    no_decay = ["bias", "LayerNorm.weight"]
    decay, exempt = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (exempt if any(nd in n for nd in no_decay) else decay).append(p)
    optim_groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]
    # the fused kernel (CUDA and CPU) does the whole update in one pass over the parameters
    fused = torch.device(config.device).type in ("cuda", "cpu")
    return torch.optim.AdamW(optim_groups, lr=config.learning_rate, betas=config.betas, fused=fused)


def target_lengths(y):
    """1 + position of the last real (non-PAD) target of each row; 0 for a row without one."""
    positions = torch.arange(1, y.size(1) + 1, device=y.device)
    return ((y != 0) * positions).amax(dim=1)


def sub_batches_for(rows, dtype="float32", device="cpu"):
    """
    How many sub-batches to cut `rows` rows into. Measured on 2 CPU cores with
    pretraining rows, whole run.py epochs from the same checkpoint: in float32,
    128 rows in 8 sub-batches ran 1.02-1.05 steps/s against 0.92-0.94 for 4
    (12 and 16: 1.00-1.05). In bf16, sub-batches of about 32 rows are fastest:
    at 128 rows, 4 took 0.59 s a step against 0.73 s for 8 (kernel overheads).
    A GPU takes the whole batch: its step is bound by kernel launches, not
    arithmetic, and cutting needs the row lengths on the host (an H100 ran the
    8 sub-batches' default at 11-12 steps/s against 32 for whole batches).
    """
    if torch.device(device).type != "cpu":
        return 1
    per_sub_batch = 16 if dtype == "float32" else 32
    return max(2, min(8, rows // per_sub_batch))


def split_by_length(x, y, n):
    """
    Sort the rows by target length and cut them into at most n sub-batches, each
    trimmed to its longest row rounded up to a multiple of 16. Returns
    [(x_i, y_i, real_targets_i)]; rows without any real target are dropped (they
    contribute nothing to the loss).
    """
    lengths = target_lengths(y)
    order = torch.argsort(lengths)
    lengths = lengths[order].tolist()
    x, y = x[order], y[order]
    first = next((i for i, l in enumerate(lengths) if l > 0), len(lengths))
    rows = len(lengths) - first
    parts = []
    for k in range(n):
        lo, hi = first + rows * k // n, first + rows * (k + 1) // n
        if hi > lo:
            # trimmed to a multiple of 16: with a length per sub-batch drawn anew every step, glibc's
            # heap fragments and malloc grew to 12% of a 2-thread CPU step after ~300 steps (1.65 -> 1.30
            # steps/s); 8 sizes are reused instead (1.67 steps/s throughout, measured side by side)
            t = min(y.size(1), -(-lengths[hi - 1] // 16) * 16)
            yk = y[lo:hi, :t]
            parts.append((x[lo:hi, :t], yk, int((yk != 0).sum())))
    return parts


class Interrupted(Exception):
    """Training stopped by SIGINT, SIGTERM or SIGHUP after writing its checkpoint."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: unreadable, of an older format, or of another run."""


CHECKPOINT_FORMAT = 2  # 2: loads with weights_only=True (tensors and plain numbers only), RNG states per rank

# an SSH session that drops sends SIGHUP: checkpoint as for Ctrl-C (SIGINT) or a scheduler's SIGTERM
STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])


def load_checkpoint_file(path, device="cpu"):
    """
    A checkpoint's contents, loaded with weights_only=True: a crafted file cannot run code
    when unpickled. Older checkpoints held numpy objects, which only a full unpickling reads.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError("holds objects other than tensors and plain numbers, so it cannot be loaded "
                              "safely (a checkpoint of an older version of this project?); delete it to "
                              "start over") from None
    except Exception as e:  # zip, EOF and torch errors all mean: not a checkpoint
        raise CheckpointError(f"not a checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"not a checkpoint of this version (format {CHECKPOINT_FORMAT}); delete it to start over")
    return state


def rng_state(device):
    """This process's random generators, as tensors and plain numbers (see load_checkpoint_file)."""
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


class Trainer:

    def __init__(self, model, train_dataset, test_dataset, config):
        self.raw_model = model.to(config.device)
        self.model = self.raw_model
        # a handout step on a GPU is bound by kernel launches, which CUDA graphs replay as one;
        # static shapes, so a smaller last batch of an epoch compiles once more rather than dynamically
        self.cuda_graphs = config.compile and torch.device(config.device).type == "cuda"
        if config.compile:
            self.model = torch.compile(self.model, dynamic=False,
                                       mode="reduce-overhead" if self.cuda_graphs else None)
        if config.world_size > 1:
            # gradients are averaged across ranks during backward
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[config.device] if config.device.startswith("cuda") else None)
        self.train_dataset = train_dataset
        self.test_dataset = test_dataset
        self.config = config
        self.device = config.device
        self.optimizer = configure_optimizer(self.raw_model, config)
        # only fp16 needs loss scaling; for the others the scaler is a no-op
        self.scaler = torch.amp.GradScaler(torch.device(self.device).type, enabled=config.dtype == "float16")
        self.tokens = 0  # counter used for learning rate decay
        self.step = 0  # optimizer steps so far
        self.epoch = 0  # epochs completed
        self.batches_done = 0  # batches of the current epoch already trained (resuming mid-epoch)
        self.stop_signal = None

    def autocast(self):
        enabled = self.config.dtype != "float32"
        dtype = getattr(torch, self.config.dtype)
        return torch.autocast(device_type=torch.device(self.device).type, dtype=dtype, enabled=enabled)

    def forward_backward(self, x, y):
        """Loss of the batch (mean over its real targets), its gradient accumulated into .grad."""
        parts = split_by_length(x, y, self.config.sub_batches) if self.config.sub_batches > 1 else [(x, y, None)]
        total = sum(n for _, _, n in parts) if len(parts) > 1 else None
        share = 1.0
        if self.config.world_size > 1:
            # weight each rank by its share of the real targets, so that DDP's average
            # of the ranks' gradients is the gradient of the global batch mean
            mine = (y != 0).sum().float()
            n = mine.clone()
            dist.all_reduce(n)
            share = self.config.world_size * mine / n.clamp(min=1.0)
        batch_loss = torch.zeros((), device=x.device)  # stays 0 for a batch without a real target
        for k, (xk, yk, nk) in enumerate(parts):
            last = k == len(parts) - 1
            # DDP syncs gradients on the last part's backward only
            sync = contextlib.nullcontext() if last or self.model is self.raw_model else self.model.no_sync()
            with sync:
                with self.autocast():
                    _, loss = self.model(xk, yk)
                    if total is not None:
                        loss = loss * (nk / total)  # the parts' weighted losses sum to the batch mean
                self.scaler.scale(loss * share).backward()
            batch_loss += loss.detach()
        return batch_loss  # a tensor on the device: reading it would make the host wait for the GPU

    def save_checkpoint(self):
        """
        Everything needed to continue exactly where training is now, written atomically by
        rank 0. Every rank calls it: each one's random generators are gathered, so that a
        resumed rank continues its own corruption and dropout streams.
        """
        if self.config.ckpt_path is None:
            return
        rng = [rng_state(self.device)]
        if self.config.world_size > 1:
            rng = [None] * self.config.world_size
            dist.all_gather_object(rng, rng_state(self.device))
        if self.config.rank != 0:
            return
        state = {
            "format": CHECKPOINT_FORMAT, "run": self.config.run_args,
            "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "tokens": self.tokens, "step": self.step,
            "epoch": self.epoch, "batches_done": self.batches_done, "rng": rng,
        }
        save_atomic(state, self.config.ckpt_path)
        every = self.config.save_every
        if every and self.batches_done == 0 and self.epoch % every == 0:
            # snapshots along the schedule: resumable, and what bench/snapshot_curve.py reads
            save_atomic(state, f"{self.config.ckpt_path}.epoch{self.epoch}")

    def load_checkpoint(self, path):
        """Continue from a checkpoint of this same run (CheckpointError otherwise)."""
        state = load_checkpoint_file(path, self.device)
        saved, mine = state["run"] or {}, self.config.run_args or {}
        for key in mine:
            if key in saved and saved[key] != mine[key]:
                raise CheckpointError(f"was written by a run with {key} {saved[key]}, but this run has "
                                      f"{key} {mine[key]}: resume with the same arguments, or delete it to "
                                      f"start over")
        if len(state["rng"]) != self.config.world_size:
            raise CheckpointError(f"was written by {len(state['rng'])} processes, but this run has "
                                  f"{self.config.world_size}: resume with as many")
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.tokens, self.step = state["tokens"], state["step"]
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]
        set_rng_state(state["rng"][self.config.rank], self.device)

    def epoch_batches(self):
        """
        This epoch's batches not yet trained, on the device: file order, as the course's
        DataLoader (or, with config.shuffle, a fixed order per (seed, epoch)), so a
        resumed run sees the same batches.
        """
        config = self.config
        sampler = DistributedSampler(self.train_dataset, num_replicas=config.world_size, rank=config.rank,
                                     shuffle=config.shuffle, seed=config.seed)
        sampler.set_epoch(self.epoch)
        rows_per_rank = config.batch_size // config.world_size
        order = list(sampler)[self.batches_done * rows_per_rank:]
        if config.device_batches and hasattr(self.train_dataset, "corrupt_batch"):
            # span corruption of a whole batch in a few tensor operations on the device, drawn
            # from the same distribution as the dataset's rows (tests/test_corruption.py)
            order = torch.tensor(order, dtype=torch.long, device=self.device)
            for i in range(0, len(order), rows_per_rank):
                yield self.train_dataset.corrupt_batch(order[i:i + rows_per_rank])
            return
        # creating the loader's iterator draws a seed; from torch's global generator, it would also shift
        # dropout's stream, and a run resumed mid-epoch would draw once more than an uninterrupted one
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + self.epoch)
        for x, y in DataLoader(self.train_dataset, batch_size=rows_per_rank, sampler=order, generator=generator,
                               num_workers=config.num_workers, pin_memory=self.device.startswith("cuda")):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _on_signal(self, signum, frame):
        self.stop_signal = signum

    def optimizer_step(self, x, y):
        """One AdamW step on the batch (x, y), its gradient clipped; returns the batch's loss."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs may be reused
        loss = self.forward_backward(x, y)
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_norm_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.batches_done += 1
        return loss

    def update_lr(self, y):
        """The course's schedule, driven by every target position trained so far, pads included."""
        config = self.config
        if not config.lr_decay:
            return config.learning_rate
        self.tokens += y.numel() * config.world_size  # the global batch
        lr = config.learning_rate * lr_multiplier(self.tokens, config)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        return lr

    def progress_bar_total(self):
        """Optimizer steps of the whole run."""
        config = self.config
        rows = len(DistributedSampler(self.train_dataset, num_replicas=config.world_size, rank=config.rank))
        return config.max_epochs * math.ceil(rows / (config.batch_size // config.world_size))

    def progress_bar(self):
        return tqdm(total=self.progress_bar_total(), initial=self.step, disable=self.config.rank != 0,
                    dynamic_ncols=True, unit="step", smoothing=0.1)

    def log(self, pbar, steps, chars_per_s):
        """
        The course's tqdm description, and train/loss and train/lr to TensorBoard,
        for the (loss, lr) of each step since the last call.
        """
        losses = torch.stack([loss for loss, _ in steps]).tolist()  # one wait for the device for all of them
        lr = steps[-1][1]
        pbar.set_description(f"epoch {self.epoch + 1} iter {self.batches_done - 1}: "
                             f"train loss {losses[-1]:.5f}. lr {lr:e}")
        pbar.set_postfix_str(f"{chars_per_s:,.0f} chars/s", refresh=False)
        pbar.update(len(steps))
        if self.config.writer is not None:
            first = self.step - len(steps)
            for k, (loss, (_, lr)) in enumerate(zip(losses, steps)):
                self.config.writer.add_scalar("train/loss", loss, first + k)
                self.config.writer.add_scalar("train/lr", lr, first + k)

    def should_stop(self):
        """
        Whether every rank stops now. Under torchrun a signal reaches the ranks at different
        steps; a rank that stopped alone would leave the others waiting in a collective
        forever, so the ranks agree (a rank's stop stops all), at the same step.
        """
        stop = self.stop_signal is not None
        if self.config.world_size > 1:
            flag = torch.tensor([float(stop)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
            if stop and self.stop_signal is None:
                self.stop_signal = signal.SIGTERM  # another rank's signal; ours is named in its message
        return stop

    def train(self):
        config = self.config
        pbar = self.progress_bar()
        # a signal finishes the current step, then we checkpoint and stop
        handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        start, start_step, chars, unlogged = time.time(), self.step, 0, []
        try:
            while self.epoch < config.max_epochs:
                self.model.train(True)
                for x, y in self.epoch_batches():
                    loss = self.optimizer_step(x, y)
                    unlogged.append((loss, self.update_lr(y)))
                    chars = chars + (y != 0).sum() * config.world_size  # stays on the device until logged
                    # under torchrun the ranks check for a stop at log points only: each check is a collective
                    log_point = len(unlogged) >= config.log_every
                    if log_point or (config.world_size == 1 and self.stop_signal is not None):
                        self.log(pbar, unlogged, float(chars) / (time.time() - start))
                        unlogged = []
                        if self.step - start_step == max(10, config.log_every):
                            self.print_expected_time(pbar, start, start_step)
                        if self.should_stop():
                            self.save_checkpoint()
                            raise Interrupted(signal.Signals(self.stop_signal).name)
                if unlogged:
                    self.log(pbar, unlogged, float(chars) / (time.time() - start))
                    unlogged = []
                self.epoch += 1
                self.batches_done = 0
                self.save_checkpoint()
        finally:
            pbar.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        elapsed = max(time.time() - start, 1e-9)
        if config.rank == 0:
            steps = self.step - start_step
            print(f"trained {config.max_epochs} epochs, {self.step} steps ({steps} in this run) "
                  f"in {elapsed:.1f}s: {steps / elapsed:.2f} steps/s, {float(chars) / elapsed:,.0f} chars/s")

    def print_expected_time(self, pbar, start, start_step):
        """Once, after the first steps: how long the whole run will take at this pace."""
        rate = (self.step - start_step) / max(time.time() - start, 1e-9)
        left = (pbar.total - self.step) / rate
        if self.config.rank == 0:
            pbar.write(f"expected time of the whole run: about {duration(left)} more "
                       f"({pbar.total - self.step:,} steps at {rate:.2f} steps/s)")


def duration(seconds):
    """3 h 05 min, 12 min, 40 s."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
