"""Where a shortlist's beam-4 BLEU cost comes from: PyTorch beam 4 over each sentence's own
shortlist (`Shortlist.candidates`), with the kept ids' log-probabilities (a) renormalized over the
shortlist (what a search over shortlisted logits does: `renorm`), (b) the full model's
(`norenorm`: the bound), (c) the full model's normalizer estimated from the left-out logits'
mean and variance (`gauss`, what the translator's rest slot does, here from the exact left-out
logits), against the full search (`full`); test BLEU on the first N pairs.

    .venv/bin/python benchmarks/shortlist_renorm.py MODEL N full,renorm,norenorm,gauss
"""
import sys, torch, sacrebleu, math
from transformers import LogitsProcessor, LogitsProcessorList
from wdctl.core.corpus import read_parallel
from wdctl.passes.marian import load_marian
from wdctl.passes.shortlist import Shortlist
torch.set_num_threads(1)
model_dir, n = sys.argv[1], int(sys.argv[2])
modes = sys.argv[3].split(",")
model, tok = load_marian(model_dir); model.eval()
sl = Shortlist.load(f"{model_dir}/shortlist.json")
test = read_parallel("examples/data/bible", "test")[:n]
cfg = model.config
special = [cfg.pad_token_id, cfg.eos_token_id, cfg.decoder_start_token_id]

class Mask(LogitsProcessor):
    def __init__(self, keep, mode, beams): self.keep, self.mode, self.beams = keep, mode, beams
    def __call__(self, input_ids, scores):
        keep = self.keep.repeat_interleave(self.beams, 0)
        if self.mode == "renorm":
            return torch.log_softmax(scores.masked_fill(~keep, -math.inf), -1)
        if self.mode == "norenorm":
            return scores.masked_fill(~keep, -math.inf)
        if self.mode == "gauss":  # rest mass from the rest logits' mean and variance (log-normal estimate)
            rest = scores.masked_fill(keep, math.nan)  # scores = full log-probs; shift is irrelevant
            cnt = (~keep).sum(-1, keepdim=True).float()
            mu = torch.nanmean(rest, -1, keepdim=True)
            var = torch.nansum((rest - mu) ** 2, -1, keepdim=True) / cnt
            sub = scores.masked_fill(~keep, -math.inf)
            lse_rest = torch.log(cnt) + mu + var / 2
            lse = torch.logaddexp(torch.logsumexp(sub, -1, keepdim=True), lse_rest)
            return sub - lse
        raise ValueError(self.mode)

out = {}
for mode in modes:
    hyps = []
    for i in range(0, n, 32):
        src = [s for s, _ in test[i:i+32]]
        enc = tok(src, return_tensors="pt", padding=True, truncation=True, max_length=256)
        keep = torch.zeros(len(src), cfg.vocab_size, dtype=torch.bool)
        for r, ids in enumerate(enc["input_ids"]):
            keep[r, torch.from_numpy(sl.candidates(ids[enc["attention_mask"][r].bool()].tolist(), special))] = True
        procs = LogitsProcessorList() if mode == "full" else LogitsProcessorList([Mask(keep, mode, 4)])
        with torch.no_grad():
            gen = model.generate(**enc, num_beams=4, max_new_tokens=256, logits_processor=procs)
        hyps += tok.batch_decode(gen, skip_special_tokens=True)
    bleu = sacrebleu.corpus_bleu(hyps, [[t for _, t in test]]).score
    out[mode] = hyps
    print(mode, round(bleu, 2), flush=True)
same = lambda a, b: sum(x == y for x, y in zip(out[a], out[b]))
for m in modes[1:]: print("lines equal to full:", m, same("full", m), "/", n)
