"""
Handout question 1 (exploring attention), in numbers and pictures, computed with
the project's own attention function (src/attention.py: CausalSelfAttention.attend) on one head with
no projections:

  (a) copying: a query aligned with one key k_j copies its value v_j, more
      sharply the larger the query (entropy of the weights falls, c -> v_j);
  (b) averaging: q = t (k_a + k_b) with orthogonal unit keys gives
      c -> (v_a + v_b) / 2 as t grows;
  (c) one head is fragile: keys drawn around orthogonal means mu_i with a tiny
      covariance alpha I, except key a with alpha I + 1/2 mu_a mu_a^T (its norm
      varies along mu_a); q = t (mu_a + mu_b) then swings c between v_a and v_b;
  (d) two heads, q1 = t mu_a and q2 = t mu_b, outputs averaged, under the same
      perturbation: c stays near (v_a + v_b) / 2.

  python analysis/attention_demo.py [--out results/analysis/attention] [--seed 0]

Writes copying.png, averaging.png, heads.png and attention_demo.md to --out.
"""

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from attention import CausalSelfAttention  # noqa: E402
from model import GPTConfig  # noqa: E402


def attention(q, k, v):
    """c = softmax(q k^T / sqrt(d)) v for one head, nothing masked, no dropout; q (B, d), k and v (B, n, d)."""
    d, n = q.shape[1], k.shape[1]
    head = CausalSelfAttention(GPTConfig(1, n, n_embd=d, n_head=1, attn_pdrop=0.0, plain=True)).eval()
    mask = torch.ones(1, 1, 1, n)  # nothing masked
    c = head.attend(q[:, None, None, :], k[:, None], v[:, None], mask)
    return c[:, 0, 0, :]


def weights(q, k):
    """The attention weights themselves: attend with the identity as values returns them."""
    eye = torch.eye(k.shape[1], dtype=k.dtype).expand(k.shape[0], -1, -1)
    return attention(q, k, eye)


def entropy(p):
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def sample_keys(mu, alpha, a, n_samples, gen):
    """Keys k_i ~ N(mu_i, alpha I), and k_a ~ N(mu_a, alpha I + 1/2 mu_a mu_a^T), i.e. mu_a (1 + g/sqrt 2) + noise."""
    n, d = mu.shape
    k = mu + math.sqrt(alpha) * torch.randn(n_samples, n, d, generator=gen, dtype=mu.dtype)
    # mu_a is a unit vector, so the extra covariance 1/2 mu_a mu_a^T is one scalar N(0, 1/2) along mu_a
    g = torch.randn(n_samples, generator=gen, dtype=mu.dtype) / math.sqrt(2)
    k[:, a] += g[:, None] * mu[a]
    return k, 1 + g  # the keys and each sample's scale of k_a along mu_a


def main(argv=None):
    argp = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    argp.add_argument("--out", default="results/analysis/attention", help="folder for the PNGs and the table")
    argp.add_argument("--seed", type=int, default=0)
    argp.add_argument("--d", type=int, default=64, help="dimension of keys, queries and values")
    argp.add_argument("--n", type=int, default=8, help="number of keys (and values)")
    argp.add_argument("--alpha", type=float, default=1e-4, help="the small key covariance alpha I of (c) and (d)")
    argp.add_argument("--scale", type=float, default=30.0, help="the large t of (c) and (d), as a score: t mu.mu")
    argp.add_argument("--samples", type=int, default=1000, help="key samples for (c) and (d)")
    args = argp.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    gen = torch.Generator().manual_seed(args.seed)
    d, n = args.d, args.n
    # float64 so that the large scores of the sweeps show softmax, not rounding
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
    keys = basis[:n]  # orthonormal keys (also serve as the means mu_i of (c) and (d))
    values = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0][:n]
    # orthonormal values too: the coefficient of v_i in c is then simply c . v_i
    # attend divides the scores by sqrt(d); we multiply every query by sqrt(d) so that
    # t below is the score itself: q . k_j / sqrt(d) = t for q = t sqrt(d) k_j
    root_d = math.sqrt(d)
    K, V = keys[None], values[None]

    # (a) copying: q = t k_j
    j = 0
    ts = torch.logspace(-1, 2, 61, dtype=torch.float64)
    w = torch.cat([weights(t * root_d * keys[j][None], K) for t in ts])
    c = torch.cat([attention(t * root_d * keys[j][None], K, V) for t in ts])
    ent = entropy(w)
    dist_j = (c - values[j]).norm(dim=-1)

    # (b) averaging: q = t (k_a + k_b)
    a, b = 0, 1
    half = (values[a] + values[b]) / 2
    c = torch.cat([attention(t * root_d * (keys[a] + keys[b])[None], K, V) for t in ts])
    err_avg = (c - half).norm(dim=-1)

    # (c) one head, q = t (mu_a + mu_b), and (d) two heads, q1 = t mu_a and q2 = t mu_b
    t = args.scale
    k, scale_a = sample_keys(keys, args.alpha, a, args.samples, gen)
    Vs = V.expand(args.samples, -1, -1)
    c1 = attention((t * root_d * (keys[a] + keys[b])).expand(args.samples, -1), k, Vs)
    c2 = (attention((t * root_d * keys[a]).expand(args.samples, -1), k, Vs)
          + attention((t * root_d * keys[b]).expand(args.samples, -1), k, Vs)) / 2
    coef1, coef2 = c1 @ values[a], c2 @ values[a]
    dist1, dist2 = (c1 - half).norm(dim=-1), (c2 - half).norm(dim=-1)

    plot(args.out, ts, ent, dist_j, err_avg, n, scale_a, coef1, coef2, t)

    def at(series, tv):
        return float(series[(ts - tv).abs().argmin()])
    shown = [0.1, 1, 3, 10, 30, 100]
    lines = ["# Attention exploration (handout question 1)", "",
             f"`python analysis/attention_demo.py --out {args.out} --seed {args.seed} --d {d} --n {n} "
             f"--alpha {args.alpha:g} --scale {args.scale:g} --samples {args.samples}`: {n} orthonormal "
             f"keys and values in {d} dimensions, one head of `CausalSelfAttention.attend`. t is the score q.k/sqrt(d) "
             f"(queries are scaled by sqrt(d) to cancel attend's division).", "",
             "## (a) copying, q = t k_j (uniform weights have entropy ln n = %.3f)" % math.log(n), "",
             "| t | " + " | ".join(f"{v:g}" for v in shown) + " |",
             "| --- |" + " --- |" * len(shown),
             "| entropy of the weights | " + " | ".join(f"{at(ent, v):.3g}" for v in shown) + " |",
             "| abs(c - v_j) | " + " | ".join(f"{at(dist_j, v):.3g}" for v in shown) + " |", "",
             "## (b) averaging, q = t (k_a + k_b)", "",
             "| t | " + " | ".join(f"{v:g}" for v in shown) + " |",
             "| --- |" + " --- |" * len(shown),
             "| abs(c - (v_a + v_b)/2) | " + " | ".join(f"{at(err_avg, v):.3g}" for v in shown) + " |", "",
             f"## (c, d) key a's norm perturbed (covariance {args.alpha:g} I + 1/2 mu_a mu_a^T), t = {t:g}, "
             f"{args.samples} samples", "",
             "| | coefficient of v_a: mean | std | share within 0.1 of 1/2 | abs(c - (v_a+v_b)/2): mean | max |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, coef, dist in (("(c) one head, q = t(mu_a + mu_b)", coef1, dist1),
                             ("(d) two heads, q = t mu_a and t mu_b", coef2, dist2)):
        near = ((coef - 0.5).abs() < 0.1).double().mean()
        lines.append(f"| {name} | {coef.mean():.3f} | {coef.std():.3f} | {near:.0%}"
                     f" | {dist.mean():.3f} | {dist.max():.3f} |")
    with open(os.path.join(args.out, "attention_demo.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return dict(ts=ts, entropy=ent, dist_j=dist_j, err_avg=err_avg, coef1=coef1, coef2=coef2,
                dist1=dist1, dist2=dist2)


def plot(out, ts, ent, dist_j, err_avg, n, scale_a, coef1, coef2, t):
    import matplotlib
    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].semilogx(ts, ent)
    ax[0].axhline(math.log(n), ls=":", c="gray", label=f"uniform (ln {n})")
    ax[0].set(xlabel="t (score of k_j)", ylabel="entropy of the attention weights", title="(a) q = t k_j")
    ax[0].legend()
    ax[1].loglog(ts, dist_j.clamp_min(1e-16))  # float64 rounding: below 1e-16 is zero
    ax[1].set(xlabel="t", ylabel="|c - v_j|", title="(a) the output approaches v_j")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "copying.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.loglog(ts, err_avg.clamp_min(1e-16))
    ax.set(xlabel="t", ylabel="|c - (v_a + v_b)/2|", title="(b) q = t (k_a + k_b)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "averaging.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].scatter(scale_a, coef1, s=4, label="one head, q = t(mu_a + mu_b)")
    ax[0].scatter(scale_a, coef2, s=4, label="two heads, t mu_a and t mu_b")
    ax[0].set(xlabel="scale of k_a along mu_a (1 + N(0, 1/2))", ylabel="coefficient of v_a in c",
              title=f"(c, d) t = {t:g}")
    ax[0].legend(fontsize=8)
    bins = torch.linspace(0, 1, 41).tolist()
    ax[1].hist(coef1.clamp(0, 1).tolist(), bins=bins, alpha=0.6, label="one head")
    ax[1].hist(coef2.clamp(0, 1).tolist(), bins=bins, alpha=0.6, label="two heads")
    ax[1].set(xlabel="coefficient of v_a in c (1/2 is the average)", ylabel="samples", title="spread over samples")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "heads.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
