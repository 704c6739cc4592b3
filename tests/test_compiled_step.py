"""The compiled training step: one graph per block for every method, the same training as eager, exact resume.

What "the same training" means. The compiled step computes the same function as the eager one with operations
traced, reordered and (under inductor) fused, so it rounds differently, and what a rounding difference becomes over
30 AdamW steps depends on the precision (issue 16; numbers from t5-tiny, aot_eager, one CPU thread):

* In float32 it is not predictable. AdamW's update m / (sqrt(v) + eps) follows rounding noise for gradient
  components near its eps (1e-8), and float32 gradients of that size carry relative rounding errors of 1e-3 and
  more (13 % of P-tuning's middle MLP weights have |g| < 1e-7 at the first step). Which way they go depends on the
  order of the reductions (thread count, CPU, rows of the batch permuted), not on the inputs: eager P-tuning in
  float32 is 239 float32 ulps of the loss away from its float64 run at step 24 with one thread and 2 ulps away with
  two, while a run whose weights start one ulp away stays within 2 ulps of it in both; with eps = 1e-10, 1e-6 or
  1e-4 every float32 run stays within 3 ulps of float64. Full fine-tuning (498 ulps) and prompt tuning (355, also
  with the batch rows permuted) do the same. So two float32 runs that compute the same thing can part by hundreds
  of ulps, and a tolerance measured from one such run passes on one machine and fails on the next.
* In float64 the same noise is 2**29 times smaller, far below eps: compiled and eager agree to a few float64 ulps
  of the weights (at most 1.2e-14) and their losses are equal, all 13 methods, all 30 steps. Two float32 steps
  remain inside the float64 model (RMSNorm's variance and the loss are computed in float32, as in Hugging Face's
  T5): where compiled and eager land on the two sides of a float32 rounding boundary there (6 logits in 1e8 per
  run of this file, so far all near zero and harmless), one step's gradient moves by a float32 ulp. Moving one
  logit or one variance by an ulp on purpose (full, prompt, P-tuning, LoRA, VeRA; steps 0, 5, 10, 15) moved the
  float64 weights by at most 7e-4 of the learning rate (full, a variance at step 15) and the losses by at most
  1.4 float32 eps times the loss (prompt, the largest logit at step 0).

So the test compares, for every method:

1. float64, all STEPS steps: the losses within FLOAT64_LOSS_ULPS float32 eps times the loss (the loss is a float32
   number: equal unless one of those boundaries is crossed, which moved it by at most 1.4), and the trainable
   weights after every step within FLOAT64_WEIGHT_LRS (1/64) of the learning rate (20 times the largest move
   such a crossing caused). Checked with defects put into the compiled blocks only: 1 % less gradient through
   the FFN fails all six methods tried (the float32 test this replaces: five); an FFN output 1e-5 too large fails
   four (that test: none), RMSNorm's eps doubled two, full and P-tuning (that test: P-tuning); the others pass
   them, moving their weights by less than 1/64 of the learning rate and their losses by less than 8 ulps.
2. float32, the first FIRST_STEPS steps, the losses: the first is the same function at the same weights, the
   second follows one update, in which the components that rounding noise moves have gradients below ~eps and so
   cannot move the next loss by an ulp (measured: at most 2 ulps apart through step 6, every method, every pair
   of float32 runs). Eager float32's distance from eager float64 there (0-1 ulps) is the float32 rounding of these
   steps; compiled must be within 4 times that plus FLOAT32_LOSS_ULPS float32 eps times the loss. This part checks
   that compiling keeps float32 precision (no TF32 or bf16 underneath), which float64 cannot show: for inductor
   and CUDA, whose kernels are generated (aot_eager runs eager's kernels: part 1 for every method, part 2 for
   LoRA only).

Dropout is off in these runs, so that the two paths draw no random numbers (they draw them differently).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import as_batch
from t5peft import T5Config, T5ForConditionalGeneration, apply_method
from t5peft.engine import skeleton as loop_module
from t5peft.engine import step as step_module
from t5peft.engine.step import TrainStep, make_loss_fn
from t5peft.methods import get_method_class, method_names
from t5peft.train.evaluate import Scorer
from t5peft.train.loop import Run, train
from t5peft.train.settings import TrainConfig

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "models" / "t5-tiny"
STEPS = 30
# the tolerances and their derivation: the module docstring
FLOAT64_LOSS_ULPS = 8
FLOAT64_WEIGHT_LRS = 2.0**-6
FIRST_STEPS = 2
FLOAT32_LOSS_ULPS = 8


def no_dropout_options(method: str) -> dict[str, float]:
    """Every dropout option of the method (any field named ``*dropout``) set to 0."""
    fields = dataclasses.fields(get_method_class(method).config_class)
    return {f.name: 0.0 for f in fields if f.name.endswith("dropout")}


def tiny_model(method: str, dtype: torch.dtype = torch.float32, dropout: bool = False) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config.from_json_file(TINY / "config.json"))
    options = {}
    if not dropout:
        model.set_dropout(0.0)
        options = no_dropout_options(method)
    return apply_method(model, method, **options).to(dtype).train()


def step_batch(step: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    input_ids = torch.randint(2, 32000, (4, 16), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 10:] = 0
    attention_mask[3, 5:] = 0
    labels = torch.randint(2, 32000, (4, 2), generator=generator)
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs it)")


@dataclasses.dataclass
class Training:
    """One of the trainings compared, advanced a step at a time so that its weights can be compared after each."""

    runner: TrainStep
    params: list[torch.Tensor]
    device: str

    @classmethod
    def start(cls, method: str, dtype: torch.dtype, *, compile: bool, device: str = "cpu") -> Training:
        model = tiny_model(method, dtype).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=get_method_class(method).default_lr)
        model.peft.method.on_train_begin(model, STEPS)
        return cls(TrainStep(model, optimizer, total_steps=STEPS, compile=compile), params, device)

    def step(self, step: int) -> float:
        """Train on step ``step``'s batch; its training loss."""
        self.runner(as_batch(step_batch(step)).to(self.device))
        loss = self.runner.read_loss()[0]
        self.runner.reset_loss()
        return loss


def weight_distance(a: Training, b: Training) -> float:
    """The largest difference between the two trainings' trainable weights."""
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a.params, b.params, strict=True))


def loss_distance(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def float32_ulp(losses: list[float]) -> float:
    """float32 eps times the largest loss: at least one float32 ulp of every loss (eps * |x| >= ulp(x))."""
    return torch.finfo(torch.float32).eps * max(map(abs, losses))


def report(method: str, what: str, difference: float, tolerance: float) -> None:
    """The margin, for ``pytest -rP`` (or ``-s``): how much of its tolerance a difference uses."""
    print(f"ratio {method} {what}: {difference:.2e} / {tolerance:.2e} = {difference / tolerance:.2e}")


def assert_same_float64_training(method: str, device: str) -> list[float]:
    """Part 1 of the module docstring; returns the eager float64 losses."""
    eager, compiled = (Training.start(method, torch.float64, compile=c, device=device) for c in (False, True))
    eager_losses, compiled_losses, weight_differences = [], [], []
    for step in range(STEPS):
        eager_losses.append(eager.step(step))
        compiled_losses.append(compiled.step(step))
        weight_differences.append(weight_distance(eager, compiled))
    loss_tolerance = FLOAT64_LOSS_ULPS * float32_ulp(eager_losses)
    loss_difference = loss_distance(eager_losses, compiled_losses)
    weight_tolerance = FLOAT64_WEIGHT_LRS * get_method_class(method).default_lr
    weight_difference = max(weight_differences)
    report(method, "float64 losses", loss_difference, loss_tolerance)
    report(method, "float64 weights", weight_difference, weight_tolerance)
    assert loss_difference <= loss_tolerance, (method, loss_tolerance, eager_losses, compiled_losses)
    assert weight_difference <= weight_tolerance, (method, weight_tolerance, weight_differences)
    assert eager_losses[-1] != eager_losses[0]  # the runs did train
    return eager_losses


def assert_same_float32_first_steps(method: str, device: str, exact: list[float]) -> None:
    """Part 2 of the module docstring; ``exact``: the eager float64 losses."""
    eager, compiled = (Training.start(method, torch.float32, compile=c, device=device) for c in (False, True))
    eager_losses = [eager.step(step) for step in range(FIRST_STEPS)]
    compiled_losses = [compiled.step(step) for step in range(FIRST_STEPS)]
    rounding = loss_distance(eager_losses, exact[:FIRST_STEPS])
    tolerance = 4 * rounding + FLOAT32_LOSS_ULPS * float32_ulp(eager_losses)
    difference = loss_distance(eager_losses, compiled_losses)
    report(method, "float32 first steps", difference, tolerance)
    assert difference <= tolerance, (method, tolerance, eager_losses, compiled_losses, exact[:FIRST_STEPS])


def assert_same_training(method: str, device: str = "cpu", *, float32: bool = True) -> None:
    """Parts 1 and 2 of the module docstring (``float32=False``: part 1 only)."""
    exact = assert_same_float64_training(method, device)
    if float32:
        assert_same_float32_first_steps(method, device, exact)


@pytest.mark.parametrize("method", method_names())
def test_model_forward_has_no_graph_breaks(method):
    """The whole model, training loss with the method's extra term and evaluation scoring, as one graph each."""
    torch._dynamo.reset()  # a fresh cache: each method's model would count as a recompile of the same loss function
    model = tiny_model(method, dropout=True)
    batch = step_batch(0)
    loss_fn = torch.compile(make_loss_fn(model, torch.device("cpu"), False), fullgraph=True, backend="eager")
    _, total = loss_fn(batch["input_ids"], batch["attention_mask"], batch["labels"])
    total.backward()
    model.eval()
    scorer = Scorer(model, [[2841, 1], [1465, 1]])  # single-token label words: first-token scoring
    score = torch.compile(scorer._score, fullgraph=True, backend="eager")
    loss_sum, tokens, pair = score(batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert pair.shape == (4, 2) and int(tokens) == 8 and torch.isfinite(loss_sum)


# In the default suite: P-tuning (the method issue 16 met), full fine-tuning (the largest float32 parting) and LoRA;
# the other methods with -m slow (the same check, 5-16 s each here).
DEFAULT_SUITE_TRAJECTORIES = ("ptuning", "full", "lora")


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=() if m in DEFAULT_SUITE_TRAJECTORIES else pytest.mark.slow) for m in method_names()],
)
def test_compiled_step_trains_as_eager_aot(method, monkeypatch):
    """Every method, forward and backward traced by torch.compile (aot_eager: no code generation, seconds).

    float64 only: aot_eager runs the traced graph with eager's own kernels, so there is no float32 kernel of its own
    to check, and a float32 compile would double the time of this test (compiling is most of it)."""
    monkeypatch.setenv(step_module.BACKEND_VARIABLE, "aot_eager")
    assert_same_training(method, float32=False)


def test_compiled_step_float32_first_steps_aot(monkeypatch):
    """Part 2 on one method under aot_eager, so that the default suite runs the check inductor and CUDA rely on."""
    monkeypatch.setenv(step_module.BACKEND_VARIABLE, "aot_eager")
    exact = Training.start("lora", torch.float64, compile=False)
    assert_same_float32_first_steps("lora", "cpu", [exact.step(step) for step in range(FIRST_STEPS)])


@pytest.mark.slow
@pytest.mark.parametrize("method", method_names())
def test_compiled_step_trains_as_eager_inductor(method):
    """Inductor's generated kernels, as a GPU run uses them (minutes per method on a 2-core CPU: -m slow)."""
    assert_same_training(method)


@CUDA
@pytest.mark.parametrize("method", method_names())
def test_cuda_graph_step_trains_as_eager(method):
    """On a GPU: compiled blocks and the whole step replayed as a CUDA graph, float32, against eager."""
    assert_same_training(method, "cuda")


@pytest.mark.parametrize(
    ("device", "backend"),
    [
        ("cpu", "aot_eager"),
        pytest.param("cpu", "inductor", marks=pytest.mark.slow),
        pytest.param("cuda", "inductor", marks=CUDA),
    ],
)
def test_compiled_run_resumes_bit_identically(device, backend, imdb_dir, t5_small_dir, tmp_path, monkeypatch):
    """A compiled run stopped after its first epoch checkpoint and resumed ends as the uninterrupted one, dropout
    on (on CUDA: compiled blocks + the step replayed as a CUDA graph, bf16 autocast)."""
    monkeypatch.setenv(step_module.BACKEND_VARIABLE, backend)

    def config(output: Path, **overrides) -> TrainConfig:
        values = dict(
            model=str(TINY),
            tokenizer=str(t5_small_dir),
            init="random",
            data=str(imdb_dir),
            output=str(output),
            train_size=48,
            test_size=16,
            validation_size=16,
            epochs=2,
            batch_size=16,
            max_source_length=32,
            logs_per_two_epochs=4,
            method="lora",
            compile="on",
            device=device,
            progress=False,
        )
        return TrainConfig(**{**values, **overrides})

    train(config(tmp_path / "whole"))

    class Stop(Exception):
        pass

    real_save = loop_module.save_checkpoint

    def save_then_stop(*args, **kwargs):  # the run dies right after its first end-of-epoch checkpoint
        real_save(*args, **kwargs)
        raise Stop

    stopped = Run(config(tmp_path / "stopped"))
    stopped.resume_if_asked()
    monkeypatch.setattr(loop_module, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        stopped.fit()
    monkeypatch.setattr(loop_module, "save_checkpoint", real_save)
    assert json.loads((tmp_path / "stopped" / "checkpoint" / "state.json").read_text())["position"]["epochs_done"] == 1
    train(config(tmp_path / "stopped", resume=True))

    whole = load_file(tmp_path / "whole" / "final" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "stopped" / "final" / "adapter_model.safetensors")
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key

    def metrics(folder: Path) -> list[dict]:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "train_seconds"} for line in lines]

    assert metrics(tmp_path / "whole") == metrics(tmp_path / "stopped")
    results = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert results["training"]["compiled"] is True
    assert results["training"]["cuda_graph"] is (device == "cuda")
