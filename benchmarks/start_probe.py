"""Step-0 probe loss of each start a student can take from the teacher (no training).

For each student preset, the label-smoothed cross-entropy (the probe `wdctl compress` reports
before training, on the first 64 dev pairs) of the cut student from each `--start`: `leading`,
`importance` (coordinates by activation, layers by the cut student's loss) and
`block-importance` (layers by 1 − cos(layer input, output)), each also with its top decoder
layer refitted to the teacher's output (`--refit-output`), and, for a one-layer decoder, the cut
from every single teacher decoder layer, with and without the refit. The uniform
distribution's loss is ln(vocab).

    python benchmarks/start_probe.py [--teacher examples/teacher] [--presets small tiny]
"""

import argparse
import json
import math

import torch

from wdctl.core.corpus import read_parallel
from wdctl.passes.cutoff import cut_from_plan
from wdctl.passes.grouping import GroupPlan
from wdctl.passes.marian import load_marian, load_marian_config
from wdctl.passes.methods import IMPORTANCE_BATCHES, IMPORTANCE_BATCH_SIZE, REFIT_BATCHES
from wdctl.passes.phases import probe_loss
from wdctl.passes.refit import refit_output_layer
from wdctl.passes.selection import block_importance, choose_start_layers, importance_start, most_important_layers
from wdctl.passes.student import resolve_student, student_config
from wdctl.passes.training import collate
from wdctl.passes.vocab import encode_pairs

PROBE_SIZE, MAX_LENGTH = 64, 256  # as wdctl.recipes.compress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="examples/teacher")
    ap.add_argument("--data", default="examples/data/bible")
    ap.add_argument("--presets", nargs="+", default=["small", "tiny"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t_config = load_marian_config(args.teacher, teacher=True)
    teacher, tokenizer = load_marian(args.teacher)
    state = teacher.state_dict()
    probe, _ = encode_pairs(tokenizer, read_parallel(args.data, "dev")[:PROBE_SIZE], MAX_LENGTH)
    n = IMPORTANCE_BATCH_SIZE
    train, _ = encode_pairs(tokenizer, read_parallel(args.data, "train")[: REFIT_BATCHES * n], MAX_LENGTH)
    pad, start_id = t_config.pad_token_id, t_config.decoder_start_token_id
    refit_batches = [collate(train[i : i + n], pad, start_id) for i in range(0, len(train), n)]
    batches = refit_batches[:IMPORTANCE_BATCHES]
    loss = lambda model: round(probe_loss(model, probe, pad, start_id, 0.1), 3)  # noqa: E731
    results = {"teacher": loss(teacher), "uniform": round(math.log(t_config.vocab_size), 3)}
    importance = block_importance(teacher, batches)
    results["block_importance"] = {side: [round(float(v), 4) for v in values] for side, values in importance.items()}
    for preset in args.presets:
        s_config = student_config(t_config, resolve_student(preset, t_config))
        plan = GroupPlan.build(t_config, s_config, generator="coherent")
        coords = importance_start(plan, teacher, batches)
        starts = {
            "leading": (None, plan.start_layers()),
            "importance": (coords, choose_start_layers(plan, state, batches[:1], start=coords)),
            "block-importance": (coords, most_important_layers(plan, importance)),
        }
        def probes(start, layers) -> dict:
            """The cut's probe, and the probe with the top decoder layer refitted."""
            moved = plan.with_start_layers(layers)
            cut = cut_from_plan(state, moved, start)
            keep = plan.decoder_residual_start(start)
            refit = refit_output_layer(teacher, cut, refit_batches, keep)
            return {"probe": loss(cut), "refit probe": loss(cut_from_plan(state, moved, start, refit))}

        row = {}
        for name, (start, layers) in starts.items():
            chosen = {f"{side}.{i}": plan.groups[side][i][j] for (side, i), j in sorted(layers.items())
                      if len(plan.groups[side][i]) > 1}
            row[name] = {**probes(start, layers), "layers": chosen}
        if len(plan.groups["decoder"]) == 1:
            group = plan.groups["decoder"][0]
            row["single decoder layer (importance coordinates)"] = {
                str(group[j]): probes(coords, {("decoder", 0): j}) for j in range(len(group))}
        results[preset] = row
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
