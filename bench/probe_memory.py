"""
How many birthplaces did pretraining memorise? For every person of a TSV who has
a biography in wiki.txt that names their birthplace within the first 100
characters, feed the pretrained model the biography up to the place and check
whether its greedy continuation is the place. This separates what pretraining
stored from what finetuning manages to read out through the question format.

  python bench/probe_memory.py WIKI PARAMS TSV [--variant perceiver --bottleneck_dim 64]

Prints the share recalled and, for comparison, the share a model would get by
always continuing with the TSV's most common place.
"""

import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
import dataset  # noqa: E402
import decoding  # noqa: E402
import inputs  # noqa: E402
import run  # noqa: E402


def main():
    argp = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    argp.add_argument("wiki")
    argp.add_argument("params")
    argp.add_argument("tsv", help="question<TAB>place lines: the people to probe")
    argp.add_argument("--variant", default="vanilla", choices=["vanilla", "perceiver", "rope"])
    argp.add_argument("--bottleneck_dim", type=int, default=32)
    argp.set_defaults(plain=False)  # run.build_model reads it
    args = argp.parse_args()

    with open(args.wiki, encoding="utf-8") as f:
        text = f.read()
    ds = dataset.CharCorruptionDataset(text, 128)
    gpt = run.build_model(args, ds.vocab_size)
    run.load_params(gpt, args.params, args, "cpu")  # a clear error for the wrong variant or a bad file
    gpt.eval()

    places = {question[len("Where was "):-len(" born?")]: place
              for _, question, place in inputs.read_questions(args.tsv)}
    recalled, probed = 0, []
    for line in text.split("\n"):
        name = line.split(".")[0]
        if name not in places:
            continue
        place = places[name]
        cut = line.find(" " + place) + 1  # the biography up to the place
        if not 0 < cut <= 100:
            continue
        prompt = torch.tensor([[ds.stoi[c] for c in line[:cut]]])
        got = "".join(ds.itos[int(t)] for t in decoding.greedy_batch(gpt, prompt, len(place))[0, cut:])
        recalled += got == place
        probed.append(place)
    if not probed:
        raise SystemExit(f"probe_memory.py: error: no biography in {args.wiki} names a place of {args.tsv}")
    prior, count = collections.Counter(probed).most_common(1)[0]
    n = len(probed)
    print(f"recalled {recalled} of {n} birthplaces ({100 * recalled / n:.1f}%); "
          f"always '{prior}' would get {count} ({100 * count / n:.1f}%)")


if __name__ == "__main__":
    main()
