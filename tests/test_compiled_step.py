"""The compiled training step: one graph per block for every method, the same training as eager, exact resume.

What "the same training" means, and the tolerance: the compiled step computes the same function as the eager
one with operations fused and reordered, so each step rounds differently in float32. Both are float32
approximations of one exact trajectory; the eager float32 run's distance from the eager float64 run (the same
steps in double precision) measures how far float32 rounding carries a trajectory over these steps. A trajectory
can also be sensitive in a way that one float64 run misses, when it passes near a discrete event (a ReLU unit
crossing zero, Adam's update of a gradient near zero) that float64 happens to resolve as float32 does: P-tuning's
MLP prompt encoder is such a case (its eager loss moves by 2.3e-4 within 30 steps when its trainable weights start
one float32 ulp away, against 1.9e-6 from float64). So the distance is the larger of that from the float64 run
and that from an eager run whose trainable weights start one ulp (relative 2**-23) away. By the triangle
inequality compiled and eager differ by at most the sum of their two distances from the exact trajectory; we
allow four times the measured float32 distance (two runs, and a factor of two for a different rounding order),
plus 8 float32 ulps of the loss for runs whose measured distance is zero. Dropout is off in these runs, so that
the two paths draw no random numbers (they draw them differently).
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


def loss_trajectory(
    method: str, compile: bool, dtype: torch.dtype = torch.float32, device: str = "cpu", perturb: float = 0.0
) -> list[float]:
    """Training losses of STEPS steps; ``perturb``: the trainable weights start multiplied by ``1 + perturb``."""
    model = tiny_model(method, dtype).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        torch._foreach_mul_(params, 1.0 + perturb)
    optimizer = torch.optim.AdamW(params, lr=get_method_class(method).default_lr)
    model.peft.method.on_train_begin(model, STEPS)
    runner = TrainStep(model, optimizer, total_steps=STEPS, compile=compile)
    losses = []
    for step in range(STEPS):
        runner(as_batch(step_batch(step)).to(device))
        losses.append(runner.read_loss()[0])
        runner.reset_loss()
    return losses


def assert_same_training(method: str, device: str = "cpu") -> None:
    eager = loss_trajectory(method, compile=False, device=device)
    exact = loss_trajectory(method, compile=False, dtype=torch.float64, device=device)
    nudged = loss_trajectory(method, compile=False, device=device, perturb=2.0**-23)
    compiled = loss_trajectory(method, compile=True, device=device)
    float32_distance = max(abs(a - b) for other in (exact, nudged) for a, b in zip(eager, other, strict=True))
    tolerance = 4 * float32_distance + 8 * torch.finfo(torch.float32).eps * max(map(abs, eager))
    difference = max(abs(a - b) for a, b in zip(eager, compiled, strict=True))
    assert difference <= tolerance, (method, difference, tolerance, eager, compiled)
    assert eager[-1] != eager[0]  # the runs did train


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
    scorer = Scorer(model, [2841, 1465])
    score = torch.compile(scorer._score, fullgraph=True, backend="eager")
    loss_sum, tokens, pair = score(batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert pair.shape == (4, 2) and int(tokens) == 8 and torch.isfinite(loss_sum)


@pytest.mark.parametrize("method", method_names())
def test_compiled_step_trains_as_eager_aot(method, monkeypatch):
    """Every method, forward and backward traced by torch.compile (aot_eager: no code generation, seconds)."""
    monkeypatch.setenv(step_module.BACKEND_VARIABLE, "aot_eager")
    assert_same_training(method)


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
