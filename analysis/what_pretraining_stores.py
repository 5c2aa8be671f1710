"""
Handout question 3: what does pretraining store, and could a user tell a
birthplace the model retrieved from one it invented? Three measurements of a
finetuned model on a dev set:

  (a) accuracy split by where the gold place stands in the person's wiki.txt line:
      within the first 112 characters (pretraining truncates every document to at
      most 7/8 of the 128-character block, so only these can be stored), only
      beyond them, not in the line, or no line for the person at all;
  (b) for the people pretraining cannot have told anything (no line, or a line
      without the place), the distribution of predicted places beside the
      distribution of places in the finetuning file: is the model guessing the prior?
  (c) the model's probability of its own greedy answer, for right and wrong
      answers: does a confident answer mean a retrieved one?

  python analysis/what_pretraining_stores.py --wiki data/wiki.txt --eval data/birth_dev.tsv \\
      --train data/birth_places_train.tsv --params out/demo/vanilla.finetune.params \\
      --out results/analysis/synthetic_demo   [--variant perceiver --bottleneck_dim 64]

Writes groups.png, prior.png, confidence.png and what_pretraining_stores.md to --out.
"""

import argparse
import collections
import os
import re
import statistics
import sys

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
import dataset  # noqa: E402
import decoding  # noqa: E402
import inputs  # noqa: E402
import run  # noqa: E402

BLOCK_SIZE = 128
SEEN = int(BLOCK_SIZE * 7 / 8)  # CharCorruptionDataset truncates each document to at most 112 characters
STEPS = 32  # the decode length of run.py evaluate (utils.predict_places)
GROUPS = [f"place within the first {SEEN} chars", f"place only beyond char {SEEN}",
          "place not in the line", "no wiki line"]


def name_of(question):
    return question[len("Where was "):-len(" born?")]


def wiki_lines(text, names):
    """{name: [its wiki lines]} for the names that have one."""
    # A biography starts "<name>. <text>" (or is just "<name>."). Names may hold dots
    # ("J.C. Patterson", "Horatio Bisbee, Jr." whose line starts "Horatio Bisbee, Jr.. "), so
    # instead of splitting at the first dot we try every prefix that ends before a ". " and
    # keep those that are exactly a wanted name. A name elsewhere in a line does not count.
    # A few people have two lines (the course's wiki.txt has one such dev person); we keep both.
    names, found = set(names), collections.defaultdict(list)
    for line in text.split("\n"):
        line = line.rstrip("\r")
        ends = [m.start() for m in re.finditer(r"\. ", line)] + ([len(line) - 1] if line.endswith(".") else [])
        for end in ends:
            if line[:end] in names:
                found[line[:end]].append(line)
                break
    return found


def group_of(lines, place):
    """Which of GROUPS a person is in: where the place first ends in any of their lines."""
    if not lines:
        return GROUPS[3]
    # as a whole word, so that "Paris" is not found in "Parisian"
    pattern = r"(?<!\w)" + re.escape(place) + r"(?!\w)"
    ends = [m.end() for line in lines for m in re.finditer(pattern, line)]
    if not ends:
        return GROUPS[2]
    return GROUPS[0] if min(ends) <= SEEN else GROUPS[1]


@torch.no_grad()
def answer_probabilities(gpt, prompts, predictions, stoi, mask_id, batch_size=64):
    """
    The probability the model gives its own greedy answer: the product of the softmax
    probabilities of the answer's characters and of the closing MASK (absent when the
    decode ran STEPS characters without closing), teacher-forced in one forward pass per
    batch. The model is causal, so PADs after a shorter row change nothing before them.
    """
    seqs = []
    for prompt, pred in zip(prompts, predictions):
        answer = [stoi[c] for c in pred] + ([mask_id] if len(pred) < STEPS else [])
        seqs.append((prompt, answer))
    probs = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        assert width <= BLOCK_SIZE, f"a question and its answer are {width} characters, more than {BLOCK_SIZE}"
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, (p, a) in enumerate(chunk):
            x[i, :len(p) + len(a)] = torch.tensor(p + a)
        logp = F.log_softmax(gpt(x)[0].float(), dim=-1)
        for i, (p, a) in enumerate(chunk):
            # position t predicts token t + 1: the answer's tokens from the prompt's last position on
            rows = logp[i, len(p) - 1:len(p) - 1 + len(a)]
            probs.append(float(rows.gather(1, torch.tensor(a)[:, None]).sum().exp()))
    return probs


def main(argv=None):
    argp = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    argp.add_argument("--wiki", required=True, help="wiki.txt: the pretraining corpus (it defines the vocabulary)")
    argp.add_argument("--params", required=True, help="finetuned params of the model")
    argp.add_argument("--eval", required=True, help="Where was X born?<TAB>place lines")
    argp.add_argument("--train", required=True, help="the finetuning file (birth_places_train.tsv): the prior")
    argp.add_argument("--variant", default="vanilla", choices=["vanilla", "perceiver"])
    argp.add_argument("--bottleneck_dim", type=int, default=32)
    argp.add_argument("--out", default="results/analysis/stores")
    argp.set_defaults(plain=False)  # run.build_model reads it
    args = argp.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    with open(args.wiki, encoding="utf-8") as f:
        text = f.read()
    ds = dataset.CharCorruptionDataset(text, BLOCK_SIZE)
    gpt = run.build_model(args, ds.vocab_size)
    run.load_params(gpt, args.params, args, "cpu")
    gpt.eval()
    mask_id = ds.stoi[ds.MASK_CHAR]

    rows = [(name_of(q), q, place) for _, q, place in inputs.read_questions(args.eval)]
    if not rows or rows[0][2] is None:
        argp.error(f"--eval {args.eval} has no gold places (question<TAB>place lines are needed)")
    lines = wiki_lines(text, [name for name, _, _ in rows])
    groups = [group_of(lines.get(name), place) for name, _, place in rows]
    prompts = [inputs.encode(ds.stoi, q, f"{args.eval}:{i + 1}") + [mask_id] for i, (_, q, _) in enumerate(rows)]
    preds = decoding.predict_places(gpt, prompts, ds.itos, mask_id, steps=STEPS)
    probs = answer_probabilities(gpt, prompts, preds, ds.stoi, mask_id)
    right = [pred == place for pred, (_, _, place) in zip(preds, rows)]
    train_places = collections.Counter(place for _, _, place in inputs.read_questions(args.train))

    # (a) accuracy by where the place stands: retrieval can only help the first group
    md = ["# What pretraining stores (handout question 3)", "",
          f"`python analysis/what_pretraining_stores.py --wiki {args.wiki} --eval {args.eval} --train {args.train} "
          f"--params {args.params} --variant {args.variant}"
          + (f" --bottleneck_dim {args.bottleneck_dim}" if args.variant == "perceiver" else "")
          + f" --out {args.out}`", "",
          f"dev accuracy {sum(right)}/{len(rows)} ({100 * sum(right) / len(rows):.1f}%)", "",
          "## (a) accuracy by where the gold place stands in the person's wiki line", "",
          "| group | people | correct | accuracy | median p(own answer) |", "| --- | --- | --- | --- | --- |"]
    counts = {}
    for g in GROUPS:
        idx = [i for i, gi in enumerate(groups) if gi == g]
        n, c = len(idx), sum(right[i] for i in idx)
        counts[g] = (n, c)
        acc = f"{100 * c / n:.1f}%" if n else "-"
        med = f"{statistics.median(probs[i] for i in idx):.3g}" if n else "-"
        md.append(f"| {g} | {n} | {c} | {acc} | {med} |")

    # (b) the unseen people's predictions against the finetuning prior
    unseen = [i for i, g in enumerate(groups) if g in GROUPS[2:]]
    predicted = collections.Counter(preds[i] for i in unseen)
    everyone = collections.Counter(preds).most_common(1)
    top_train, top_count = train_places.most_common(1)[0]
    n_train, n_unseen = sum(train_places.values()), len(unseen)
    md += ["", f"## (b) the {n_unseen} people without the place in their line (or without a line): "
               f"predictions against the finetuning prior", ""]
    if n_unseen:
        in_train = sum(c for p, c in predicted.items() if p in train_places)
        md += ["| | share |", "| --- | --- |",
               f"| predictions that are the train file's most common place, {top_train} | "
               f"{100 * predicted[top_train] / n_unseen:.1f}% (its train share: {100 * top_count / n_train:.1f}%) |",
               f"| predictions that are some place of the train file | {100 * in_train / n_unseen:.1f}% |",
               f"| distinct predicted places | {len(predicted)} (train file: {len(train_places)}) |",
               f"| correct | {100 * sum(right[i] for i in unseen) / n_unseen:.1f}% |",
               # against the seen people: guessing shows only if the unseen predictions differ from theirs
               f"| for comparison, all {len(rows)} dev people: most common prediction, distinct predictions | "
               f"{everyone[0][0]} {100 * everyone[0][1] / len(rows):.1f}%, {len(set(preds))} |", "",
               "Most common predictions: " + ", ".join(f"{p} {c}" for p, c in predicted.most_common(8))]

    # (c) confidence of right and wrong answers
    md += ["", "## (c) the model's probability of its own greedy answer", "",
           "| answers | count | median p | share with p > 0.5 |", "| --- | --- | --- | --- |"]
    for label, want in (("correct", True), ("wrong", False)):
        ps = [p for p, r in zip(probs, right) if r == want]
        if not ps:
            md.append(f"| {label} | 0 | - | - |")
            continue
        confident = 100 * sum(p > 0.5 for p in ps) / len(ps)
        md.append(f"| {label} | {len(ps)} | {statistics.median(ps):.3g} | {confident:.1f}% |")

    plot(args.out, counts, predicted, train_places, n_unseen, probs, right)
    with open(os.path.join(args.out, "what_pretraining_stores.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return dict(groups=groups, counts=counts, predictions=preds, probabilities=probs, right=right)


def plot(out, counts, predicted, train_places, n_unseen, probs, right):
    import matplotlib
    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    accs = [100 * c / n if n else 0 for n, c in counts.values()]
    bars = ax.bar(range(len(counts)), accs)
    ax.bar_label(bars, labels=[f"{c}/{n}" for n, c in counts.values()])
    ax.set_xticks(range(len(counts)), [g.replace("place ", "").replace(" chars", "") for g in counts], fontsize=8)
    ax.set(ylabel="dev accuracy (%)", title="(a) accuracy by where the place stands in the wiki line")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "groups.png"), dpi=120)
    plt.close(fig)

    if n_unseen:
        n_train = sum(train_places.values())
        share = {p: predicted[p] / n_unseen + train_places[p] / n_train for p in set(predicted) | set(train_places)}
        top = sorted(share, key=lambda p: -share[p])[:15]
        fig, ax = plt.subplots(figsize=(9, 4))
        xs = torch.arange(len(top)).tolist()
        ax.bar([x - 0.2 for x in xs], [100 * predicted[p] / n_unseen for p in top], 0.4,
               label=f"predicted for the {n_unseen} unseen people")
        ax.bar([x + 0.2 for x in xs], [100 * train_places[p] / n_train for p in top], 0.4,
               label="gold places of the finetuning file")
        ax.set_xticks(xs, top, rotation=45, ha="right", fontsize=8)
        ax.set(ylabel="% of people", title="(b) guesses against the finetuning prior")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "prior.png"), dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    lo = max(min(probs), 1e-12)
    bins = torch.logspace(float(torch.log10(torch.tensor(lo))), 0, 31).tolist()
    for label, want in (("correct", True), ("wrong", False)):
        ps = [max(p, lo) for p, r in zip(probs, right) if r == want]
        ax.hist(ps, bins=bins, alpha=0.6, label=f"{label} ({len(ps)})")
    ax.set_xscale("log")
    ax.set(xlabel="p(own greedy answer)", ylabel="dev questions", title="(c) confidence of right and wrong answers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "confidence.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
