"""The classes of a task: each class id's label as the data spells it (`109`, `正面`), its description
where the task has one (TNEWS `news_tech`), and the names a saved model carries. TNEWS's own label
table lives here; every other task's labels come from its data (job.data.sources)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# CLUE TNEWS labels in PaddleNLP's fixed order ("105" and "111" do not exist). Index = class id.
TNEWS_LABELS: tuple[str, ...] = (
    "100", "101", "102", "103", "104", "106", "107", "108", "109", "110", "112", "113", "114", "115", "116",
)  # fmt: skip
TNEWS_LABEL_DESC: dict[str, str] = {
    "100": "news_story", "101": "news_culture", "102": "news_entertainment", "103": "news_sports",
    "104": "news_finance", "106": "news_house", "107": "news_car", "108": "news_edu", "109": "news_tech",
    "110": "news_military", "112": "news_travel", "113": "news_world", "114": "news_stock",
    "115": "news_agriculture", "116": "news_game",
}  # fmt: skip

# The keys a saved model's config carries (job.predict reads them back); older models carry only
# `tnews_label_codes`, and are TNEWS models.
SAVED_LABELS, SAVED_DESCRIPTIONS, SAVED_TEXT_COLUMNS = "job_labels", "job_label_descriptions", "job_text_columns"
OLD_TNEWS_CODES = "tnews_label_codes"


@dataclass(frozen=True)
class Labels:
    """A task's classes; the index of a name is its class id (the classifier's output)."""

    names: tuple[str, ...]
    descriptions: tuple[str, ...] | None = None  # one per name, where the task describes its labels

    def __post_init__(self) -> None:
        assert len(set(self.names)) == len(self.names), "label names repeat"
        assert self.descriptions is None or len(self.descriptions) == len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def index(self) -> dict[str, int]:
        return {name: class_id for class_id, name in enumerate(self.names)}

    def shown(self, class_id: int) -> str:
        """How the report names a class: `109 news_tech` where there is a description, else the name."""
        name = self.names[class_id]
        return f"{name} {self.descriptions[class_id]}" if self.descriptions else name

    def model_names(self) -> list[str]:
        """The id2label names a saved model carries: the descriptions where there are any (TNEWS:
        news_tech, as PaddleNLP's examples name them), else the names."""
        return list(self.descriptions or self.names)

    def name_model(self, model_config: Any, text_columns: Sequence[str]) -> None:
        """Write the labels into a model's config before it is saved: id2label/label2id, the data's
        label of each class id, their descriptions, and the text keys `job predict` reads."""
        names = self.model_names()
        model_config.id2label = dict(enumerate(names))
        model_config.label2id = {name: class_id for class_id, name in enumerate(names)}
        setattr(model_config, SAVED_LABELS, list(self.names))
        setattr(model_config, SAVED_DESCRIPTIONS, list(self.descriptions) if self.descriptions else None)
        setattr(model_config, SAVED_TEXT_COLUMNS, list(text_columns))


TNEWS = Labels(TNEWS_LABELS, tuple(TNEWS_LABEL_DESC[code] for code in TNEWS_LABELS))


def saved_labels(model_config: Any) -> Labels | None:
    """The labels a saved model carries, or None when it carries none this job wrote."""
    names = getattr(model_config, SAVED_LABELS, None)
    if names is None:
        return TNEWS if getattr(model_config, OLD_TNEWS_CODES, None) == list(TNEWS_LABELS) else None
    descriptions = getattr(model_config, SAVED_DESCRIPTIONS, None)
    if not isinstance(names, list) or len(set(map(str, names))) != len(names):
        return None
    if descriptions is not None and (not isinstance(descriptions, list) or len(descriptions) != len(names)):
        return None
    return Labels(tuple(map(str, names)), tuple(map(str, descriptions)) if descriptions else None)
