import getpass
import os
import sys
import tempfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
sys.path.insert(0, SRC)

# inductor's on-disk cache does not tell kernels compiled under ATEN_CPU_CAPABILITY=avx2 from those of the
# CPU's own capability: loading one kind in the other aborts the process (torch 2.13). The suite runs both
# ways on one machine, so each capability gets a cache of its own (passed on to the processes tests start)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_{torch.backends.cpu.get_cpu_capability().lower()}"))

# CUDA-only tests and cases: skipped here, run wherever there is a GPU (bench/gpu_check.sh runs `pytest -k cuda`,
# so each has "cuda" in its name or parameters)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: runs wherever there is a GPU")


# a tiny corpus of three people (61 documents and an empty last one), and two training questions
WIKI = ("Alice Smith. Alice Smith was born in Paris and wrote books about the sea.\n"
        "Bob Jones. Bob Jones was born in Lyon in 1901 and taught at a school.\n"
        "Carla Diaz. Carla Diaz was born in Rome; she painted the harbour all her life.\n" * 20
        + "Where was everybody born?\n")
TRAIN = "Where was Alice Smith born?\tParis\nWhere was Bob Jones born?\tLyon\n"


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "wiki.txt").write_text(WIKI, encoding="utf-8")
    (tmp_path / "train.tsv").write_text(TRAIN, encoding="utf-8")
    return tmp_path


@pytest.fixture(scope="session")
def data_dir():
    """The course data folder, from A5_DATA_DIR (.ci/run sets it to ../shared/data)."""
    path = os.environ.get("A5_DATA_DIR")
    if not path:
        pytest.skip("A5_DATA_DIR is not set: the course data is needed for this test")
    if not os.path.isfile(os.path.join(path, "wiki.txt")):
        pytest.fail(f"A5_DATA_DIR={path} holds no wiki.txt")
    return os.path.abspath(path)


@pytest.fixture(scope="session")
def wiki_text(data_dir):
    with open(os.path.join(data_dir, "wiki.txt"), encoding="utf-8") as f:
        return f.read()


def small_config(perceiver=False, block_size=16, **kwargs):
    """A tiny model (vocabulary 40) for fast tests."""
    import model
    kw = dict(n_layer=4, n_head=4, n_embd=32)
    if perceiver:
        kw.update(perceiver=True, bottleneck_dim=8)
    kw.update(kwargs)
    return model.GPTConfig(40, block_size, **kw)
