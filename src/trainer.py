"""
Simple training loop; boilerplate that could apply to any arbitrary neural network,
so nothing in this file really has anything to do with GPT specifically.

As in the course's minGPT fork: AdamW with weight decay on weights only, grad-norm
clipping, and a linear-warmup cosine lr schedule driven by a running token count.
On top of it, all exact or opt-in:
- padding-aware sub-batches (`trim`): rows are sorted by the position of their
  last real target and cut into a few sub-batches, each trimmed to its own
  longest row. The model is causal, so logits before the cut do not change; the
  sub-batch losses are weighted by their share of the batch's real targets, so
  the accumulated gradient is the full batch's.
- autocast to bf16 (CPU, recent GPUs) or fp16 with a grad scaler (older GPUs).
"""

import math
import time

import torch
from torch.utils.data.dataloader import DataLoader
from tqdm import tqdm


class TrainerConfig:
    # optimization parameters
    max_epochs = 10
    batch_size = 64
    learning_rate = 3e-4
    betas = (0.9, 0.95)
    grad_norm_clip = 1.0
    weight_decay = 0.1  # only applied on matmul weights
    # learning rate decay params: linear warmup followed by cosine decay to 10% of original
    lr_decay = False
    warmup_tokens = 375e6
    final_tokens = 260e9
    # checkpoint settings
    ckpt_path = None
    num_workers = 0  # DataLoader worker processes; 0 loads in the training process
    writer = None  # a tensorboard SummaryWriter, or None
    # speed (none of these changes what is computed, up to float rounding)
    device = "cpu"
    dtype = "float32"  # or "bfloat16" / "float16": autocast precision of the forward pass
    sub_batches = 1  # >1: sort rows by length and trim the padded tail of each sub-batch

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
    # decay matrices and embeddings (dim >= 2), not biases or LayerNorm weights
    params = [p for p in model.parameters() if p.requires_grad]
    optim_groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # foreach is the default multi-tensor AdamW; fused exists on CUDA and recent CPU builds
    fused = config.device == "cuda" or config.device == "cpu"
    return torch.optim.AdamW(optim_groups, lr=config.learning_rate, betas=config.betas, fused=fused)


def target_lengths(y):
    """1 + position of the last real (non-PAD) target of each row; 0 for a row without one."""
    positions = torch.arange(1, y.size(1) + 1, device=y.device)
    return ((y != 0) * positions).amax(dim=1)


def split_by_length(x, y, n):
    """
    Sort the rows by target length and cut them into at most n sub-batches, each
    trimmed to its longest row. Returns [(x_i, y_i, real_targets_i)]; rows
    without any real target are dropped (they contribute nothing to the loss).
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
            t = lengths[hi - 1]
            yk = y[lo:hi, :t]
            parts.append((x[lo:hi, :t], yk, int((yk != 0).sum())))
    return parts


class Trainer:

    def __init__(self, model, train_dataset, test_dataset, config):
        self.model = model
        self.train_dataset = train_dataset
        self.test_dataset = test_dataset
        self.config = config
        self.device = config.device
        self.model = self.model.to(self.device)
        self.tokens = 0  # counter used for learning rate decay
        self.step = 0

    def autocast(self):
        enabled = self.config.dtype != "float32"
        dtype = getattr(torch, self.config.dtype)
        return torch.autocast(device_type=torch.device(self.device).type, dtype=dtype, enabled=enabled)

    def forward_backward(self, x, y, scaler):
        """Loss of the batch (mean over its real targets), its gradient accumulated into .grad."""
        if self.config.sub_batches <= 1:
            with self.autocast():
                _, loss = self.model(x, y)
            scaler.scale(loss).backward()
            return loss.item()
        parts = split_by_length(x, y, self.config.sub_batches)
        total = sum(n for _, _, n in parts)
        batch_loss = 0.0
        for xk, yk, n in parts:
            with self.autocast():
                _, loss = self.model(xk, yk)
                loss = loss * (n / total)
            scaler.scale(loss).backward()
            batch_loss += loss.item()
        return batch_loss

    def train(self):
        model, config = self.model, self.config
        optimizer = configure_optimizer(model, config)
        # only fp16 needs loss scaling; for the others the scaler is a no-op
        scaler = torch.amp.GradScaler(torch.device(self.device).type, enabled=config.dtype == "float16")
        tokens_per_row = None

        def run_epoch(epoch):
            nonlocal tokens_per_row
            model.train(True)
            loader = DataLoader(self.train_dataset, shuffle=True, batch_size=config.batch_size,
                                num_workers=config.num_workers, pin_memory=self.device == "cuda")
            pbar = tqdm(enumerate(loader), total=len(loader))
            for it, (x, y) in pbar:
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                tokens_per_row = y.size(1)

                optimizer.zero_grad(set_to_none=True)
                loss = self.forward_backward(x, y, scaler)
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_norm_clip)
                scaler.step(optimizer)
                scaler.update()

                # decay the learning rate based on our progress
                if config.lr_decay:
                    self.tokens += y.numel()  # every target position, pads included, as in the course
                    lr = config.learning_rate * lr_multiplier(self.tokens, config)
                    for param_group in optimizer.param_groups:
                        param_group["lr"] = lr
                else:
                    lr = config.learning_rate

                pbar.set_description(f"epoch {epoch + 1} iter {it}: train loss {loss:.5f}. lr {lr:e}")
                if config.writer is not None:
                    config.writer.add_scalar("train/loss", loss, self.step)
                    config.writer.add_scalar("train/lr", lr, self.step)
                self.step += 1

        start = time.time()
        for epoch in range(config.max_epochs):
            run_epoch(epoch)
        elapsed = time.time() - start
        rows = config.max_epochs * len(self.train_dataset)
        print(f"trained {config.max_epochs} epochs, {self.step} steps in {elapsed:.1f}s "
              f"({rows / max(elapsed, 1e-9):.1f} rows/s)")
