"""The model card of a finished run: ``README.md`` in the run's ``final/`` folder and on the Hub (``t5peft push``).

Written after PEFT's adapter cards: YAML metadata first (``library_name``, ``base_model``, ``tags``, ``datasets``,
``metrics`` and a ``model-index`` with the measured test accuracy, built with ``huggingface_hub.ModelCardData`` so
the Hub reads it as it reads its own), then the method and its options, the training settings, the results with
the test set they came from, and how to load the weights with t5peft and, where the format allows, with ``peft``.
Every number comes from the run's ``results.json``. Where the base weights came from is said first: a random-init
base or one pretrained by ``t5peft pretrain`` is not a published checkpoint, and the card says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..engine.layout import PRETRAINED_HERE
from ..hub import looks_like_hub_id
from ..methods.registry import get_declaration

CARD_FILE = "README.md"
IMDB = "stanfordnlp/imdb"
T5PEFT_ONLY = "T5PEFT_"  # peft_type prefix of the formats only t5peft reads


def _hub_id(name: str | None) -> str | None:
    """``name`` when it is a Hub id (not a local path), else None."""
    return name if name and looks_like_hub_id(name, owner_required=False) else None


def dataset_id(data: str) -> str | None:
    """The Hub dataset a run's data is: its Hub id, or stanfordnlp/imdb for a local folder in that dataset's Hub
    layout (``plain_text/``, the layout the data reader takes as IMDb); None for anything else (a csv file)."""
    if _hub_id(data):
        return data
    return IMDB if (Path(data) / "plain_text").is_dir() else None


def base_model_id(results: dict[str, Any]) -> str | None:
    """The Hub id of the published weights the run started from; None when they are not published ones."""
    if results["weights"] != "pretrained":
        return None
    return _hub_id(results["model"])


def weights_origin(results: dict[str, Any]) -> str:
    """One paragraph: where the base weights came from."""
    model, weights = results["model"], results["weights"]
    if weights == "random-init":
        seed = results["seed"]
        return (
            f"**Base weights: random.** The base T5 was drawn at random (seed {seed}) with the architecture of "
            f"`{model}` and was never pretrained; it is not Google's T5 or any published checkpoint. "
            "An adapter trained on it only works on those same random weights, which `t5peft train` kept in the "
            "run folder's `base/` (not part of this upload)."
        )
    if weights == PRETRAINED_HERE:
        pretraining = results.get("pretraining") or {}
        what = pretraining.get("what", "a T5 pretrained by `t5peft pretrain`")
        return f"**Base weights: pretrained here.** `{model}`: {what}."
    hub = _hub_id(model)
    where = f"[`{hub}`](https://huggingface.co/{hub})" if hub else f"the local checkpoint `{model}`"
    return f"**Base weights:** {where}."


def _adapter_type(results: dict[str, Any]) -> tuple[str, bool]:
    """(peft_type, whether Hugging Face PEFT can load it) of the run's method."""
    file_format = get_declaration(results["method"]).file_format
    return file_format.peft_type, not file_format.peft_type.startswith(T5PEFT_ONLY)


def metadata(results: dict[str, Any], repo_id: str | None, whole_model: bool) -> Any:
    """The card's YAML metadata as ``huggingface_hub.ModelCardData`` (``whole_model``: the weights are a whole
    T5, not an adapter)."""
    from huggingface_hub import EvalResult, ModelCardData

    method, test = results["method"], results["test"]
    dataset = dataset_id(results["config"]["data"])
    base = base_model_id(results)
    tags = ["t5", "t5peft", method, "text-classification", "sentiment-analysis"]
    if not whole_model:
        tags.insert(0, "peft")
    if results["weights"] != "pretrained":
        tags.append(results["weights"])
    evaluation = EvalResult(
        task_type="text-classification",
        task_name="Sentiment classification",
        dataset_type=dataset or "local",
        dataset_name=dataset or Path(results["config"]["data"]).name,
        dataset_split="test",
        metric_type="accuracy",
        metric_value=round(test["accuracy"], 6),
        metric_name=f"Test accuracy ({test['n']:,} reviews)",
    )
    return ModelCardData(
        library_name="transformers" if whole_model else "peft",
        base_model=base,
        tags=tags,
        datasets=[dataset] if dataset else None,
        metrics=["accuracy"],
        pipeline_tag="text2text-generation",
        model_name=repo_id or f"t5peft-{method}",
        eval_results=[evaluation],
    )


def _method_section(results: dict[str, Any]) -> list[str]:
    params = results["parameters"]
    peft_type, _ = _adapter_type(results)
    options = json.dumps(results["method_options"], sort_keys=True)
    return [
        "## Method",
        "",
        f"`{results['method']}` (file format: peft_type `{peft_type}`), options: `{options}`.",
        "",
        f"Trainable parameters: {params['trainable']:,} of {params['base']:,} in the base model "
        f"({params['trainable_percent']:.3f}%).",
        "",
    ]


def _data_origin(data: str) -> str:
    if _hub_id(data):
        return f"`{data}` from the Hub"
    layout = f", files in the Hub layout of `{IMDB}` (checksums below)" if dataset_id(data) else ""
    return f"the local `{data}`{layout}"


def _training_section(results: dict[str, Any]) -> list[str]:
    cfg, training, sizes = results["config"], results["training"], results["data"]["sizes"]
    rows = [
        ("data", _data_origin(cfg["data"])),
        ("training reviews", f"{sizes['train']:,}"),
        ("validation reviews", f"{sizes['validation']:,} (held out of the training split)"),
        ("epochs / steps", f"{training['epochs']} / {training['steps']:,}"),
        ("batch size", cfg["batch_size"]),
        ("learning rate", f"{results['learning_rate']:g} (AdamW, warmup ratio {cfg['warmup_ratio']}, linear decay)"),
        (
            "weight decay / grad-norm clip / dropout",
            f"{cfg['weight_decay']} / {cfg['max_grad_norm']} / {cfg['dropout']}",
        ),
        ("seed", cfg["seed"]),
        ("input", f"`{cfg['prefix']}` + review, {cfg['max_source_length']} tokens ({cfg['truncation_side']} cut)"),
        ("label words", " / ".join(f"`{w}`" for w in cfg["label_words"])),
        ("precision", training["precision"]),
        ("training time", f"{training['seconds']:.1f} s on {results['environment']['device_name']}"),
    ]
    return ["## Training", "", "| setting | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), ""]


def _results_section(results: dict[str, Any]) -> list[str]:
    test, validation, data = results["test"], results["validation"], results["data"]
    overlap = data["overlap"]
    lines = [
        "## Results",
        "",
        "| split | reviews | accuracy | loss |",
        "| --- | --- | --- | --- |",
        f"| test | {test['n']:,} | {test['accuracy']:.4f} | {test['loss']:.4f} |",
        f"| validation | {validation['n']:,} | {validation['accuracy']:.4f} | {validation['loss']:.4f} |",
        "",
        f"Test set: {data['test_from']}. {overlap['test_in_train']:,} of its reviews also occur among the training "
        f"reviews, {overlap['test_in_validation']:,} among the validation reviews.",
        "",
    ]
    checksums = data.get("checksums") or {}
    if checksums:
        lines += ["Data files (SHA-256):", "", *(f"- `{name}`: `{digest}`" for name, digest in checksums.items()), ""]
    return lines


def _usage_section(results: dict[str, Any], repo_id: str | None, trains_base: bool) -> list[str]:
    repo = repo_id or "REPO_ID"
    cfg = results["config"]
    _, peft_loads = _adapter_type(results)
    random_base = results["weights"] == "random-init"
    base = "RUN_FOLDER/base" if random_base else (base_model_id(results) or results["model"])
    lines = ["## How to use", "", "With t5peft (installed from its source):", "", "```python"]
    lines += [
        "from huggingface_hub import snapshot_download",
        "from t5peft.methods import load_trained",
        "",
        f'folder = snapshot_download("{repo}")',
        "model = load_trained(folder)" if trains_base else f'model = load_trained(folder, base="{base}")',
        "```",
        "",
    ]
    if random_base and not trains_base:
        lines += [
            "`base` must be the training run's own `base/` folder: the adapter belongs to those random weights.",
            "",
        ]
    if peft_loads and not trains_base:
        lines += [
            "With Hugging Face PEFT:",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForSeq2SeqLM",
            "",
            f'base = AutoModelForSeq2SeqLM.from_pretrained("{base}")',
            f'model = PeftModel.from_pretrained(base, "{repo}")',
            "```",
            "",
        ]
    elif not trains_base:
        lines += ["This method's file format is t5peft's own: Hugging Face PEFT cannot load it.", ""]
    else:  # a whole T5 in Hugging Face's checkpoint layout
        lines += [
            "With Hugging Face Transformers (the folder is a plain T5 checkpoint with its tokenizer):",
            "",
            "```python",
            "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
            "",
            f'model = AutoModelForSeq2SeqLM.from_pretrained("{repo}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
            "```",
            "",
        ]
    words = " or ".join(f"`{w}`" for w in cfg["label_words"])
    lines += [
        f"The input is `{cfg['prefix']}` followed by the review; the model answers {words}. t5peft scores a review "
        "by comparing the label words' first-token logits at the first decoder step.",
        "",
    ]
    return lines


def model_card_text(results: dict[str, Any], whole_model: bool, repo_id: str | None = None) -> str:
    """The whole card (YAML metadata + text) of a run, from its ``results.json``; ``whole_model``: the run's
    ``final/`` holds a whole T5 (full fine-tuning), not an adapter."""
    data = metadata(results, repo_id, whole_model)
    title = repo_id or f"t5peft {results['method']} run"
    body = [
        f"# {title}",
        "",
        f"A T5 fine-tuned with `{results['method']}` by t5peft (T5 and parameter-efficient fine-tuning methods "
        "written from scratch) for IMDb sentiment as text to text.",
        "",
        weights_origin(results),
        "",
        *_method_section(results),
        *_training_section(results),
        *_results_section(results),
        *_usage_section(results, repo_id, whole_model),
    ]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)


def holds_whole_model(final: Path) -> bool:
    """Whether a run's ``final/`` holds a whole T5 (``config.json``, no ``adapter_config.json``)."""
    from ..methods.files import ADAPTER_CONFIG

    return not (final / ADAPTER_CONFIG).is_file()


def write_model_card(results: dict[str, Any], final: Path, repo_id: str | None = None) -> Path:
    """Write the card into a run's ``final/`` folder."""
    path = final / CARD_FILE
    path.write_text(model_card_text(results, holds_whole_model(final), repo_id), encoding="utf-8")
    return path
