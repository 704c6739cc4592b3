"""``t5peft push RUN_FOLDER REPO_ID``: upload a finished run's trained weights and its model card to the Hub.

Exactly these files go up, from the run's ``final/`` folder: an adapter's ``adapter_config.json`` and
``adapter_model.safetensors``, or, for a whole model (``full``), its ``config.json``, weights (one file or the
shards with their index) and tokenizer files; and ``README.md``, the model card (:mod:`.card`) written for
``REPO_ID``. They are staged in a temporary folder (links, not copies, where the file system allows), so nothing
else in ``final/`` can slip into the upload and the run folder is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..engine.layout import RunFolder
from ..hub import HubUploadError, upload_folder
from ..tokenizer import TOKENIZER_FILES
from .card import CARD_FILE, holds_whole_model, model_card_text

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MODEL_FILES = ("config.json", "generation_config.json")


def files_to_push(final: Path) -> list[Path]:
    """The weights files of ``final/`` that are uploaded (the card is written apart); an error naming a missing
    one."""
    if not holds_whole_model(final):
        names = list(ADAPTER_FILES)
    else:
        weights = sorted(p.name for p in final.glob("model*.safetensors")) + [
            p.name for p in final.glob("model.safetensors.index.json")
        ]
        if not weights:
            raise HubUploadError(f"{final}: no model.safetensors to upload")
        names = [n for n in MODEL_FILES if (final / n).is_file() or n == "config.json"] + weights
        names += [n for n in TOKENIZER_FILES if (final / n).is_file()]
    missing = [n for n in names if not (final / n).is_file()]
    if missing:
        raise HubUploadError(f"{final}: {', '.join(missing)} not found; is the run finished?")
    return [final / n for n in names]


def read_finished_run(run_folder: Path) -> dict:
    folder = RunFolder(run_folder)
    if not folder.results.is_file() or not folder.final.is_dir():
        raise HubUploadError(f"{run_folder}: not a finished run folder (results.json and final/ are needed)")
    try:
        return json.loads(folder.results.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HubUploadError(f"{folder.results}: not readable ({err})") from err


def _stage(files: list[Path], target: Path) -> None:
    for path in files:
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copyfile(path, target / path.name)


def push_run(
    run_folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    api: object | None = None,
) -> str:
    """Upload the run's weights and its card to ``repo_id``; returns the repository URL (see the module doc)."""
    run_folder = Path(run_folder)
    results = read_finished_run(run_folder)
    final = RunFolder(run_folder).final
    files = files_to_push(final)
    card = model_card_text(results, holds_whole_model(final), repo_id)
    with tempfile.TemporaryDirectory(prefix="t5peft-push-") as staging:
        target = Path(staging)
        _stage(files, target)
        (target / CARD_FILE).write_text(card, encoding="utf-8")
        message = f"t5peft {results['method']}: test accuracy {results['test']['accuracy']:.4f}"
        return upload_folder(target, repo_id, private=private, revision=revision, commit_message=message, api=api)
