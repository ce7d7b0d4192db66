"""The one training loop: teacher training, WD phase 1 and phase 2 all run through `train`.

Read it top to bottom: batches of about `max_tokens` tokens → label-smoothed cross-entropy
(plus an optional word-level KD term) → gradient accumulation → Adam with an inverse-sqrt (or
linear-decay) schedule → periodic dev evaluation and checkpoints. A checkpoint holds the trainable
tensors (safetensors), the optimizer, the data position and the RNG state, so a run stopped by
Ctrl-C/SIGTERM resumes where it stopped and ends where an uninterrupted run would have.

The model is any `nn.Module` called as `model(input_ids=, attention_mask=,
decoder_input_ids=)` returning an object with `.logits`; only parameters with
`requires_grad` are trained and checkpointed (for phase 1 that is the generator alone).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from wdctl.core.atomic import atomic_dir
from wdctl.core.errors import InputError, WdctlError
from wdctl.core.runinfo import native_bf16, peak_rss_mb
from wdctl.passes.distributed import check_accum, distributed

Example = tuple[list[int], list[int]]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    max_steps: int = 20000
    max_minutes: float = 0.0  # stop after this much training time (summed over resumes); 0 = none
    max_tokens: int = 4096  # tokens per micro-batch (padded source or target, whichever is longer)
    accum: int = 1  # micro-batches per optimizer step
    lr: float = 7e-4
    warmup: int = 4000
    adam_betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    clip_norm: float = 0.0  # 0 = no clipping
    label_smoothing: float = 0.1
    kd_weight: float = 0.0  # weight of the word-level KL term to the teacher (needs a teacher)
    # weight of the intermediate-state loss: the student's last decoder state against the
    # teacher's at the residual coordinates the student keeps (`state_loss`; needs a teacher)
    hidden_weight: float = 0.0
    eval_every: int = 1000
    save_every: int = 500
    log_every: int = 50
    average_last: int = 1  # average the last N checkpoints at the end (the release uses 5 for teachers)
    seed: int = 1
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    device: str = "cpu"  # "cpu" or "cuda[:N]"
    # "fp32", or autocast "bf16" / "fp16" (fp16 with loss scaling); "auto": bf16 on a CPU with
    # hardware bf16 (AMX, AVX-512 BF16), fp32 elsewhere. validate() returns a copy with "auto" resolved.
    precision: str = "fp32"
    schedule: str = "inverse-sqrt"  # SCHEDULES: "inverse-sqrt" (the release's) or "linear" (to zero at max_steps)
    # Stop at a plateau: when the last `plateau_patience` dev evaluations gained no more than
    # `plateau_min_gain` BLEU over the best before them (0 = train to max_steps).
    plateau_patience: int = 0
    plateau_min_gain: float = 0.2

    @property
    def teacher_loss(self) -> str | None:
        """The loss terms that run the teacher on every step, as the memory estimate counts them."""
        return "kl" if self.kd_weight > 0 else "states" if self.hidden_weight > 0 else None

    @property
    def needs_teacher(self) -> bool:
        return self.teacher_loss is not None

    def validate(self) -> "TrainConfig":
        positive = ("max_steps", "max_tokens", "accum", "warmup", "eval_every", "save_every", "log_every", "average_last")
        for name in positive:
            if getattr(self, name) <= 0:
                raise InputError(f"training option {name} must be positive, got {getattr(self, name)}")
        if self.plateau_patience < 0 or self.plateau_min_gain < 0:
            raise InputError("training options: plateau_patience and plateau_min_gain must be >= 0")
        if self.lr <= 0 or not 0 <= self.label_smoothing < 1 or not 0 <= self.kd_weight <= 1:
            raise InputError("training options: lr must be > 0, label_smoothing in [0, 1), kd_weight in [0, 1]")
        if not (self.hidden_weight >= 0 and math.isfinite(self.hidden_weight)):
            raise InputError(f"training option hidden_weight must be a finite number >= 0, got {self.hidden_weight}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is visible to torch (this torch build or machine has no GPU)")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise InputError(f"device must be cpu or cuda[:N], got {self.device!r}")
        precision = self.precision
        if precision == "auto":
            precision = "bf16" if self.device == "cpu" and native_bf16() else "fp32"
        return replace(self, precision=precision, adam_betas=tuple(self.adam_betas))


@dataclass
class TrainResult:
    steps: int
    train_seconds: float
    peak_rss_mb: float
    history: list[dict] = field(default_factory=list)
    plateau: bool = False  # stopped by plateau_patience before max_steps


def plateaued(scores: list[float], patience: int, min_gain: float) -> bool:
    """True when the last `patience` scores gained no more than `min_gain` over the best before them."""
    if patience <= 0 or len(scores) <= patience:
        return False
    return max(scores[-patience:]) <= max(scores[:-patience]) + min_gain


def logged_scores(log_path: Path, up_to_step: int, key: str = "dev_bleu") -> list[float]:
    """The `key` values a run logged at steps <= `up_to_step`, one per step (the last logged wins):
    a resumed run continues its plateau check where it stopped."""
    if not log_path.is_file():
        return []
    by_step = {}
    for line in log_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if key in record and record["step"] <= up_to_step:
            by_step[record["step"]] = record[key]
    return [by_step[s] for s in sorted(by_step)]


def check_budget(where: Path, steps: int, cfg: TrainConfig) -> None:
    """Refuse to go on with a run that has trained more steps than `cfg` asks for: it would not
    be the run asked for."""
    if steps > cfg.max_steps:
        raise InputError(f"{where}: trained {steps} steps already, more than the {cfg.max_steps} asked now; "
                         f"ask for at least {steps} steps, or use a new run directory")


# Options that change what a resumed run computes; the others (step budget, logging) may change.
RESUME_MUST_MATCH = ("max_tokens", "accum", "lr", "warmup", "adam_betas", "weight_decay", "clip_norm",
                     "label_smoothing", "kd_weight", "hidden_weight", "seed", "schedule")


class TrainingInterrupted(WdctlError):
    exit_code = 130


class BatchStream:
    """Token-based batches in a fixed, seed-determined order; its position is checkpointable."""

    def __init__(self, examples: list[Example], max_tokens: int, seed: int):
        self.examples, self.max_tokens, self.seed = examples, max_tokens, seed
        self.epoch, self.index = 0, 0
        self._batches = self._make_epoch(0)

    def _make_epoch(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        size = [max(len(s), len(t)) for s, t in self.examples]
        order = sorted(range(len(self.examples)), key=lambda i: (size[i], rng.random()))
        batches, current, longest = [], [], 0
        for i in order:
            if current and max(longest, size[i]) * (len(current) + 1) > self.max_tokens:
                batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, size[i])
        batches.append(current)
        rng.shuffle(batches)
        return batches

    def seek(self, epoch: int, index: int) -> None:
        self.epoch, self.index = epoch, index
        self._batches = self._make_epoch(epoch)

    def next(self) -> list[Example]:
        if self.index >= len(self._batches):
            self.seek(self.epoch + 1, 0)
        batch = self._batches[self.index]
        self.index += 1
        return [self.examples[i] for i in batch]


def collate(batch: list[Example], pad_id: int, start_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch; decoder inputs are the targets shifted right behind the start token."""
    src_len = max(len(s) for s, _ in batch)
    tgt_len = max(len(t) for _, t in batch)
    input_ids = torch.full((len(batch), src_len), pad_id, dtype=torch.long)
    decoder_input_ids = torch.full((len(batch), tgt_len), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), tgt_len), -100, dtype=torch.long)
    for row, (src, tgt) in enumerate(batch):
        input_ids[row, : len(src)] = torch.tensor(src)
        decoder_input_ids[row, : len(tgt)] = torch.tensor([start_id] + tgt[:-1])
        labels[row, : len(tgt)] = torch.tensor(tgt)
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != pad_id).long(),
        "decoder_input_ids": decoder_input_ids,
        "labels": labels,
    }


def inverse_sqrt(warmup: int) -> Callable[[int], float]:
    """Linear warm-up to the peak, then decay with 1/sqrt(step) (the release's schedule)."""
    return lambda step: min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))


def linear_decay(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up to the peak, then a straight line to zero at `total` steps, the usual
    schedule for a fixed budget (on the demo's phase 2: a lower held-out loss than inverse-sqrt,
    BLEU within the seed noise; README)."""
    return lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))


# Learning-rate multiplier per optimizer step, by TrainConfig.schedule.
SCHEDULES: dict[str, Callable[["TrainConfig"], Callable[[int], float]]] = {
    "inverse-sqrt": lambda cfg: inverse_sqrt(cfg.warmup),
    "linear": lambda cfg: linear_decay(cfg.warmup, cfg.max_steps),
}


def sequence_loss(logits, labels, label_smoothing, kd_weight=0.0, teacher_logits=None) -> torch.Tensor:
    """Summed label-smoothed CE over target tokens, mixed with KL to the teacher if asked."""
    vocab = logits.size(-1)
    ce = F.cross_entropy(
        logits.view(-1, vocab).float(), labels.view(-1), ignore_index=-100,
        label_smoothing=label_smoothing, reduction="sum",
    )
    if kd_weight == 0.0 or teacher_logits is None:
        return ce
    mask = labels.view(-1) != -100
    student_logp = F.log_softmax(logits.view(-1, vocab)[mask].float(), dim=-1)
    teacher_logp = F.log_softmax(teacher_logits.view(-1, vocab)[mask].float(), dim=-1)
    kl = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="sum")
    return (1 - kd_weight) * ce + kd_weight * kl


def state_loss(student_state, teacher_state, labels, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Summed over target tokens: the mean squared difference between the student's last decoder
    state and the teacher's at `keep` (the teacher residual coordinates the student's decoder
    keeps; None: the same width). Minitron adds such a loss when depth is cut hard; the output
    refit starts TINY's one decoder layer at exactly this target."""
    mask = labels != -100
    target = teacher_state[mask].float()
    if keep is not None:
        target = target[:, keep.to(target.device)]
    return F.mse_loss(student_state[mask].float(), target, reduction="none").mean(-1).sum()


# --- checkpoints -------------------------------------------------------------------------------

def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step-*"))


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint directory (`save_checkpoint`'s step-NNNNNNNN) was saved at."""
    return int(path.name.removeprefix("step-"))


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, stream: BatchStream, step: int,
                    seconds: float, cfg: TrainConfig) -> Path:
    path = run_dir / "checkpoints" / f"step-{step:08d}"
    with atomic_dir(path, force=True) as tmp:
        save_file(trainable_tensors(model), str(tmp / "trainable.safetensors"))
        torch.save(
            {
                "step": step,
                "seconds": seconds,
                "epoch": stream.epoch,
                "index": stream.index,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            },
            tmp / "state.pt",
        )
    for old in checkpoint_dirs(run_dir)[: -max(cfg.average_last, 1)]:
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    return path


def check_same_config(path: Path, saved: dict, cfg: TrainConfig) -> None:
    """Refuse to resume a run with settings that would make it a different run."""
    now = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    changed = [f"{k}: {saved[k]} -> {now[k]}" for k in RESUME_MUST_MATCH if k in saved and saved[k] != now[k]]
    if changed:
        raise InputError(
            f"{path}: checkpoint was made with other training settings ({'; '.join(changed)}); "
            "rerun with the original settings or use a new run directory"
        )


def load_trainable(model: nn.Module, path: Path) -> None:
    tensors = load_file(str(path / "trainable.safetensors"))
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        raise InputError(f"{path}: checkpoint does not match this model (different tensors); use a new run directory")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in tensors.items():
            params[name].copy_(value)


def average_checkpoints(model: nn.Module, paths: list[Path]) -> None:
    """Load the element-wise mean of the trainable tensors of `paths` into `model`."""
    total = None
    for path in paths:
        tensors = load_file(str(path / "trainable.safetensors"))
        total = tensors if total is None else {k: total[k] + v for k, v in tensors.items()}
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in total.items():
            params[name].copy_(value / len(paths))


class _StopFlag:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step.

    The same signal again stops at once, unless `patient`: under torchrun, Ctrl-C reaches a
    worker twice (from the terminal and forwarded by the launcher, which escalates to SIGKILL
    itself after its shutdown timeout), and the second must not cut short the checkpoint the
    first asked for."""

    def __init__(self, patient: bool = False):
        self.signal: int | None = None
        self.patient = patient
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is None:
            self.signal = signum
        elif signum == self.signal and not self.patient:  # asked twice: stop now
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def attention_implementation(modules: list[nn.Module | None], implementation: str | None):
    """Run the transformers models inside `modules` with another attention implementation (None:
    leave them as they are) and restore theirs after. CPU bf16 training needs "eager": SDPA's bf16 backward on CPU is slow
    (`benchmarks/train_precision.py`: bf16 with SDPA 1.18x fp32, with eager attention 1.72x)."""
    from transformers import PreTrainedModel

    if implementation is None:  # keep what the models have
        yield
        return
    models = [m for module in modules if module is not None for m in module.modules() if isinstance(m, PreTrainedModel)]
    previous = [m.config._attn_implementation for m in models]
    for m in models:
        m.set_attn_implementation(implementation)
    try:
        yield
    finally:
        for m, name in zip(models, previous):
            m.set_attn_implementation(name)


# --- the loop ----------------------------------------------------------------------------------

def train(
    model: nn.Module,
    examples: list[Example],
    cfg: TrainConfig,
    run_dir: Path,
    *,
    pad_id: int,
    start_id: int,
    evaluate: Callable[[nn.Module], dict] | None = None,
    teacher: nn.Module | None = None,
    hidden_keep: torch.Tensor | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train `model` in place on `examples`; resume from `run_dir/checkpoints` if present.

    `hidden_keep`: the teacher residual coordinates the student's decoder keeps, for
    `cfg.hidden_weight` (None: the same width).

    Under `torchrun` every rank walks the same batch stream and takes every world-th
    micro-batch of a step, so the global batch (and the checkpoint) does not depend on the
    world size; `accum` must be a multiple of it. Rank 0 alone writes and evaluates.
    """
    cfg = cfg.validate()
    if cfg.needs_teacher and teacher is None:
        raise InputError("kd_weight > 0 or hidden_weight > 0 needs a teacher model")
    dist = distributed(cfg.device)
    check_accum(cfg.accum, dist.world, desc)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = dist.device(cfg.device)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, SCHEDULES[cfg.schedule](cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    stream = BatchStream(examples, cfg.max_tokens, cfg.seed)
    step, seconds = 0, 0.0

    existing = checkpoint_dirs(run_dir)
    if existing:
        load_trainable(model, existing[-1])
        state = torch.load(existing[-1] / "state.pt", weights_only=True, map_location="cpu")
        check_same_config(existing[-1], state.get("config", {}), cfg)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.seek(state["epoch"], state["index"])
        torch.set_rng_state(state["torch_rng"])
        step, seconds = state["step"], state["seconds"]
        check_budget(existing[-1], step, cfg)
        if dist.is_main:
            tqdm.write(f"{desc}: resuming from {existing[-1]} (step {step})", file=sys.stderr)
    forward = model
    if dist.world > 1:
        forward = nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False)  # buffers never change

    log_path = run_dir / "log.jsonl"
    history: list[dict] = []
    scores = logged_scores(log_path, step) if step else []
    plateau = plateaued(scores, cfg.plateau_patience, cfg.plateau_min_gain)

    def log(record: dict) -> None:
        history.append(record)
        if dist.is_main:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def out_of_time() -> bool:
        return cfg.max_minutes > 0 and seconds >= cfg.max_minutes * 60

    model.train()
    # a time budget usually ends the run long before max_steps: no ETA computed from max_steps then
    bar = tqdm(total=None if cfg.max_minutes else cfg.max_steps, initial=step, unit="step", dynamic_ncols=True,
               desc=f"{desc} (up to {cfg.max_minutes:g} min)" if cfg.max_minutes else desc, disable=not dist.is_main)
    window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0  # since the last log line
    eager = "eager" if device.type == "cpu" and autocast_dtype is torch.bfloat16 else None
    with _StopFlag(patient=dist.world > 1) as stop, attention_implementation([model, teacher], eager):
        while step < cfg.max_steps and not out_of_time() and not plateau:
            started = time.perf_counter()
            micro = [stream.next() for _ in range(cfg.accum)]  # the global batch, the same on every rank
            n_tokens = sum(len(t) for batch in micro for _, t in batch)
            mine = [collate(b, pad_id, start_id) for b in micro[dist.rank :: dist.world]]  # this rank's share
            optimizer.zero_grad(set_to_none=True)
            local_loss = 0.0
            for j, batch in enumerate(mine):
                batch = {k: v.to(device) for k, v in batch.items()}
                labels = batch.pop("labels")
                sync = contextlib.nullcontext() if forward is model or j == len(mine) - 1 else forward.no_sync()
                with sync, torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    states = {"output_hidden_states": True} if cfg.hidden_weight > 0 else {}
                    out = forward(**batch, **states)
                    taught = None
                    if cfg.needs_teacher:  # no key/value cache: kept, it would hold every decoder layer's K and V
                        with torch.no_grad():
                            taught = teacher(**batch, **states, use_cache=False)
                    loss = sequence_loss(out.logits, labels, cfg.label_smoothing, cfg.kd_weight,
                                         None if taught is None else taught.logits)
                    if states:
                        loss = loss + cfg.hidden_weight * state_loss(
                            out.decoder_hidden_states[-1], taught.decoder_hidden_states[-1], labels, hidden_keep)
                    loss = loss / n_tokens
                    # DDP averages gradients over ranks; the loss is a sum over the global batch.
                    scaler.scale(loss * dist.world).backward()
                local_loss += float(loss.detach())
            step_loss, stop_votes, elapsed = dist.sum(
                [local_loss, float(stop.signal is not None), time.perf_counter() - started]
            )
            if not math.isfinite(step_loss):
                last = checkpoint_dirs(run_dir)
                raise WdctlError(
                    f"{desc}: non-finite loss at step {step + 1}; stopped. Last good checkpoint: "
                    f"{last[-1] if last else 'none'} (try a lower --lr or a longer warmup)"
                )
            if cfg.clip_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            elapsed /= dist.world
            seconds += elapsed
            window_loss, window_steps = window_loss + step_loss, window_steps + 1
            window_tokens, window_time = window_tokens + n_tokens, window_time + elapsed
            bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.max_steps:
                record = {
                    "step": step,
                    "loss": window_loss / window_steps,  # a resumed run's first window is shorter
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": window_tokens / max(window_time, 1e-9),
                    "seconds": round(seconds, 1),
                }
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                log(record)
                window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
            finished = step >= cfg.max_steps or out_of_time()
            if evaluate is not None and not stop_votes and (step % cfg.eval_every == 0 or finished):
                if dist.is_main:
                    model.eval()
                    log({"step": step, **evaluate(model)})
                    tqdm.write(f"{desc}: step {step}: {history[-1]}", file=sys.stderr)
                    model.train()
                    if "dev_bleu" in history[-1]:
                        scores.append(history[-1]["dev_bleu"])
                # rank 0 alone evaluates; the sum hands its verdict to every rank
                plateau = dist.sum([float(plateaued(scores, cfg.plateau_patience, cfg.plateau_min_gain))])[0] > 0
                if plateau and dist.is_main:
                    tqdm.write(f"{desc}: dev BLEU plateaued at step {step} (no gain above "
                               f"{cfg.plateau_min_gain:g} over {cfg.plateau_patience} evaluations); stopping",
                               file=sys.stderr)
                finished = finished or plateau
            if step % cfg.save_every == 0 or finished or stop_votes:
                if dist.is_main:
                    save_checkpoint(run_dir, model, optimizer, scheduler, stream, step, seconds, cfg)
                dist.barrier()
            if stop_votes:
                bar.close()
                raise TrainingInterrupted(
                    f"{desc}: interrupted at step {step}; checkpoint saved in {run_dir / 'checkpoints'}. "
                    "Run the same command again to resume."
                )
    bar.close()

    if cfg.average_last > 1:
        average_checkpoints(model, checkpoint_dirs(run_dir)[-cfg.average_last :])
    model.eval()
    return TrainResult(steps=step, train_seconds=seconds, peak_rss_mb=peak_rss_mb(), history=history, plateau=plateau)
