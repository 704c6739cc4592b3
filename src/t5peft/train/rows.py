"""Which reviews form the train, validation and test sets of a fine-tuning run.

A function of six values only (:class:`RowSelection`: the data source, the test source, the seed and three
sizes), so the training run, ``t5peft evaluate`` and the tests choose the same rows. Every subset is stratified
by label and seeded from the run's seed: validation with ``seed``, the training subset with ``seed + 1``, the
test subset (or hold-out) with ``seed + 2``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..data.files import Columns, EmptyTextError
from ..data.sources import DataError, LabeledTexts, is_single_split_file, load_split, shared_rows, split_validation
from ..data.tasks import Task

log = logging.getLogger(__name__)

TEST_HOLDOUT_FRACTION = 0.1  # of a single data file, held out as the test set when no --test-data is given


def sample(data: LabeledTexts, size: int | None, seed: int, what: str) -> LabeledTexts:
    """A seeded, stratified sample of ``size`` rows; all of ``data`` (with a warning naming ``what``) when it has
    fewer."""
    if size is None or size == len(data):
        return data
    if size > len(data):
        log.warning(
            "%s %s is larger than the data (%s); using all %s", what, f"{size:,}", data.origin, f"{len(data):,}"
        )
        return data
    _, chosen = split_validation(data, size=size, seed=seed)  # stratified, seeded
    chosen.origin = f"{data.origin} [stratified sample: {size:,} of {len(data):,} rows, seed {seed}]"
    return chosen


def data_overlap(train: LabeledTexts, validation: LabeledTexts, test: LabeledTexts) -> dict[str, int]:
    """Rows whose exact text also occurs in another set of the run (counted and recorded, never removed)."""
    return {
        "test_in_train": shared_rows(test, train),
        "test_in_validation": shared_rows(test, validation),
        "validation_in_train": shared_rows(validation, train),
    }


@dataclass
class RunTexts:
    """The reviews of a run, before tokenising: three disjoint sets of rows, and where the test set came from."""

    train: LabeledTexts
    validation: LabeledTexts
    test: LabeledTexts
    test_from: str

    def overlap(self) -> dict[str, int]:
        return data_overlap(self.train, self.validation, self.test)

    def splits(self) -> dict[str, LabeledTexts]:
        return {"train": self.train, "validation": self.validation, "test": self.test}

    def class_counts(self, class_names: tuple[str, ...]) -> dict[str, dict[str, int]]:
        """Reviews of each class in each set, by class name."""
        return {
            name: {word: texts.labels.count(index) for index, word in enumerate(class_names)}
            for name, texts in self.splits().items()
        }

    def missing_classes(self, class_names: tuple[str, ...]) -> list[str]:
        """One line per set that lacks a class: a classifier trained or scored on one class says nothing."""
        problems = []
        for name, counts in self.class_counts(class_names).items():
            absent = [word for word, count in counts.items() if count == 0]
            if absent:
                origin = self.splits()[name].origin
                problems.append(f"the {name} set ({origin}) has no {' or '.join(map(repr, absent))} reviews")
        return problems

    def skipped_empty(self) -> dict[str, dict[str, object]]:
        """The empty rows left out of the training and the test source (``skip_empty``)."""
        return {"train": self.train.skipped_empty.as_dict(), "test": self.test.skipped_empty.as_dict()}


def task_columns(task: Task) -> Columns:
    """The columns a task's files are read with: its text and label columns, its classes (and their aliases);
    rows labelled -1 are unlabelled (GLUE's test splits), left out and counted."""
    return Columns(
        text=task.text_columns[0],
        label=task.label_column,
        classes=task.classes,
        more_texts=task.text_columns[1:],
        aliases=task.aliases,
        unlabelled_rows=True,
    )


@dataclass(frozen=True)
class RowSelection:
    task: Task
    data: str
    test_data: str | None
    seed: int
    validation_size: int
    train_size: int | None
    test_size: int | None
    skip_empty: bool = False

    @property
    def test_seed(self) -> int:
        return self.seed + 2

    @property
    def holds_out_test(self) -> bool:
        """A single data file and no ``test_data``: the run's test set is held out from that file."""
        return self.test_data is None and is_single_split_file(self.data)

    def load(self, source: str, split: str) -> LabeledTexts:
        """One split of a source, read with the task's columns (and, in a multi-task Hub dataset, its folder)."""
        try:
            return load_split(
                source,
                split,
                columns=task_columns(self.task),
                hub_config=self.task.hub_config,
                skip_empty=self.skip_empty,
            )
        except EmptyTextError as err:
            hint = "--skip-empty (skip_empty = true in an experiment file) leaves such rows out, counted"
            raise EmptyTextError(f"{err}; {hint}") from None

    @property
    def test_split_name(self) -> str:
        """The split the test set is read from: ``test``, or the task's (``validation`` where test labels are
        hidden) when the test source is the task's own data."""
        return "test" if self.test_data is not None else self.task.test_split

    def texts(self) -> RunTexts:
        """Train, validation and test reviews (seeded, stratified subsets)."""
        if self.holds_out_test:
            pool, test = self._hold_out_test(self.load(self.data, "train"))
            test_from = (
                f"held out from {self.data}, a single file: {len(test):,} of its {len(pool) + len(test):,} rows "
                f"(stratified, seed {self.test_seed}), disjoint from the training and validation rows "
                "(--test-data tests on another file)"
            )
        else:
            pool, whole = self.load(self.data, "train"), self.test_split()
            test = sample(whole, self.test_size, self.test_seed, "test_size")
            test_from = f"the {self.test_split_name} split of {self.test_data or self.data}"
            if self.test_split_name != "test":
                hidden = f"the test labels of {self.task.name} are hidden"
                test_from += f" ({hidden}; its {self.test_split_name} split is the test set)"
            if len(test) < len(whole):
                chosen = f"a stratified sample (seed {self.test_seed}) of {len(test):,} of the {len(whole):,} reviews"
                test_from = f"{chosen} of {test_from}"
        train_rest, validation = self._split_off_validation(pool)
        train = sample(train_rest, self.train_size, self.seed + 1, "train_size")
        return RunTexts(train, validation, test, test_from)

    def test_set(self) -> LabeledTexts:
        """The test set of the run, exactly as its training scored it: same source, size, seed (or hold-out)."""
        if self.holds_out_test:
            return self._hold_out_test(self.load(self.data, "train"))[1]
        return sample(self.test_split(), self.test_size, self.test_seed, "test_size")

    def test_split(self) -> LabeledTexts:
        """All the test rows the run could have drawn from: the test split of its test source, or its hold-out."""
        if self.holds_out_test:
            return self.test_set()
        return self.load(self.test_data or self.data, self.test_split_name)

    def _hold_out_test(self, whole: LabeledTexts) -> tuple[LabeledTexts, LabeledTexts]:
        """``(rest, test)``: a seeded, stratified test set taken out of a single data file, disjoint from the rest."""
        size = self.test_size if self.test_size is not None else max(2, round(TEST_HOLDOUT_FRACTION * len(whole)))
        if size + self.validation_size + 2 > len(whole):
            raise DataError(
                f"{whole.origin}: {len(whole):,} rows cannot hold a test set of {size:,}, a validation set of "
                f"{self.validation_size:,} and training rows; pass --test-data, or a smaller --test-size / "
                "--validation-size"
            )
        rest, test = split_validation(whole, size=size, seed=self.test_seed)
        rest.origin = f"{whole.origin} [minus the test hold-out: {len(rest):,} rows]"
        test.origin = (
            f"{whole.origin} [test hold-out: {size:,} of {len(whole):,} rows, stratified, seed {self.test_seed}]"
        )
        return rest, test

    def _split_off_validation(self, pool: LabeledTexts) -> tuple[LabeledTexts, LabeledTexts]:
        if self.validation_size >= len(pool) - 1:
            raise DataError(
                f"validation_size {self.validation_size:,} leaves fewer than 2 training rows of the {len(pool):,} "
                f"in {pool.origin}; pass a smaller --validation-size"
            )
        return split_validation(pool, size=self.validation_size, seed=self.seed)
