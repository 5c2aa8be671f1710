"""
Run by tests/test_checkpoints.py under torchrun with 2 CPU processes (gloo):
an uninterrupted run, a run that only rank 1 is told to stop in the middle of
an epoch, and its resumption. Rank 0 prints RESULT lines that the test reads.
"""
import os
import signal
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
import dataset  # noqa: E402
import model  # noqa: E402
import trainer  # noqa: E402
import utils  # noqa: E402

WIKI = "\n".join(f"Person {i}. Person {i} was born in town {i % 9} and wrote {i * 3} books." for i in range(61))


class StopOnRank1(trainer.Trainer):
    """Rank 1 alone receives a stop signal after step stop_at, as a signal may reach one rank first."""
    stop_at = None

    def train_step(self, x, y):
        loss = super().train_step(x, y)
        if self.config.rank == 1 and self.step == self.stop_at:
            self.stop_signal = signal.SIGINT
        return loss


def run(ckpt, stop_at=None, resume=False):
    rank, world_size = dist.get_rank(), dist.get_world_size()
    utils.set_seed(rank)  # as run.py: seed + rank
    ds = dataset.CharCorruptionDataset(WIKI, 16)
    cfg = model.GPTConfig(ds.vocab_size, 16, n_layer=2, n_head=2, n_embd=16)  # dropout on
    tconf = trainer.TrainerConfig(max_epochs=3, batch_size=16, learning_rate=1e-3, lr_decay=True,
                                  warmup_tokens=100, final_tokens=5000, sub_batches=2, ckpt_path=ckpt,
                                  device="cpu", rank=rank, world_size=world_size)
    t = StopOnRank1(model.GPT(cfg), ds, None, tconf)
    t.stop_at = stop_at
    if resume:
        t.load_checkpoint(ckpt)
    try:
        t.train()
    except trainer.Interrupted:
        pass
    return t


def main():
    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    full = run(os.path.join(out, "full.ckpt"))
    # 61 rows, 8 a rank a step: 4 steps an epoch; step 6 is in the middle of the second epoch
    stopped = run(os.path.join(out, "cut.ckpt"), stop_at=6)
    steps = [None, None]
    dist.all_gather_object(steps, (stopped.epoch, stopped.batches_done, stopped.step))
    resumed = run(os.path.join(out, "cut.ckpt"), resume=True)
    same = all(torch.equal(a, b) for a, b in zip(full.raw_model.state_dict().values(),
                                                  resumed.raw_model.state_dict().values()))
    verdicts = [None, None]
    dist.all_gather_object(verdicts, same)
    if rank == 0:
        print("RESULT stopped at", steps)
        print("RESULT identical", verdicts)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
