"""
The London baseline: predict "London" as the birth place of everyone in the dev set.
Run from a folder holding birth_dev.tsv, or name another file with --eval_corpus_path.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
import inputs  # noqa: E402
import utils  # noqa: E402


def main():
    argp = argparse.ArgumentParser(description=__doc__)
    argp.add_argument("--eval_corpus_path", default="birth_dev.tsv")
    args = argp.parse_args()
    try:
        n = len(inputs.read_questions(args.eval_corpus_path))
        total, correct = utils.evaluate_places(args.eval_corpus_path, ["London"] * n)
    except inputs.InputError as e:  # the file's name and line are in it
        sys.exit(f"london_baseline.py: error: {e}")
    if total > 0:
        print(f"Correct: {correct} out of {total}: {correct / total * 100}%")
    else:
        sys.exit(f"london_baseline.py: error: {args.eval_corpus_path} has no answers to score")


if __name__ == "__main__":
    main()
