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
import random
import shutil
import signal
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from torch.utils.data.dataloader import DataLoader
from tqdm import tqdm


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
    """Training stopped by SIGINT or SIGTERM after writing its checkpoint."""


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
        """Everything needed to continue exactly where training is now, written atomically."""
        if self.config.ckpt_path is None or self.config.rank != 0:
            return
        state = {
            "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "tokens": self.tokens, "step": self.step,
            "epoch": self.epoch, "batches_done": self.batches_done,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        tmp = self.config.ckpt_path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.config.ckpt_path)
        every = self.config.save_every
        if every and self.batches_done == 0 and self.epoch % every == 0:
            # snapshots along the schedule: resumable, and what bench/snapshot_curve.py reads
            shutil.copyfile(self.config.ckpt_path, tmp)
            os.replace(tmp, f"{self.config.ckpt_path}.epoch{self.epoch}")

    def load_checkpoint(self, path):
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.tokens, self.step = state["tokens"], state["step"]
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"].cpu())
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([r.cpu() for r in rng["cuda"]])

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
        for x, y in DataLoader(self.train_dataset, batch_size=rows_per_rank, sampler=order,
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

    def progress_bar(self):
        config = self.config
        rows = len(DistributedSampler(self.train_dataset, num_replicas=config.world_size, rank=config.rank))
        batches_per_epoch = math.ceil(rows / (config.batch_size // config.world_size))
        return tqdm(total=config.max_epochs * batches_per_epoch, initial=self.step, disable=config.rank != 0,
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

    def train(self):
        config = self.config
        pbar = self.progress_bar()
        # a signal finishes the current step, then we checkpoint and stop
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        start, start_step, chars, unlogged = time.time(), self.step, 0, []
        try:
            while self.epoch < config.max_epochs:
                self.model.train(True)
                for x, y in self.epoch_batches():
                    loss = self.optimizer_step(x, y)
                    unlogged.append((loss, self.update_lr(y)))
                    chars = chars + (y != 0).sum() * config.world_size  # stays on the device until logged
                    if len(unlogged) >= config.log_every or self.stop_signal is not None:
                        self.log(pbar, unlogged, float(chars) / (time.time() - start))
                        unlogged = []
                    if self.stop_signal is not None:
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
