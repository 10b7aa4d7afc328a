"""The CLUE TNEWS labels: codes in PaddleNLP's fixed order (the index is the class id), their names,
and the names a saved model carries."""

from __future__ import annotations

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
LABEL_TO_ID = {label: index for index, label in enumerate(TNEWS_LABELS)}
NUM_CLASSES = len(TNEWS_LABELS)


def name_labels(model_config: Any) -> None:
    """Write the label names into a model's config before it is saved: id2label/label2id with the
    TNEWS descriptions (news_tech), and `tnews_label_codes`, the TNEWS code of each class id (109)."""
    model_config.id2label = {index: TNEWS_LABEL_DESC[code] for index, code in enumerate(TNEWS_LABELS)}
    model_config.label2id = {TNEWS_LABEL_DESC[code]: index for index, code in enumerate(TNEWS_LABELS)}
    model_config.tnews_label_codes = list(TNEWS_LABELS)
