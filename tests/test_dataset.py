import os
import random
import subprocess
import sys
from collections import Counter

import pytest
import torch

from dataset import MASK_CHAR, PAD_CHAR, CharCorruptionDataset, NameDataset

from conftest import SRC

TEXT = "Alice Smith. Alice was born in Paris and wrote many books about the sea and its creatures.\n" \
       "Bo. Short.\n" \
       "Charles Dupont. Charles was born in Lyon, France, in 1901, and taught at a school for sixty years.\n"


def decode(ds, t):
    return "".join(ds.itos[int(i)] for i in t)


def test_import_has_no_side_effects():
    # open() raising proves that importing reads no file; empty stdout that it prints nothing
    # torch itself reads files when imported, so it is imported before the trap is set
    code = ("import builtins, io, torch, torch.utils.data\n"
            "def no(*a, **k): raise AssertionError('file read at import')\n"
            "builtins.open = no; io.open = no\n"
            f"import sys; sys.path.insert(0, {SRC!r})\n"
            "import dataset\n"
            "import sys; assert 'torch.cuda' not in sys.modules or not __import__('torch').cuda.is_initialized()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""


def test_vocabulary_ids():
    ds = CharCorruptionDataset(TEXT, 128)
    chars = sorted(set(TEXT))
    assert ds.stoi[PAD_CHAR] == 0 and ds.stoi[MASK_CHAR] == 1
    assert [ds.itos[i] for i in range(2, ds.vocab_size)] == chars
    assert ds.vocab_size == len(chars) + 2
    assert isinstance(ds.stoi, dict) and isinstance(ds.itos, dict)
    assert ds.block_size == 128
    assert ds.data == TEXT.split("\n") and len(ds) == 4  # the trailing newline gives an empty document


def test_real_corpus_vocabulary(wiki_text):
    ds = CharCorruptionDataset(wiki_text, 128)
    assert ds.vocab_size == 256
    assert len(ds) == len(wiki_text.split("\n"))


def parse(ds, x, y):
    """Split a row back into (prefix, suffix, content, n_pads), checking its layout."""
    s = decode(ds, torch.cat([x[:1], y]))
    assert len(s) == ds.block_size + 1
    assert decode(ds, x)[1:] == decode(ds, y)[:-1], "y must be x shifted by one"
    body = s.rstrip(PAD_CHAR)
    assert PAD_CHAR not in body
    assert body.count(MASK_CHAR) == 2, s
    prefix, suffix, content = body.split(MASK_CHAR)
    return prefix, suffix, content, len(s) - len(body)


def test_span_corruption_layout_and_statistics():
    random.seed(0)
    doc = "".join(random.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(300))
    ds = CharCorruptionDataset(doc, 128)
    lengths, ratios, masked = Counter(), [], Counter()
    for _ in range(20000):
        x, y = ds[0]
        assert x.dtype == torch.long and x.shape == y.shape == (128,)
        prefix, suffix, content, _ = parse(ds, x, y)
        n = len(prefix) + len(suffix) + len(content)
        assert prefix + content + suffix == doc[:n], "the row must be a truncation of the document"
        lengths[n] += 1
        ratios.append(len(content) / n)
        masked[len(content)] += 1
    assert set(lengths) == set(range(4, int(128 * 7 / 8) + 1)), "every truncation length 4..112 must occur"
    mean = sum(ratios) / len(ratios)
    assert 0.22 < mean < 0.28, mean
    assert len(masked) > 20, "the masked length must vary"
    assert min(ratios) < 0.1 and max(ratios) > 0.4


def test_short_and_empty_documents():
    ds = CharCorruptionDataset("abc\n\nx\nabcdefgh", 16)
    for idx in range(len(ds)):
        for _ in range(50):
            x, y = ds[idx]
            assert x.shape == y.shape == (16,)
            prefix, suffix, content, _ = parse(ds, x, y)
            assert prefix + content + suffix == ds.data[idx][:len(prefix + content + suffix)]


def test_reserved_characters_are_refused():
    with pytest.raises(ValueError, match="line 2: .*MASK"):
        CharCorruptionDataset("ok\nbad " + MASK_CHAR, 128)


def test_name_dataset_rows():
    ds = CharCorruptionDataset(TEXT + "Where was Alice Smith born?\tParis", 128)
    names = NameDataset(ds, "Where was Alice Smith born?\tParis\r\n\nWhere was Bo born?\tLyon\n")
    assert len(names) == 2  # CRLF stripped, blank line skipped
    x, y = names[0]
    q, a = "Where was Alice Smith born?", "Paris"
    assert x.shape == y.shape == (127,)
    s = q + MASK_CHAR + a + MASK_CHAR
    s = s + PAD_CHAR * (128 - len(s))
    assert decode(ds, x) == s[:-1]
    assert decode(ds, y) == PAD_CHAR * (len(q) - 1) + s[len(q):]
    # only the opening MASK, the answer and the closing MASK are real targets
    real = decode(ds, y[y != 0])
    assert real == MASK_CHAR + a + MASK_CHAR


@pytest.mark.parametrize("text,message", [
    ("Where was Alice born?Paris\n", "line 1: expected 'question<TAB>answer', found no tab"),
    ("Where was Alice born?\tParis\nWhere was Bo born?\t\n", "line 2: empty answer"),
    ("Where was Alice born?\tPar\tis\n", "line 1: .*2 tabs"),
    ("Where was Alice born?\tSürich\n", "line 1: character 'ü' .* not in the vocabulary"),
])
def test_name_dataset_errors(text, message):
    ds = CharCorruptionDataset(TEXT + "Where was Alice born?\tParis", 128)
    with pytest.raises(ValueError, match=message):
        NameDataset(ds, text)


def test_real_finetune_file(wiki_text, data_dir):
    ds = CharCorruptionDataset(wiki_text, 128)
    with open(os.path.join(data_dir, "birth_places_train.tsv"), encoding="utf-8") as f:
        text = f.read()
    names = NameDataset(ds, text)
    assert len(names) == sum(1 for line in text.split("\n") if line.strip())
    for i in range(0, len(names), 97):
        x, y = names[i]
        assert x.shape == y.shape == (127,)


def test_dataset_main_prints_examples(data_dir):
    for kind in ("namedata", "charcorruption"):
        out = subprocess.run([sys.executable, os.path.join(SRC, "dataset.py"), kind], cwd=data_dir,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("\nx: ") == 3 and out.stdout.startswith("x: ")
