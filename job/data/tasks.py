"""The datasets a config can name (`dataset`): the CLUE classification tasks PaddleNLP serves, and `own`,
a user's labelled files in `data_dir`. The one place their names are written.

A CLUE task's URL, file names, md5 values and label order are PaddleNLP's own
(paddlenlp.datasets.clue.Clue.BUILDER_CONFIGS); this table adds what the job reads from each record
and how the report names the task."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClueTask:
    name: str
    title: str  # the report's name for it
    task: str  # what the task is, for the report's summary
    text_fields: tuple[str, ...]  # the record's text, or its two texts for a sentence-pair task
    has_label_file: bool  # labels.json in the archive: a description of each label
    skips_unlabelled: bool  # NLI data marks a pair without an agreed label "-"; PaddleNLP skips those rows
    dev_rows: int | None = None  # rows of its dev split, where counted (a carved test is as large)

    @property
    def is_pair(self) -> bool:
        return len(self.text_fields) == 2


CLUE_TASKS: dict[str, ClueTask] = {
    task.name: task
    for task in (
        ClueTask("tnews", "TNEWS", "the Chinese TNEWS news-title classification task", ("sentence",), True, False,
                 10_000),
        ClueTask("iflytek", "IFLYTEK", "the CLUE IFLYTEK app-description classification task", ("sentence",),
                 True, False, 2_599),
        ClueTask("afqmc", "AFQMC", "the CLUE AFQMC question-matching task (sentence pairs)",
                 ("sentence1", "sentence2"), False, False),
        ClueTask("ocnli", "OCNLI", "the CLUE OCNLI natural-language-inference task (sentence pairs)",
                 ("sentence1", "sentence2"), False, True),
        ClueTask("cmnli", "CMNLI", "the CLUE CMNLI natural-language-inference task (sentence pairs)",
                 ("sentence1", "sentence2"), False, True),
    )
}  # fmt: skip
OWN = "own"  # a user's own files in data_dir, read with the config's column keys
DEFAULT_DATASET = "tnews"
DATASET_NAMES: tuple[str, ...] = (*CLUE_TASKS, OWN)
OWN_DATA_KEYS = ("text_column", "text_pair_column", "label_column", "label_names")  # read only with `own`


def dataset_title(dataset: str) -> str:
    """`TNEWS`, `IFLYTEK`, ...; `own data` for a user's files."""
    return CLUE_TASKS[dataset].title if dataset in CLUE_TASKS else "own data"
