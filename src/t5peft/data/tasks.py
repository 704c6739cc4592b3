"""Classification tasks as data: one :class:`Task` says everything a run needs to know about a dataset.

A task names its text column(s), its label column, its class names in order (index = class), the label word(s)
of each class (the target text), the source template (``"sst2 sentence: {sentence}"``), the split its test set
is read from (``validation`` where the test labels are hidden, as GLUE's and SuperGLUE's are), its metric of
record, where its data is found on the Hub and where its template and label words came from.

Built-in tasks (:data:`BUILTIN_TASKS`) carry T5's own formats where T5 has them: the GLUE and SuperGLUE text
preprocessor of the T5 codebase (``t5/data/glue_utils.py`` ``get_glue_text_preprocessor`` calling
``t5/data/preprocessors.py`` ``glue``) writes ``"{benchmark} {key}: {value} ..."`` over the example's feature keys in
sorted order (``label`` and ``idx`` left out), and the targets are the label names of the TFDS builder config
(``label_classes``). IMDb keeps this project's setup of record (``"Review: "`` and negative/positive). Tasks T5
was not trained on (AG News, Yelp polarity) say so.

A run settles its task once (:func:`resolve_task`, from ``TrainConfig``'s ``task`` and the overrides); the data
reader, the training loop and the evaluation read it from there. No torch here: the command line builds its
help from this module.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace

from ..errors import T5PeftError

T5_GLUE = (
    "T5's GLUE/SuperGLUE preprocessor (google-research/text-to-text-transfer-transformer t5/data/glue_utils.py "
    "get_glue_text_preprocessor -> t5/data/preprocessors.py glue: '<benchmark> <key>: <value>' over sorted "
    "feature keys); label words: the TFDS {builder} label_classes"
)
METRICS = ("accuracy", "f1", "matthews")  # f1: F1 of class 1 (MRPC, QQP); matthews: Matthews correlation (CoLA)


class TaskError(T5PeftError, ValueError):
    """A task declaration that cannot work: unknown name, template naming a missing column, too few classes."""


@dataclass(frozen=True)
class Task:
    """One classification task. ``classes[i]`` is class ``i``; ``label_words[i]`` its target text."""

    name: str
    text_columns: tuple[str, ...]
    label_column: str
    classes: tuple[str, ...]
    label_words: tuple[str, ...]
    template: str
    test_split: str = "test"  # the split the test set is read from ("validation" where test labels are hidden)
    metric: str = "accuracy"  # the metric of record
    hub_id: str | None = None  # where the data is on the Hub (parquet layout)
    hub_config: str | None = None  # the Hub folder of the task's shards (nyu-mll/glue: the config name)
    origin: str = ""  # where the template and label words came from
    aliases: tuple[str, ...] = ()  # other names a file may give each class (a relabelled task: the old class names)

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        if len(self.classes) < 2:
            raise TaskError(f"{where}: needs at least two classes, got {list(self.classes)}")
        if not all(word.strip() for word in self.label_words) or len(set(self.label_words)) != len(self.label_words):
            raise TaskError(
                f"{where}: label words must be different non-empty words, one per class, got {list(self.label_words)}"
            )
        if len({c.strip().lower() for c in self.classes}) != len(self.classes):
            raise TaskError(f"{where}: class names must differ (case ignored), got {list(self.classes)}")
        if len(self.label_words) != len(self.classes):
            raise TaskError(
                f"{where}: {len(self.label_words)} label words {list(self.label_words)} for "
                f"{len(self.classes)} classes {list(self.classes)}; give one word per class, in class order"
            )
        if self.metric not in METRICS:
            raise TaskError(f"{where}: metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.metric in ("f1",) and len(self.classes) != 2:
            raise TaskError(f"{where}: metric f1 (of class 1) needs two classes, got {len(self.classes)}")
        if not self.text_columns or self.label_column in self.text_columns:
            raise TaskError(f"{where}: text columns {list(self.text_columns)} must be named and exclude the label")
        named = template_fields(self.template, where)
        missing = [name for name in named if name not in self.text_columns]
        if missing:
            raise TaskError(
                f"{where}: template {self.template!r} names column(s) {', '.join(missing)} that are not text "
                f"columns of the task ({', '.join(self.text_columns)})"
            )
        unused = [name for name in self.text_columns if name not in named]
        if unused:
            raise TaskError(f"{where}: template {self.template!r} does not use text column(s) {', '.join(unused)}")

    def source(self, fields: dict[str, str]) -> str:
        """The source text of one example from its text columns."""
        return self.template.format_map(fields)

    def describe(self) -> dict[str, object]:
        """What results.json records of the task."""
        return {
            "name": self.name,
            "text_columns": list(self.text_columns),
            "label_column": self.label_column,
            "classes": list(self.classes),
            "label_words": list(self.label_words),
            "template": self.template,
            "test_split": self.test_split,
            "metric": self.metric,
            "origin": self.origin,
        }


def template_fields(template: str, where: str) -> tuple[str, ...]:
    """The column names a template names, in order of first use; :class:`TaskError` for a malformed one."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise TaskError(f"{where}: template {template!r} is malformed ({err}); write columns as {{name}}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise TaskError(f"{where}: template {template!r}: {{{name}}} must be a plain column name, as {{text}}")
        if name not in names:
            names.append(name)
    if not names:
        raise TaskError(f"{where}: template {template!r} names no column; write columns as {{name}}")
    return tuple(names)


def _glue(
    name: str,
    columns: tuple[str, ...],
    classes: tuple[str, ...],
    *,
    hub_id: str = "nyu-mll/glue",
    builder: str | None = None,
    metric: str = "accuracy",
    test_split: str = "validation",
    benchmark: str | None = None,
) -> Task:
    """A GLUE / SuperGLUE task in T5's format: ``"{benchmark} {key}: {{key}} ..."`` over the sorted columns."""
    template = " ".join([benchmark or name, *(f"{key}: {{{key}}}" for key in sorted(columns))])
    return Task(
        name=name,
        text_columns=tuple(sorted(columns)),
        label_column="label",
        classes=classes,
        label_words=classes,
        template=template,
        test_split=test_split,
        metric=metric,
        hub_id=hub_id,
        hub_config=name if hub_id in ("nyu-mll/glue", "aps/super_glue") else None,
        origin=T5_GLUE.format(builder=builder or f"glue/{name}"),
    )


_ENTAILMENT = ("entailment", "not_entailment")
_NLI3 = ("entailment", "neutral", "contradiction")
BUILTIN_TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="imdb",
            text_columns=("text",),
            label_column="label",
            classes=("negative", "positive"),
            label_words=("negative", "positive"),
            template="Review: {text}",
            hub_id="stanfordnlp/imdb",
            hub_config="plain_text",
            origin="t5peft's setup of record (not a T5 task format): 'Review: ' + the review; negative/positive",
        ),
        _glue("sst2", ("sentence",), ("negative", "positive")),
        _glue("cola", ("sentence",), ("unacceptable", "acceptable"), metric="matthews"),
        _glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), metric="f1"),
        _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), metric="f1"),
        # GLUE's MNLI test labels are hidden: the matched validation split is the test set
        _glue("mnli", ("premise", "hypothesis"), _NLI3, test_split="validation_matched"),
        _glue("qnli", ("question", "sentence"), _ENTAILMENT),
        _glue("rte", ("sentence1", "sentence2"), _ENTAILMENT),
        _glue("boolq", ("question", "passage"), ("False", "True"), hub_id="aps/super_glue", builder="super_glue/boolq"),
        Task(
            name="ag_news",
            text_columns=("text",),
            label_column="label",
            classes=("World", "Sports", "Business", "Sci/Tech"),
            label_words=("World", "Sports", "Business", "Sci/Tech"),
            template="ag_news: {text}",
            hub_id="fancyzhx/ag_news",
            hub_config="data",
            origin="not a T5 task: t5peft's template in T5's '<task>: ' style; label words: the dataset's class "
            "names (fancyzhx/ag_news: 0 World, 1 Sports, 2 Business, 3 Sci/Tech)",
        ),
        Task(
            name="yelp_polarity",
            text_columns=("text",),
            label_column="label",
            classes=("negative", "positive"),
            label_words=("negative", "positive"),
            template="Review: {text}",
            hub_id="fancyzhx/yelp_polarity",
            hub_config="plain_text",
            origin="not a T5 task: IMDb's format (t5peft); fancyzhx/yelp_polarity's labels 0 and 1 are its "
            "classes '1' (negative) and '2' (positive)",
        ),
    )
}


def task_names() -> tuple[str, ...]:
    return tuple(BUILTIN_TASKS)


def source_prefix(task: Task) -> str | None:
    """The text before the one text column when the template is ``prefix + {column}`` (IMDb: ``"Review: "``),
    else None: the ``prefix`` setting of a run that says the same as its template."""
    if len(task.text_columns) != 1:
        return None
    tail = "{" + task.text_columns[0] + "}"
    head = task.template.removesuffix(tail)
    return head if task.template.endswith(tail) and tail not in head and "{" not in head else None


def builtin_task(name: str, where: str = "task") -> Task:
    """The built-in task ``name``; :class:`TaskError` naming the known ones."""
    try:
        return BUILTIN_TASKS[name]
    except KeyError:
        known = ", ".join(BUILTIN_TASKS)
        raise TaskError(
            f"{where}: unknown task {name!r}; built-in tasks: {known} (or describe your own with --text-column, "
            "--label-column, --label-words and --template)"
        ) from None


def resolve_task(
    name: str,
    *,
    text_columns: tuple[str, ...] | None = None,
    label_column: str | None = None,
    label_words: tuple[str, ...] | None = None,
    classes: tuple[str, ...] | None = None,
    template: str | None = None,
    prefix: str | None = None,
) -> Task:
    """The task a run uses: the built-in ``name`` with the overrides given (None: the task's own).

    ``classes`` default to the label words (every built-in task names its classes by its label words); when the
    new words are as many as the task's classes, a file may still name a class by the task's own class name.
    ``prefix`` (the old ``--prefix``) is ``prefix + {column}`` for a task with one text column; it cannot be given
    with ``template``. A text column override without a template keeps the task's template with the column
    renamed (one text column only).
    """
    base = builtin_task(name)
    where = f"task {name!r}"
    if prefix is not None and template is not None:
        raise TaskError(f"{where}: give a template or a prefix, not both (the template includes any prefix)")
    columns = tuple(text_columns) if text_columns else base.text_columns
    if template is None and columns != base.text_columns:
        if len(columns) != 1 or len(base.text_columns) != 1:
            raise TaskError(
                f"{where}: text columns {list(columns)} differ from the task's {list(base.text_columns)}; "
                "give a template naming them, e.g. --template 'premise: {premise} hypothesis: {hypothesis}'"
            )
        template = base.template.replace("{" + base.text_columns[0] + "}", "{" + columns[0] + "}")
    if prefix is not None:
        if len(columns) != 1:
            raise TaskError(f"{where}: a prefix needs one text column, got {list(columns)}; give a template")
        template = prefix + "{" + columns[0] + "}"
    if template is not None and text_columns is None:
        columns = template_fields(template, f"{where} template")
    words = tuple(label_words) if label_words else base.label_words
    relabelled = words != base.label_words and len(words) == len(base.classes)
    changed = replace(
        base,
        text_columns=columns,
        label_column=label_column or base.label_column,
        classes=tuple(classes) if classes else words,
        label_words=words,
        template=template or base.template,
        aliases=base.classes if relabelled else (),
    )
    if changed != base:
        changed = replace(changed, origin=f"{base.name} with overrides ({base.origin})")
    return changed
