"""
A cheaper dropout mask for CPU training. nn.Dropout's bernoulli_ was a fifth
of a CPU training step; four 16-bit thresholds cut from each 64-bit random word
make the mask several times faster (results/README.md, "Speed notes"). The drop
probability is rounded to a multiple of 1/65536 (0.1 becomes 0.100006). On
CUDA, under torch.compile (inductor draws and fuses its own mask; the 16-bit
view of random words is eager-only), or when not training, it is nn.Dropout;
with config.plain, the course's nn.Dropout everywhere.
"""

import torch.nn as nn
import torch


class Dropout(nn.Dropout):

    def forward(self, x):
        if not self.training or self.p == 0 or x.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(x)
        n = x.numel()
        # (-2**63, None): all 64 bits; plain random_() leaves the top bit 0, and the
        # fourth 16-bit lane of every word would never be dropped
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None)
        keep = words.view(torch.int16)[:n].view(x.shape) >= round(self.p * 65536) - 32768
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


def dropout(p, config):
    """The course's nn.Dropout with config.plain, else the cheaper mask."""
    return nn.Dropout(p) if getattr(config, "plain", False) else Dropout(p)
