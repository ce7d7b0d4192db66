"""How well estimators of the left-out softmax mass recover a shortlisted step's normalizer log Z
on a model's real decoder states (teacher-forced, the first 64 dev pairs, each sentence's own
shortlist): the Gaussian estimate log n + μ + σ²/2 with the batch's own covariance (`full`), its
diagonal (`diag`), one covariance of the rows a shortlist may leave out, fixed at export
(`const_cov`, what the translator does), the mean alone (`mean_only`), and no estimate
(`renorm`). Prints mean and 95th-percentile |error| of log Z in nats.

    .venv/bin/python benchmarks/shortlist_mass_error.py MODEL
"""
import sys, torch, numpy as np
from wdctl.core.corpus import read_parallel
from wdctl.passes.marian import load_marian
from wdctl.passes.shortlist import Shortlist
from wdctl.passes.training import collate
from wdctl.passes.vocab import encode_pairs
torch.set_num_threads(1)
d_ = sys.argv[1]
model, tok = load_marian(d_); model.eval()
sl = Shortlist.load(f"{d_}/shortlist.json")
cfg = model.config
ex, _ = encode_pairs(tok, read_parallel("examples/data/bible", "dev")[:64], 256)
W = model.lm_head.weight.double(); b = model.final_logits_bias[0].double()
live = b > -1e8
A = torch.cat([W, b[:, None]], 1)
freq = torch.tensor(sorted(set(sl.frequent) | {cfg.pad_token_id, cfg.eos_token_id, cfg.decoder_start_token_id}))
errs = {k: [] for k in ("full", "diag", "const_cov", "mean_only")}
notfreq = torch.ones(len(A), dtype=torch.bool); notfreq[freq] = False
Cconst = torch.cov(A[notfreq & live].T, correction=0)
for e in ex:
    batch = collate([e], cfg.pad_token_id, cfg.decoder_start_token_id)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    h = out.decoder_hidden_states[-1][0].double()  # (T, d)
    keep = torch.zeros(len(A), dtype=torch.bool)
    keep[torch.from_numpy(sl.candidates(e[0], [cfg.pad_token_id, cfg.eos_token_id, cfg.decoder_start_token_id]))] = True
    rest = (~keep) & live
    R = A[rest]; n = len(R)
    h1 = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1)
    x = h1 @ R.T
    true = torch.logsumexp(x, 1)
    mu = R.mean(0); C = torch.cov(R.T, correction=0)
    m = h1 @ mu
    ests = {"full": np.log(n) + m + 0.5 * ((h1 @ C) * h1).sum(1),
            "diag": np.log(n) + m + 0.5 * (h1 ** 2 @ torch.diagonal(C)),
            "const_cov": np.log(n) + m + 0.5 * ((h1 @ Cconst) * h1).sum(1),
            "mean_only": np.log(n) + m}
    # what matters: error in the log-softmax of kept ids = error in log(Z_sub + Z_rest)
    xs = h1 @ A[keep & live].T
    zs = torch.logsumexp(xs, 1)
    z_true = torch.logaddexp(zs, true)
    for k, v in ests.items():
        errs[k].append((torch.logaddexp(zs, v) - z_true).abs())
    errs.setdefault("renorm", []).append((zs - z_true).abs())
for k, v in errs.items():
    v = torch.cat(v); print(f"{k:10s} mean |err in log Z| {v.mean():.4f}  p95 {v.quantile(0.95):.4f}")
