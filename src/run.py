"""
Pretrain, finetune or evaluate the assignment's models: the course's command
line, unchanged, with a few additions (see --help). On every device training
computes attention as the course does (explicit scores, softmax, dropout)
wherever dropout is active; a GPU uses scaled_dot_product_attention only to
evaluate, where no dropout applies (the one GPU pipeline trained through it,
bf16 on an H100, failed: results/gpu/README.md).
"""

import argparse
import hashlib
import math
import os
import re
import sys
import time

try:  # torch takes seconds to import: a Ctrl-C meanwhile is one line too, not the import machinery's traceback
    import torch
    import torch.distributed as dist

    import checkpoint
    import dataset
    import decoding
    import hardware
    import inputs
    import mixing
    import model
    import outputs
    import trainer
    import utils
except KeyboardInterrupt:
    print("\nrun.py: interrupted", file=sys.stderr)
    sys.exit(130)

BLOCK_SIZE = 128

# The handout's hyperparameters, by phase (the flags beyond the course's can change them). Every
# phase decays the lr: linear warm-up over 512 x 20 tokens, then a cosine that reaches its 10% floor
# after final_epochs epochs of the pretraining corpus and, not clamped, rises again (trainer.lr_multiplier):
# 200 in the 2023 handout (vanilla, perceiver); the 2024-25 handout's rope pretraining reaches its
# floor at its last epoch, 650, and finetunes with 200.
HANDOUT = {
    "pretrain": dict(max_epochs=650, batch_size=128, lr="pretrain_lr", final_epochs=200),
    "finetune from scratch": dict(max_epochs=75, batch_size=256, lr="finetune_lr", final_epochs=200),
    "finetune from pretrained": dict(max_epochs=10, batch_size=256, lr="finetune_lr", final_epochs=200),
}
ROPE_PRETRAIN_FINAL_EPOCHS = 650  # the 2024 handout's final_tokens for pretraining (rope)
VARIANTS = ["vanilla", "perceiver", "rope"]  # rope: the 2024-25 course's variant
VOCAB_KEY = "a5_vocab_sha256"  # in a params file's state_dict._metadata[""]: see save_params


def parse_args(argv=None):
    argp = argparse.ArgumentParser(description=__doc__)
    argp.add_argument("function", choices=["pretrain", "finetune", "evaluate"],
                      help="Choose pretrain, finetune, or evaluate")
    argp.add_argument("variant", choices=VARIANTS,
                      help="Choose vanilla or perceiver (the 2023 handout), or rope (the 2024-25 handout)")
    argp.add_argument("pretrain_corpus_path", help="the pretraining corpus (wiki.txt); it defines the vocabulary")
    argp.add_argument("--bottleneck_dim", type=int, default=32, help="Perceiver bottleneck length m")
    argp.add_argument("--reading_params_path", default=None, help="params to load before finetuning or evaluating")
    argp.add_argument("--writing_params_path", default=None,
                      help="where to save the trained params (through a link, to its target); a second run on "
                           "the same path is refused while the first holds <path>.lock")
    argp.add_argument("--finetune_corpus_path", default=None, help="question<TAB>answer lines to finetune on")
    argp.add_argument("--eval_corpus_path", default=None, help="questions (with or without answers) to evaluate on")
    argp.add_argument("--outputs_path", default=None,
                      help="where to write one prediction per question (through a link, to its target; a device "
                           "such as /dev/null in place)")
    argp.add_argument("--pretrain_lr", default=6e-3, type=float)
    argp.add_argument("--finetune_lr", default=6e-4, type=float)
    argp.add_argument("--tb_expt_name", default="run", help="debug string for tb log.")
    # additions to the course's flags
    argp.add_argument("--max_epochs", type=int, default=None,
                      help="epochs of this phase (default: the handout's 650 pretrain, 75 finetune from "
                           "scratch, 10 finetune from pretrained params)")
    argp.add_argument("--batch_size", type=int, default=None,
                      help="rows per optimizer step (default: the handout's 128 pretrain, 256 finetune)")
    argp.add_argument("--warmup_epochs", type=float, default=None,
                      help="epochs of linear lr warm-up (default: the handout's 512 x 20 tokens, less than "
                           "one pretraining step)")
    argp.add_argument("--final_epochs", type=float, default=None,
                      help="epochs at which the lr cosine reaches its floor (final_tokens = final_epochs x "
                           "pretraining corpus lines x block_size; the 2023 handout's 200, the 2024 handout's "
                           "650 for pretraining rope)")
    argp.add_argument("--dropout", type=float, default=None,
                      help="dropout probability of this run's model, embeddings, attention and residuals alike "
                           "(default: the course's 0.1). A recipe, not the handout's: results/recipes/")
    argp.add_argument("--mix_questions_path", default=None,
                      help="pretrain only: question<TAB>answer lines (the finetuning set, never dev or test) "
                           "mixed into every pretraining epoch in the finetuning format (src/mixing.py). A "
                           "recipe, not the handout's: results/recipes/")
    argp.add_argument("--seed", type=int, default=0,
                      help="random seed: on CPU the same seed gives the same params (not on a GPU: atomic adds)")
    argp.add_argument("--shuffle", action="store_true",
                      help="a new order of the training rows every epoch (the course's loader keeps file order)")
    argp.add_argument("--device", default="auto",
                      help="auto (cuda, then mps, then cpu), cuda (or cuda:N), mps or cpu; one that torch does not "
                           "see here is refused")
    argp.add_argument("--num_workers", type=int, default=0,
                      help="DataLoader worker processes (a GPU makes pretraining batches itself and needs none)")
    argp.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                      help="autocast precision for training. auto: bfloat16 on CPUs that compute it (AVX512-BF16 "
                           "or AMX; about 2x the float32 step, with the same loss curve: results/README.md), "
                           "float32 elsewhere, GPUs included (bf16 failed the handout's pretraining on an H100: "
                           "results/gpu/README.md). bfloat16 and "
                           "float16 (loss scaling) fall back to float32 with a note where they are emulated. "
                           "Evaluation is always float32")
    argp.add_argument("--checkpoint_minutes", type=float, default=5.0,
                      help="write <writing_params_path>.ckpt at most once every this many minutes of training "
                           "(mid-epoch too; always on Ctrl-C, SIGTERM or SIGHUP); 0: after every epoch. "
                           "A runtime recycled without a signal (Colab) loses at most this much training")
    argp.add_argument("--save_every", type=int, default=0,
                      help="also keep the checkpoint of every N-th epoch as <writing_params_path>.ckpt.epochN "
                           "(resumable snapshots along the schedule; --max_epochs does not change the lr schedule)")
    argp.add_argument("--resume", action="store_true",
                      help="continue the interrupted run whose checkpoint is <writing_params_path>.ckpt")
    argp.add_argument("--compile", action="store_true",
                      help="torch.compile the model for training, whole batches (CUDA graphs on a GPU; a "
                           "minute of compiling first). Off by default: slower on CPU, timed on a GPU by "
                           "bench/gpu_check.sh")
    argp.add_argument("--plain", action="store_true",
                      help="the course's computation for debugging and comparison: explicit attention, "
                           "nn.Dropout, float32, whole batches of full-length rows, torch's default AdamW, one "
                           "prompt at a time when evaluating")
    return argp.parse_args(argv)


def fail(message):
    """One clear line and a non-zero exit: what a user sees for bad input."""
    print(f"run.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def check_args(args):
    needed = {
        "pretrain": ["writing_params_path"],
        "finetune": ["writing_params_path", "finetune_corpus_path"],
        "evaluate": ["reading_params_path", "eval_corpus_path", "outputs_path"],
    }[args.function]
    missing = [f"--{name}" for name in needed if getattr(args, name) is None]
    if missing:
        fail(f"{args.function} needs {' and '.join(missing)}")
    inputs_ = ("pretrain_corpus_path", "finetune_corpus_path", "eval_corpus_path", "reading_params_path",
               "mix_questions_path")
    for name in inputs_:
        path = getattr(args, name)
        if path is not None and not os.path.isfile(path):
            fail(f"{path}: no such file ({flag(name)})")
    sources = [name for name in inputs_ if getattr(args, name) is not None]
    name = "outputs_path" if args.function == "evaluate" else "writing_params_path"
    path = getattr(args, name)
    for written in (path, path + ".ckpt", path + ".lock") if name == "writing_params_path" else (path,):
        for source in sources:
            if outputs.same_file(written, getattr(args, source)):
                fail(f"{written}: is also {flag(source)}: refusing to overwrite an input (--{name})")
    try:
        outputs.check_writable(path, name)
        if args.function != "evaluate":
            outputs.check_log_dir(log_dir(args))
    except outputs.OutputError as e:
        fail(str(e))
    if args.mix_questions_path is not None and args.function != "pretrain":
        fail(f"--mix_questions_path is for pretrain, not {args.function}")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        fail(f"--dropout must be at least 0 and below 1, got {args.dropout}")
    check_device(args.device)
    if args.num_workers < 0:
        fail(f"--num_workers must not be negative, got {args.num_workers}")
    for name in ("pretrain_lr", "finetune_lr", "final_epochs", "warmup_epochs"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):  # nan passes every comparison below
            fail(f"--{name} must be a finite number, got {value}")
    for name in ("pretrain_lr", "finetune_lr", "final_epochs"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            fail(f"--{name} must be above 0, got {getattr(args, name)}")
    if args.max_epochs is not None and args.max_epochs < 1:
        fail(f"--max_epochs must be at least 1, got {args.max_epochs}")
    if args.batch_size is not None and args.batch_size < 1:
        fail(f"--batch_size must be at least 1, got {args.batch_size}")
    if not args.checkpoint_minutes >= 0:  # NaN too
        fail(f"--checkpoint_minutes must not be negative, got {args.checkpoint_minutes}")
    if args.save_every < 0:
        fail(f"--save_every must not be negative, got {args.save_every}")
    if args.warmup_epochs is not None and args.warmup_epochs < 0:
        fail(f"--warmup_epochs must not be negative, got {args.warmup_epochs}")
    if args.variant == "perceiver" and not 0 < args.bottleneck_dim <= BLOCK_SIZE:
        fail(f"--bottleneck_dim must be between 1 and {BLOCK_SIZE}, got {args.bottleneck_dim}")


def check_device(name):
    """A device torch can use here: an unknown name or a missing GPU would fail as the model moves to it."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        fail(f"--device {name}: unknown device (auto, cuda, cuda:N, mps or cpu)")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            fail(f"--device {name}: torch sees no CUDA GPU here (torch.cuda.is_available() is False)")
        if ":" in name and int(name.split(":")[1]) >= count:
            fail(f"--device {name}: this machine has {count} CUDA GPU{'s' if count > 1 else ''}, "
                 f"cuda:0 to cuda:{count - 1}")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        fail(f"--device {name}: torch sees no MPS device here (torch.backends.mps.is_available() is False)")


def flag(name):
    return name if name == "pretrain_corpus_path" else f"--{name}"


def read_text(path):
    try:
        return inputs.read_text(path)
    except inputs.InputError as e:
        fail(str(e))


def parsed(path, make):
    """make(), whose bad input (an InputError) becomes one line naming the file path."""
    try:
        return make()
    except inputs.InputError as e:
        fail(str(e.at(path)))


def build_model(args, vocab_size):
    if args.variant in ("vanilla", "rope"):
        mconf = model.GPTConfig(vocab_size, BLOCK_SIZE, n_layer=4, n_head=8, n_embd=256, rope=args.variant == "rope")
    else:
        mconf = model.GPTConfig(vocab_size, BLOCK_SIZE, n_layer=4, n_head=8, n_embd=256,
                                bottleneck_dim=args.bottleneck_dim, perceiver=True)
    mconf.plain = args.plain
    if getattr(args, "dropout", None) is not None:
        mconf.embd_pdrop = mconf.resid_pdrop = mconf.attn_pdrop = args.dropout
    return model.GPT(mconf)


def load_params(gpt, path, args, device, vocab=None):
    """Load params into gpt, or stop with one line saying why they do not fit (vocab: this corpus's vocab_sha256)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean: not a params file
        fail(f"{path}: not a params file ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        fail(f"{path}: not a params file (expected a state_dict of tensors)")
    expected = gpt.state_dict()
    this = f"{args.variant}" + (f" with --bottleneck_dim {args.bottleneck_dim}" if args.variant == "perceiver" else "")
    if params_variant(state) != args.variant:
        fail(f"{path}: holds {params_variant(state)} params, but this run builds a {this} model")
    if vocab is not None and saved_vocab(state) not in (None, vocab):  # params of the course's code carry none
        fail(f"{path}: params trained over another vocabulary than that of {args.pretrain_corpus_path} (another "
             f"pretraining corpus): give the corpus they were pretrained on")
    if "down_block.C" in state and state["down_block.C"].shape != expected["down_block.C"].shape:
        fail(f"{path}: holds perceiver params with bottleneck_dim {state['down_block.C'].shape[1]}, "
             f"but this run builds a {this} model")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        what = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                else f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}")
        fail(f"{path}: params do not fit a {this} model over this vocabulary ({what})")
    gpt.load_state_dict(state)


def params_variant(state):
    """The variant whose params a state_dict holds: the Perceiver's basis C, RoPE's lack of pos_emb."""
    if "down_block.C" in state:
        return "perceiver"
    return "vanilla" if "pos_emb" in state else "rope"


def save_params(gpt, path, vocab):
    state = gpt.state_dict()
    # the course loads params with a strict load_state_dict: no key may be added, but the metadata of
    # the root module is kept by torch.save and ignored by load_state_dict
    state._metadata[""][VOCAB_KEY] = vocab
    utils.save_atomic(state, path)


def vocab_sha256(pretrain_dataset):
    """The vocabulary's fingerprint: its characters in id order (PAD, MASK, then the corpus's, sorted)."""
    itos = pretrain_dataset.itos
    return hashlib.sha256("".join(itos[i] for i in range(len(itos))).encode("utf-8")).hexdigest()


def saved_vocab(state):
    """The vocab_sha256 that save_params stored with a state_dict, or None (the course's code stores none)."""
    metadata = getattr(state, "_metadata", None)
    root = metadata.get("", {}) if isinstance(metadata, dict) else {}
    return root.get(VOCAB_KEY) if isinstance(root, dict) else None


def trainer_config(args, phase, train_rows, pretrain_rows, device, dist_env):
    """The handout's TrainerConfig for this phase, with the user's flags, this device's speed settings,
    and the arguments that a resumed run must share with the one that wrote the checkpoint."""
    rank, world_size = dist_env
    handout = HANDOUT[phase]
    batch_size = args.batch_size or handout["batch_size"]
    if batch_size % world_size:
        fail(f"the batch of {batch_size} rows does not split evenly over {world_size} processes")
    dtype = hardware.pick_dtype(args.dtype, device, args.plain)
    if args.final_epochs is not None:
        final_epochs, schedule = args.final_epochs, "--final_epochs"
    elif phase == "pretrain" and args.variant == "rope":
        final_epochs, schedule = ROPE_PRETRAIN_FINAL_EPOCHS, "the 2024 handout's"
    else:
        final_epochs, schedule = handout["final_epochs"], "the handout's"
    tconf = trainer.TrainerConfig(
        max_epochs=handout["max_epochs"] if args.max_epochs is None else args.max_epochs, batch_size=batch_size,
        learning_rate=getattr(args, handout["lr"]), lr_decay=True,
        warmup_tokens=512 * 20 if args.warmup_epochs is None else args.warmup_epochs * train_rows * BLOCK_SIZE,
        final_tokens=final_epochs * pretrain_rows * BLOCK_SIZE,
        ckpt_path=args.writing_params_path + ".ckpt", ckpt_minutes=args.checkpoint_minutes,
        save_every=args.save_every,
        shuffle=args.shuffle, seed=args.seed, num_workers=args.num_workers, device=device,
        rank=rank, world_size=world_size,
        **hardware.speed_settings(device, dtype, batch_size // world_size, args.plain, args.compile))
    tconf.run_args = {
        "function": args.function, "variant": args.variant, "--batch_size": batch_size,
        "--bottleneck_dim": args.bottleneck_dim if args.variant == "perceiver" else None,
        "learning rate": tconf.learning_rate, "--max_epochs": tconf.max_epochs, "--warmup_epochs": args.warmup_epochs,
        "--final_epochs": final_epochs, "--dropout": args.dropout, "--seed": args.seed, "--shuffle": args.shuffle,
        "processes": world_size, "training rows": train_rows, "corpus sha256": args.corpus_sha256}
    # the start-up line's: which handout's schedule is in force (rope's floor differs)
    tconf.schedule = f"lr floor after {final_epochs:g} pretraining-corpus epochs ({schedule})"
    return tconf


def log_dir(args):
    """The course's TensorBoard folder, under the current folder."""
    return "expt/%s/%s_%s_%d_pt_lr_%f_ft_lr_%f" % (args.function, args.tb_expt_name, args.variant,
                                                   int(args.bottleneck_dim), args.pretrain_lr, args.finetune_lr)


def train(args, gpt, train_dataset, tconf):
    rank, world_size, ckpt_path = tconf.rank, tconf.world_size, tconf.ckpt_path
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter  # imported here: evaluate does not need it
        tconf.writer = SummaryWriter(log_dir=log_dir(args))
    t = trainer.Trainer(gpt, train_dataset, None, tconf)
    if rank == 0 and outputs.remove_stale_temporaries(args.writing_params_path):
        print(f"removed the temporary files of an interrupted write beside {args.writing_params_path}")
    if os.path.exists(ckpt_path):
        if not args.resume:
            fail(f"{ckpt_path}: an unfinished run left this checkpoint: add --resume to continue it, "
                 f"or delete it to start over")
        try:
            t.load_checkpoint(ckpt_path)
        except checkpoint.CheckpointError as e:
            fail(f"{ckpt_path}: cannot resume: {e}")
        if rank == 0:
            print(f"resuming from {ckpt_path}: epoch {t.epoch + 1}, step {t.step}")
    elif args.resume and rank == 0:
        print(f"no checkpoint at {ckpt_path}: starting from the beginning")
    if rank == 0:
        print(f"{args.function} {args.variant} on {hardware.describe(tconf.device)}"
              f"{f' x {world_size} processes' if world_size > 1 else ''}, {tconf.dtype}: {len(train_dataset):,} "
              f"rows, {tconf.batch_size} a step, {tconf.max_epochs} epochs = {t.total_steps():,} steps; "
              f"{tconf.schedule}", flush=True)
    try:
        t.train()
        if rank == 0:
            finish(t, gpt, args.writing_params_path, args.vocab_sha256)
    except trainer.Interrupted as e:
        if rank == 0:
            print(f"\ninterrupted by {e} at epoch {t.epoch + 1}, step {t.step}: checkpoint in {ckpt_path}; "
                  f"rerun the same command with --resume to continue", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # a full disk or a vanished folder: the last checkpoint, if any, is intact
        fail(f"{e.filename or args.writing_params_path}: cannot write: {e.strerror}")
    finally:
        if tconf.writer is not None:
            tconf.writer.close()


def finish(t, gpt, params_path, vocab_sha256):
    """
    The trained params first (13 MB), then the checkpoint is deleted. Only if the params cannot
    be written (a full disk, a Ctrl-C meanwhile) is a checkpoint of the finished run tried (40 MB),
    so that --resume can write them; else the last one written stays.
    """
    try:
        save_params(gpt, params_path, vocab_sha256)
    except (OSError, KeyboardInterrupt) as e:
        try:
            if t.config.world_size > 1:
                raise OSError  # a checkpoint is a collective of every rank, and only rank 0 is here
            t.save_checkpoint()
            kept = f"the finished run's checkpoint is in {t.config.ckpt_path}"
        except OSError:
            kept = (f"{t.config.ckpt_path} (if any) holds the last checkpoint written" if
                    os.path.exists(t.config.ckpt_path) else "no checkpoint could be written either")
        if isinstance(e, KeyboardInterrupt):
            print(f"\nrun.py: interrupted while saving {params_path}; {kept}: rerun with --resume", file=sys.stderr)
            sys.exit(130)
        fail(f"{e.filename or params_path}: cannot write: {e.strerror}; {kept}: make room, then rerun with --resume")
    if os.path.exists(t.config.ckpt_path):
        os.remove(t.config.ckpt_path)


def evaluate(args, gpt, pretrain_dataset, device):
    rows = parsed(args.eval_corpus_path, lambda: inputs.read_questions(args.eval_corpus_path))
    if not rows:
        fail(f"{args.eval_corpus_path}: no questions")
    mask_id = pretrain_dataset.stoi[pretrain_dataset.MASK_CHAR]
    prompts = [parsed(args.eval_corpus_path, lambda: inputs.encode(pretrain_dataset.stoi, question, n)) + [mask_id]
               for n, question, _ in rows]
    gpt.eval()
    print(f"evaluate {args.variant} on {hardware.describe(device)}, float32: {len(prompts)} questions", flush=True)
    start = time.time()
    if args.plain:
        # the course's loop: one prompt at a time, recomputing every position
        predictions = []
        for p in prompts:
            x = torch.tensor(p, dtype=torch.long, device=device)[None, ...]
            pred = utils.sample(gpt, x, 32, sample=False)[0]
            completion = "".join([pretrain_dataset.itos[int(i)] for i in pred])
            predictions.append(completion.split(pretrain_dataset.MASK_CHAR)[1])
    else:
        predictions = decoding.predict_places(gpt, prompts, pretrain_dataset.itos, mask_id)
    print(f"decoded {len(prompts)} questions in {time.time() - start:.1f}s")
    # the course wrote one line per prediction; a newline inside one would shift the rest
    try:
        utils.atomic_write(args.outputs_path,
                           lambda f: f.write("".join(p.replace("\n", " ") + "\n" for p in predictions)))
    except OSError as e:
        fail(f"{args.outputs_path}: cannot write: {e.strerror}")
    total, correct = utils.evaluate_places(args.eval_corpus_path, predictions)
    if total > 0:
        print(f"Correct: {correct} out of {total}: {correct / total * 100}%")
    else:
        print(f"Predictions written to {args.outputs_path}; no targets provided")


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    device, dist_env = hardware.setup_distributed(hardware.pick_device(args.device))
    rank = dist_env[0]
    if args.function == "evaluate" and rank != 0:
        return  # evaluation runs in one process
    # the ranks share one params path: rank 0 holds it for all
    try:
        lock = outputs.lock(args.writing_params_path) if args.function != "evaluate" and rank == 0 else None
    except outputs.OutputError as e:
        fail(str(e))
    try:
        work(args, device, dist_env)
    finally:
        outputs.unlock(lock)


def work(args, device, dist_env):
    """The function asked for, pretrain, finetune or evaluate, once the arguments are checked."""
    rank = dist_env[0]
    # ranks share the model's initial weights (DDP broadcasts rank 0's) but not their corruptions
    utils.set_seed(args.seed + rank)

    # The pretraining corpus always defines the vocabulary, whatever the function.
    text = read_text(args.pretrain_corpus_path)
    if not text.strip():
        fail(f"{args.pretrain_corpus_path}: empty corpus")
    pretrain_dataset = parsed(args.pretrain_corpus_path, lambda: dataset.CharCorruptionDataset(text, BLOCK_SIZE))
    args.vocab_sha256 = vocab_sha256(pretrain_dataset)  # saved with the params, checked with those loaded
    gpt = build_model(args, pretrain_dataset.vocab_size).to(device)
    digest = hashlib.sha256(text.encode())  # of the training text: a resumed run must train on the same

    if args.function == "pretrain":
        train_dataset = pretrain_dataset
        if args.mix_questions_path is not None:
            questions_text = read_text(args.mix_questions_path)
            questions = parsed(args.mix_questions_path, lambda: dataset.NameDataset(pretrain_dataset, questions_text))
            train_dataset = mixing.MixedDataset(pretrain_dataset, questions)
            digest.update(questions_text.encode())
        args.corpus_sha256 = digest.hexdigest()[:16]
        # an epoch is one of the rows trained on, question rows included (so is the lr schedule's)
        tconf = trainer_config(args, "pretrain", len(train_dataset), len(train_dataset), device, dist_env)
        train(args, gpt, train_dataset, tconf)
    elif args.function == "finetune":
        finetune_text = read_text(args.finetune_corpus_path)
        finetune_dataset = parsed(args.finetune_corpus_path,
                                  lambda: dataset.NameDataset(pretrain_dataset, finetune_text))
        if len(finetune_dataset) == 0:
            fail(f"{args.finetune_corpus_path}: no question<TAB>answer lines")
        digest.update(finetune_text.encode())
        args.corpus_sha256 = digest.hexdigest()[:16]
        phase = "finetune from scratch"
        if args.reading_params_path is not None:
            load_params(gpt, args.reading_params_path, args, device, args.vocab_sha256)
            phase = "finetune from pretrained"
        tconf = trainer_config(args, phase, len(finetune_dataset), len(pretrain_dataset), device, dist_env)
        train(args, gpt, finetune_dataset, tconf)
    else:
        load_params(gpt, args.reading_params_path, args, device, args.vocab_sha256)
        evaluate(args, gpt, pretrain_dataset, device)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # outside training, which checkpoints first (trainer.py): reading, evaluating, saving
        print("\nrun.py: interrupted", file=sys.stderr)
        sys.exit(130)
