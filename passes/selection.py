"""Where the coherent generator (and cut-kd) start: which teacher coordinates each space keeps.

`GroupPlan.start_indices()` keeps the leading coordinates of every narrower space (the cut-off
student). `importance_start` ranks them on a few teacher batches instead (method spec 2b):

- residual stream: coordinates by activation energy (sum of squares over the stream's hidden
  states, padding excluded);
- FFN hidden space of a student layer: neurons of the teacher layer it starts from by
  mean |activation| × the norm of their fc2 column;
- an attention block's query-key and value-output spaces: whole heads, ranked by the norm of
  their contribution to the block's output (out_proj of the head's values); both spaces of a
  block keep the same heads, so every kept student head is one teacher head. When the student's
  head size differs from the teacher's, heads cannot be kept whole and the block keeps its
  leading coordinates.

Which teacher layer each student layer starts from (within its group): `choose_start_layers`
picks by the cut student's loss (`--start importance`); `block_importance` ranks each teacher
layer by how much it changes its input, 1 − cos(layer input, layer output) averaged over
tokens (Minitron's block importance; `--start block-importance` takes each group's highest).

Kept coordinates stay in teacher order. Pass the result as `start=` to both
`ParameterGenerator` and `cut_teacher`, so that cut-kd starts from the same slice as coherent WD.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from wdctl.core.errors import InputError
from wdctl.passes.grouping import GeneratorEntry, GroupPlan, Space

SELECTIONS = ("leading", "importance", "block-importance")


def _top(scores: Tensor, k: int) -> Tensor:
    return scores.topk(k).indices.sort().values.cpu()


def _coherent(plan: GroupPlan) -> GroupPlan:
    if plan.generator == "coherent":
        return plan
    return GroupPlan.build(plan.teacher_config, plan.student_config, plan.subset_bytes, generator="coherent")


def _entry_for(plan: GroupPlan, out_space: str) -> GeneratorEntry:
    return next(e for e in plan.entries if e.out_space == out_space and e.student_layer is not None)


class _Recorder:
    """Forward hooks on the teacher that accumulate the statistics the ranking needs."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher
        self.masks: dict[str, Tensor] = {}
        self.ffn: dict[tuple[str, int], Tensor] = {}
        self.heads: dict[tuple[str, int, str], Tensor] = {}
        self.handles = []
        for side in ("encoder", "decoder"):
            for index, layer in enumerate(getattr(teacher.model, side).layers):
                self.handles.append(layer.fc2.register_forward_pre_hook(self._ffn_hook(side, index, layer.fc2)))
                for block in ("self_attn", "encoder_attn"):
                    attn = getattr(layer, block, None)
                    if attn is not None:
                        hook = self._head_hook(side, index, block, attn.out_proj, attn.num_heads)
                        self.handles.append(attn.out_proj.register_forward_pre_hook(hook))

    def _mask(self, side: str, x: Tensor) -> Tensor:
        mask = self.masks.get(side)
        if mask is None or mask.shape != x.shape[:2]:
            return torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
        return mask.to(x.dtype)

    def _ffn_hook(self, side: str, index: int, fc2: nn.Linear):
        def hook(module, args):
            x = args[0].detach()
            mask = self._mask(side, x)
            total = (x.abs() * mask[..., None]).sum(dim=(0, 1))
            key = (side, index)
            self.ffn[key] = self.ffn.get(key, 0) + total / mask.sum().clamp(min=1)
        return hook

    def _head_hook(self, side: str, index: int, block: str, out_proj: nn.Linear, heads: int):
        def hook(module, args):
            x = args[0].detach()
            b, t, d = x.shape
            w = out_proj.weight.detach().view(out_proj.out_features, heads, d // heads)
            y = torch.einsum("bthk,ohk->btho", x.view(b, t, heads, d // heads), w)
            mask = self._mask(side, x)
            norms = (y.norm(dim=-1) * mask[..., None]).sum(dim=(0, 1)) / mask.sum().clamp(min=1)
            key = (side, index, block)
            self.heads[key] = self.heads.get(key, 0) + norms
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def importance_start(
    plan: GroupPlan, teacher: nn.Module, batches: Iterable[Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    """Per projected space of `plan`, the teacher coordinates ranked most important on `batches`
    (dicts the teacher takes: input_ids, attention_mask, and labels or decoder_input_ids, on the
    teacher's device). The spaces are the coherent generator's, whatever `plan.generator` is."""
    plan = _coherent(plan)
    spaces = {s.name: s for s in plan.projected_spaces}
    if not spaces:
        return {}
    was_training = teacher.training
    teacher.eval()
    recorder = _Recorder(teacher)
    energy: dict[str, Tensor] = {}
    seen = 0
    try:
        for batch in batches:
            batch = dict(batch)
            labels = batch.get("labels")
            recorder.masks = {"encoder": batch["attention_mask"],
                              "decoder": (labels != -100) if labels is not None else None}
            out = teacher(**batch, output_hidden_states=True)
            for side, states in (("encoder", out.encoder_hidden_states), ("decoder", out.decoder_hidden_states)):
                mask = recorder._mask(side, states[0])
                total = sum((h.detach() ** 2 * mask[..., None]).sum(dim=(0, 1)) for h in states)
                energy[side] = energy.get(side, 0) + total
            seen += 1
    finally:
        recorder.close()
        teacher.train(was_training)
    if not seen:
        raise InputError("importance ranking needs at least one batch")
    start: dict[str, Tensor] = {}
    for name, space in spaces.items():
        if name.endswith("residual"):
            sides = ("encoder", "decoder") if name == "residual" else (name.split(".")[0],)
            start[name] = _top(sum(energy[s] for s in sides), space.student_dim)
        elif name.endswith(".ffn"):
            e = _entry_for(plan, name)
            side = e.role.split(".")[0]
            layer = plan.groups[side][e.student_layer][e.select]
            fc2 = getattr(teacher.model, side).layers[layer].fc2.weight
            start[name] = _top(recorder.ffn[(side, layer)] * fc2.detach().norm(dim=0), space.student_dim)
        elif name.endswith((".qk", ".vo")):
            start[name] = _head_indices(plan, recorder, space, teacher)
        else:  # a space without a ranking rule keeps its leading coordinates
            start[name] = torch.arange(space.student_dim)
    return start


def _head_indices(plan: GroupPlan, recorder: _Recorder, space: Space, teacher: nn.Module) -> Tensor:
    side, student_layer, block, _ = space.name.split(".")
    heads_t, heads_s = space.heads or (1, 1)
    size_t, size_s = space.teacher_dim // heads_t, space.student_dim // heads_s
    if size_t != size_s:
        return torch.arange(space.student_dim)
    e = _entry_for(plan, space.name)
    layer = plan.groups[side][int(student_layer)][e.select]
    kept = _top(recorder.heads[(side, layer, block)], heads_s)
    return (kept[:, None] * size_t + torch.arange(size_t)).flatten()


@torch.no_grad()
def choose_start_layers(
    plan: GroupPlan,
    teacher_state: Mapping[str, Tensor],
    batches: Iterable[Mapping[str, Tensor]],
    start: Mapping[str, Tensor] | None = None,
) -> dict[tuple[str, int], int]:
    """Per (side, student layer) whose group has several teacher layers, the one to start from,
    chosen by the cut student's loss on `batches` (greedy, bottom layer first, the other layers
    at their current choice). Apply with `plan.with_start_layers(...)` and pass the same dict
    as `cut_teacher(..., start_layers=...)`."""
    from wdctl.passes.cutoff import cut_from_plan

    plan = _coherent(plan)
    batches = [dict(b) for b in batches]
    if not batches or any("labels" not in b for b in batches):
        raise InputError("choosing start layers needs at least one batch with labels")

    def loss(candidate: GroupPlan) -> float:
        model = cut_from_plan(teacher_state, candidate, start)
        return sum(float(model(**b).loss) for b in batches) / len(batches)

    choice = plan.start_layers()
    for side in ("encoder", "decoder"):
        for layer, group in enumerate(plan.groups[side]):
            if len(group) < 2:
                continue
            scores = [loss(plan.with_start_layers({**choice, (side, layer): i})) for i in range(len(group))]
            choice[(side, layer)] = min(range(len(group)), key=scores.__getitem__)
    return choice


@torch.no_grad()
def block_importance(teacher: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Per side, each teacher layer's block importance: 1 − cos(its input, its output) per
    token, averaged over the non-padding tokens of `batches` (batches as for `importance_start`)."""
    was_training = teacher.training
    teacher.eval()
    sums: dict[str, Tensor] = {}
    tokens: dict[str, Tensor] = {}
    try:
        for batch in batches:
            batch = dict(batch)
            labels = batch.get("labels")
            out = teacher(**batch, output_hidden_states=True)
            masks = {"encoder": batch["attention_mask"].bool(),
                     "decoder": (labels != -100) if labels is not None else None}
            for side, states in (("encoder", out.encoder_hidden_states), ("decoder", out.decoder_hidden_states)):
                mask = masks[side] if masks[side] is not None else torch.ones(states[0].shape[:2], dtype=torch.bool)
                change = torch.stack([1 - torch.cosine_similarity(a, b, dim=-1)[mask]
                                      for a, b in zip(states[:-1], states[1:])])  # (layers, tokens)
                sums[side] = sums.get(side, 0) + change.sum(dim=1)
                tokens[side] = tokens.get(side, 0) + mask.sum()
    finally:
        teacher.train(was_training)
    if not sums:
        raise InputError("block importance needs at least one batch")
    return {side: (sums[side] / tokens[side].clamp(min=1)).clamp(min=0) for side in sums}  # cos rounds past 1


def most_important_layers(plan: GroupPlan, importance: Mapping[str, Tensor]) -> dict[tuple[str, int], int]:
    """Per (side, student layer) whose group has several teacher layers, the index in the group of
    its most important teacher layer (`block_importance`); apply as `choose_start_layers`' result."""
    choice = plan.start_layers()
    for side, groups in plan.groups.items():
        for layer, group in enumerate(groups):
            if len(group) > 1:
                choice[(side, layer)] = max(range(len(group)), key=lambda i: float(importance[side][group[i]]))
    return choice
