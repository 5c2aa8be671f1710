"""
A simple training loop: AdamW, grad-norm clipping, and an optional linear-warmup
cosine learning-rate schedule driven by the number of tokens seen.
"""

import math

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm


class TrainerConfig:
    max_epochs = 10
    max_steps = None  # stop early after this many steps (quick runs)
    batch_size = 64
    learning_rate = 3e-4
    betas = (0.9, 0.95)
    grad_norm_clip = 1.0
    weight_decay = 0.1
    lr_decay = False
    warmup_tokens = 375e6
    final_tokens = 260e9
    num_workers = 0

    def __init__(self, **kwargs):
        for k, v in kwargs.items():
            setattr(self, k, v)


class Trainer:

    def __init__(self, model, train_dataset, config):
        self.model = model
        self.train_dataset = train_dataset
        self.config = config
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)

    def train(self):
        model, config = self.model, self.config
        # weight decay on matrices and embeddings only
        params = list(model.parameters())
        optimizer = torch.optim.AdamW([
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ], lr=config.learning_rate, betas=config.betas)
        tokens, step = 0, 0
        for epoch in range(config.max_epochs):
            loader = DataLoader(self.train_dataset, shuffle=True, batch_size=config.batch_size,
                                num_workers=config.num_workers)
            pbar = tqdm(enumerate(loader), total=len(loader))
            for it, (x, y) in pbar:
                x, y = x.to(self.device), y.to(self.device)
                _, loss = model(x, y)
                model.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_norm_clip)
                optimizer.step()
                lr = config.learning_rate
                if config.lr_decay:
                    tokens += (y >= 0).sum().item()
                    if tokens < config.warmup_tokens:
                        mult = tokens / max(1, config.warmup_tokens)
                    else:
                        progress = (tokens - config.warmup_tokens) / max(1, config.final_tokens - config.warmup_tokens)
                        mult = max(0.1, 0.5 * (1.0 + math.cos(math.pi * progress)))
                    lr = config.learning_rate * mult
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                pbar.set_description(f"epoch {epoch + 1} iter {it}: train loss {loss.item():.5f}. lr {lr:e}")
                step += 1
                if config.max_steps is not None and step >= config.max_steps:
                    return
