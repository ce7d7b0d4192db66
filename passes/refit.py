"""Output refit: the student's last decoder layer re-fitted to the teacher's last decoder state.

A student with fewer decoder layers than its teacher starts its top layer from a middle teacher
layer, whose output the output layer was never trained to read: TINY's one-layer decoder cut
from any single teacher layer probes at the uniform loss (examples/results/start-probe/). The
refit keeps every weight of the cut but the top layer's `fc2` (and takes the teacher's last
`final_layer_norm` at the kept coordinates): on a few teacher-forced batches, `fc2` becomes
the ridge-regression fit that makes the layer's sum (residual + fc2) match the teacher's last
layer's, normalized as that layer's LayerNorm normalizes it and read at the kept residual
coordinates. It is closed form (one (ffn+1)² solve), needs one forward of each model, and
accumulates only the normal equations, so memory does not grow with the batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from wdctl.core.errors import InputError

RIDGE = 1e-4  # λ relative to the token count: tokens ≫ ffn, so the fit barely depends on it


class _LastLayer:
    """Hooks on a model's top decoder layer: per real token, the fc2 input and the FFN's sum
    (residual + fc2 output, what final_layer_norm normalizes)."""

    def __init__(self, model: nn.Module):
        layer = model.model.decoder.layers[-1]
        self.norm = layer.final_layer_norm
        self.fc2_input = self.fc2_output = self.ffn_sum = None
        self.handles = [layer.fc2.register_forward_hook(self._fc2), self.norm.register_forward_hook(self._sum)]

    def _fc2(self, module, args, output) -> None:
        self.fc2_input, self.fc2_output = args[0].detach(), output.detach()

    def _sum(self, module, args, output) -> None:
        self.ffn_sum = args[0].detach()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def refit_output_layer(
    teacher: nn.Module, student: nn.Module, batches: Iterable[Mapping[str, Tensor]], keep: Tensor | None = None,
    ridge: float = RIDGE,
) -> dict[str, Tensor]:
    """Student tensors (state-dict names) of the refitted top decoder layer: fc2's weight and
    bias, and final_layer_norm's weight and bias from the teacher's last layer. `keep` is the
    teacher's residual coordinates the student's decoder keeps (None: the same width);
    `batches` are teacher inputs with labels (padding excluded by labels == -100)."""
    models = (teacher, student)
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    hooks = _LastLayer(teacher), _LastLayer(student)
    gram = cross_target = cross_residual = None
    moments = torch.zeros(2, 2, dtype=torch.float64)  # (target, residual) × (sum of squares, count)
    try:
        for batch in batches:
            batch = dict(batch)
            if "labels" not in batch:
                raise InputError("the output refit needs batches with labels")
            mask = batch["labels"] != -100
            for m in models:
                m(**batch)
            t_sum, s_hooks = hooks[0].ffn_sum[mask].double(), hooks[1]
            target = (t_sum - t_sum.mean(-1, keepdim=True)) / (t_sum.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
            if keep is not None:
                target = target[:, keep.to(target.device)]
            residual = (s_hooks.ffn_sum - s_hooks.fc2_output)[mask].double()
            a = s_hooks.fc2_input[mask].double()
            a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], dim=1)
            gram = a.T @ a if gram is None else gram + a.T @ a
            cross_target = a.T @ target if cross_target is None else cross_target + a.T @ target
            cross_residual = a.T @ residual if cross_residual is None else cross_residual + a.T @ residual
            moments += torch.tensor([[float(target.square().sum()), target.numel()],
                                     [float(residual.square().sum()), residual.numel()]], dtype=torch.float64)
    finally:
        for h in hooks:
            h.close()
        for m, mode in zip(models, modes):
            m.train(mode)
    if gram is None:
        raise InputError("the output refit needs at least one batch")
    tokens = float(gram[-1, -1])
    # The target at the residual's own scale (LayerNorm removes any common scale; this keeps
    # the residual's share of the sum as the cut had it).
    scale = float((moments[1, 0] / moments[1, 1]).sqrt() / (moments[0, 0] / moments[0, 1]).sqrt())
    rhs = scale * cross_target - cross_residual
    weights = torch.linalg.solve(gram + ridge * tokens * torch.eye(len(gram), dtype=gram.dtype, device=gram.device), rhs)
    norm = hooks[0].norm
    keep_t = keep.to(norm.weight.device) if keep is not None else slice(None)
    prefix = f"model.decoder.layers.{len(student.model.decoder.layers) - 1}"
    return {
        f"{prefix}.fc2.weight": weights[:-1].T.float().contiguous().cpu(),
        f"{prefix}.fc2.bias": weights[-1].float().cpu(),
        f"{prefix}.final_layer_norm.weight": norm.weight[keep_t].detach().float().clone().cpu(),
        f"{prefix}.final_layer_norm.bias": norm.bias[keep_t].detach().float().clone().cpu(),
    }
