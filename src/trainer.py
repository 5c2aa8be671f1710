"""
Simple training loop; boilerplate that could apply to any arbitrary neural network,
so nothing in this file really has anything to do with GPT specifically.

As in the course's minGPT fork: AdamW with weight decay on every parameter whose
name lacks "bias", grad-norm clipping, batches in file order, and a linear-warmup
cosine lr schedule driven by a running token count. Around it, a few visible
lines of speed (none changes what is computed beyond float rounding): autocast
(bf16 where native, a GradScaler only for fp16), padding-aware sub-batches on CPU
(sub_batches.py), batches made on a GPU (device_batches.py), the loss read back
every log_every steps, torch.compile on request, DistributedDataParallel under
torchrun. And a checkpoint every few minutes of wall time and on a signal
(checkpoint.py), resumable mid-epoch.
"""

import contextlib
import math
import signal
import time

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from torch.utils.data.dataloader import DataLoader
from tqdm import tqdm

import checkpoint
from dataset import CharCorruptionDataset
from device_batches import DeviceBatches
from sub_batches import weighted_parts
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
    ckpt_path = None  # written every ckpt_minutes and on SIGINT/SIGTERM/SIGHUP, for resuming
    ckpt_minutes = 5.0  # wall time between checkpoints (at a log point, mid-epoch too); 0: after every epoch
    save_every = 0  # >0: also keep a copy of the checkpoint every this many epochs, <ckpt_path>.epochE
    run_args = None  # what decides the run's computation (run.py): stored, and a resume with others refused
    shuffle = False  # the course's DataLoader keeps file order every epoch; True: a new order per epoch
    seed = 0  # the shuffled order of every epoch, when shuffle is on
    num_workers = 0  # DataLoader worker processes; 0 loads in the training process
    writer = None  # a tensorboard SummaryWriter, or None
    # speed (hardware.speed_settings; none of these changes what is computed, up to float rounding)
    device = "cpu"
    dtype = "float32"  # or "bfloat16" / "float16": autocast precision of the forward pass
    fused_adamw = True  # AdamW's fused kernel: one pass over the parameters (False: the course's)
    sub_batches = 1  # >1: sort rows by length and trim the padded tail of each sub-batch
    device_batches = False  # make each pretraining batch on the device (DeviceBatches), not by a DataLoader
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
    # gains kept the handout's pretraining on its loss plateau (0-5% dev instead of 22-28%; results/README.md).
    no_decay = ["bias", "LayerNorm.weight"]
    decay, exempt = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (exempt if any(nd in n for nd in no_decay) else decay).append(p)
    optim_groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]
    fused = config.fused_adamw and torch.device(config.device).type in ("cuda", "cpu")
    return torch.optim.AdamW(optim_groups, lr=config.learning_rate, betas=config.betas, fused=fused or None)


def compile_model(model, cuda_graphs=False):
    """
    torch.compile for training: static shapes, so that a smaller last batch of an epoch compiles
    once more rather than dynamically; CUDA graphs on a GPU. Inductor's pattern matcher is off:
    its attention patterns rewrite a softmax-dropout-matmul into scaled_dot_product_attention with
    dropout inside, which training keeps out of SDPA's kernels (attention.py; tested on the
    compiled graph). The other patterns it would apply go too: a cost measured by the GPU check.
    """
    import torch._inductor.config as inductor_config  # here: loading inductor takes seconds
    inductor_config.pattern_matcher = False
    return torch.compile(model, dynamic=False, mode="reduce-overhead" if cuda_graphs else None)


class Interrupted(Exception):
    """Training stopped by SIGINT, SIGTERM or SIGHUP after writing its checkpoint."""


# an SSH session that drops sends SIGHUP: checkpoint as for Ctrl-C (SIGINT) or a scheduler's SIGTERM
STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])


class Trainer:

    def __init__(self, model, train_dataset, test_dataset, config):
        self.raw_model = model.to(config.device)
        self.model = self.raw_model
        # CUDA graphs replay a launch-bound GPU step as one launch; static shapes, so a smaller
        # last batch of an epoch compiles once more rather than dynamically
        self.cuda_graphs = config.compile and torch.device(config.device).type == "cuda"
        if config.compile:
            self.model = compile_model(self.model, self.cuda_graphs)
        if config.world_size > 1:
            # gradients are averaged across ranks during backward
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[config.device] if config.device.startswith("cuda") else None)
        self.train_dataset = train_dataset
        self.test_dataset = test_dataset
        self.config = config
        self.device = config.device
        self.device_batches = None
        if config.device_batches and isinstance(train_dataset, CharCorruptionDataset):
            self.device_batches = DeviceBatches(train_dataset)
        self.optimizer = configure_optimizer(self.raw_model, config)
        # only fp16 needs loss scaling; for the others the scaler is a no-op
        self.scaler = torch.amp.GradScaler(torch.device(self.device).type, enabled=config.dtype == "float16")
        self.tokens = 0  # counter used for learning rate decay
        self.step = 0  # optimizer steps so far
        self.epoch = 0  # epochs completed
        self.batches_done = 0  # batches of the current epoch already trained (resuming mid-epoch)
        self.stop_signal = None
        self.saved_at = time.time()  # when the last checkpoint was written (or training began)

    def autocast(self):
        dtype = getattr(torch, self.config.dtype)
        return torch.autocast(device_type=torch.device(self.device).type, dtype=dtype,
                              enabled=self.config.dtype != "float32")

    def train_step(self, x, y):
        """One AdamW step on the batch (x, y). Returns its loss (a tensor on the device) and the new lr."""
        config = self.config
        # zero the gradients (with CUDA graphs, this step may overwrite the last one's outputs)
        self.optimizer.zero_grad(set_to_none=True)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

        # forward and backward, over sub-batches on CPU; each part's loss weighted by its share of the
        # batch's real targets and, under DDP, by this rank's share of the global batch's, so that the
        # summed gradient (DDP: averaged over ranks) is the gradient of the global batch's mean loss
        parts = weighted_parts(x, y, config.sub_batches)
        rank_share = self.rank_share(y)
        loss = torch.zeros((), device=x.device)  # stays 0 for a batch without a real target
        for k, (xk, yk, share) in enumerate(parts):
            # DDP all-reduces the gradients during the last part's backward only
            last = k == len(parts) - 1
            with contextlib.nullcontext() if last or config.world_size == 1 else self.model.no_sync():
                with self.autocast():
                    _, part_loss = self.model(xk, yk)
                self.scaler.scale(part_loss * (share * rank_share)).backward()
            loss += part_loss.detach() * share

        # clip the gradient's norm (unscaled first: fp16's loss scaling)
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_norm_clip)

        # step
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.batches_done += 1

        # schedule: count every target position of the global batch, pads included (the course's rule)
        lr = config.learning_rate
        if config.lr_decay:
            self.tokens += y.numel() * config.world_size
            lr = config.learning_rate * lr_multiplier(self.tokens, config)
            for param_group in self.optimizer.param_groups:
                param_group["lr"] = lr
        return loss, lr

    def rank_share(self, y):
        """world_size x this rank's share of the global batch's real targets (1 without DDP), on the device."""
        if self.config.world_size == 1:
            return 1.0
        mine = (y != 0).sum().float()
        total = mine.clone()
        dist.all_reduce(total)
        return self.config.world_size * mine / total.clamp(min=1.0)

    def save_checkpoint(self):
        """
        Everything needed to continue exactly where training is now, written atomically by
        rank 0. Every rank calls it: each one's random generators are gathered, so that a
        resumed rank continues its own corruption and dropout streams.
        """
        if self.config.ckpt_path is None:
            return
        rng = [checkpoint.rng_state(self.device)]
        if self.config.world_size > 1:
            rng = [None] * self.config.world_size
            dist.all_gather_object(rng, checkpoint.rng_state(self.device))
        if self.config.rank != 0:
            return
        state = {
            "format": checkpoint.FORMAT, "run": self.config.run_args,
            "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "tokens": self.tokens, "step": self.step,
            "epoch": self.epoch, "batches_done": self.batches_done, "rng": rng,
        }
        save_atomic(state, self.config.ckpt_path)
        self.saved_at = time.time()
        if self.snapshot_due():
            # snapshots along the schedule: resumable, and what bench/snapshot_curve.py reads
            save_atomic(state, f"{self.config.ckpt_path}.epoch{self.epoch}")

    def snapshot_due(self):
        """Whether training is at the end of an epoch whose snapshot --save_every keeps."""
        every = self.config.save_every
        return bool(every) and self.batches_done == 0 and self.epoch > 0 and self.epoch % every == 0

    def load_checkpoint(self, path):
        """Continue from a checkpoint of this same run (checkpoint.CheckpointError otherwise)."""
        state = checkpoint.load(path, self.device)
        checkpoint.check_same_run(state["run"] or {}, self.config.run_args or {})
        if len(state["rng"]) != self.config.world_size:
            raise checkpoint.CheckpointError(f"was written by {len(state['rng'])} processes, but this run has "
                                             f"{self.config.world_size}: resume with as many")
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.tokens, self.step = state["tokens"], state["step"]
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]
        checkpoint.set_rng_state(state["rng"][self.config.rank], self.device)

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
        if self.device_batches is not None:
            order = torch.tensor(order, dtype=torch.long, device=self.device)
            for i in range(0, len(order), rows_per_rank):
                yield self.device_batches(order[i:i + rows_per_rank])
            return
        # creating the loader's iterator draws a seed; from torch's global generator, it would also shift
        # dropout's stream, and a run resumed mid-epoch would draw once more than an uninterrupted one
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + self.epoch)
        for x, y in DataLoader(self.train_dataset, batch_size=rows_per_rank, sampler=order, generator=generator,
                               num_workers=config.num_workers, pin_memory=self.device.startswith("cuda")):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _on_signal(self, signum, frame):
        self.stop_signal = signum

    def stop_or_save(self):
        """
        (stop, save): whether every rank stops now (a signal came), and whether every rank
        checkpoints now (ckpt_minutes have passed since the last checkpoint). Under torchrun a
        signal reaches the ranks at different steps and their clocks differ; a rank that
        stopped or saved alone would leave the others waiting in a collective forever, so the
        ranks agree (one rank's stop or save is all's), at the same step.
        """
        minutes = self.config.ckpt_minutes
        stop = self.stop_signal is not None
        save = minutes > 0 and time.time() - self.saved_at >= minutes * 60
        if self.config.world_size > 1:
            flags = torch.tensor([float(stop), float(save)], device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            stop, save = (bool(f) for f in flags.tolist())
            if stop and self.stop_signal is None:
                self.stop_signal = signal.SIGTERM  # another rank's signal; that rank names its own
        return stop, save

    def total_steps(self):
        """Optimizer steps of the whole run."""
        config = self.config
        rows = len(DistributedSampler(self.train_dataset, num_replicas=config.world_size, rank=config.rank))
        return config.max_epochs * math.ceil(rows / (config.batch_size // config.world_size))

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
        pbar = tqdm(total=self.total_steps(), initial=self.step, disable=config.rank != 0, dynamic_ncols=True,
                    unit="step", smoothing=0.1)
        # a signal finishes the current step, then we checkpoint and stop
        handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        start, start_step, chars, unlogged = time.time(), self.step, 0, []
        try:
            while self.epoch < config.max_epochs:
                self.model.train(True)
                for x, y in self.epoch_batches():
                    unlogged.append(self.train_step(x, y))
                    chars = chars + (y != 0).sum() * config.world_size  # stays on the device until logged
                    # under torchrun the ranks check for a stop at log points only: each check is a collective
                    if len(unlogged) >= config.log_every or (config.world_size == 1 and self.stop_signal):
                        self.log(pbar, unlogged, float(chars) / (time.time() - start))
                        unlogged = []
                        if self.step - start_step == max(10, config.log_every):
                            self.print_expected_time(pbar, start, start_step)
                        stop, save = self.stop_or_save()
                        if stop or save:
                            self.save_checkpoint()
                        if stop:
                            raise Interrupted(signal.Signals(self.stop_signal).name)
                if unlogged:
                    self.log(pbar, unlogged, float(chars) / (time.time() - start))
                    unlogged = []
                self.epoch += 1
                self.batches_done = 0
                # the end of the last epoch writes none: the caller saves the params (13 MB) first, and
                # a checkpoint (40 MB) only if they cannot be written (run.py)
                last = self.epoch == config.max_epochs
                if self.snapshot_due() or (config.ckpt_minutes == 0 and not last):
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
        """Once, after the first steps: how long the rest of the run will take at this pace."""
        rate = (self.step - start_step) / max(time.time() - start, 1e-9)
        if self.config.rank == 0:
            pbar.write(f"expected time of the whole run: about {duration((pbar.total - self.step) / rate)} "
                       f"more ({pbar.total - self.step:,} steps at {rate:.2f} steps/s)")


def duration(seconds):
    """3 h 05 min, 12 min, 40 s."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
