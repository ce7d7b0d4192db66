"""Trains a tiny random Marian model with `wdctl.passes.training.train`; run directly for one
process or under `torch.distributed.run` for several. Used by test_distributed.py."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import MarianConfig, MarianMTModel

from wdctl.passes.distributed import distributed
from wdctl.passes.training import TrainConfig, train


def main(run_dir: str, steps: int, out: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = MarianConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32,
                          decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2, dropout=0.0,
                          pad_token_id=49, decoder_start_token_id=49, eos_token_id=0, max_position_embeddings=64)
    model = MarianMTModel(config)
    g = torch.Generator().manual_seed(1)
    examples = [(torch.randint(2, 49, (int(n),), generator=g).tolist() + [0],
                 torch.randint(2, 49, (int(n) + 1,), generator=g).tolist() + [0])
                for n in torch.randint(3, 12, (64,), generator=g)]
    cfg = TrainConfig(max_steps=steps, max_tokens=60, accum=2, lr=1e-3, warmup=2, save_every=2, log_every=1,
                      eval_every=100, seed=3)
    result = train(model, examples, cfg, Path(run_dir), pad_id=49, start_id=49, desc="ddp-test")
    if distributed().is_main:
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if "embed_positions" not in k
                   and k not in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")},
                  out + ".safetensors")
        Path(out).write_text(json.dumps([r["loss"] for r in result.history if "loss" in r]))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
