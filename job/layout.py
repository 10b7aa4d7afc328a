"""The names the job writes inside output_dir, in one place: the config refuses a report_file that
would overwrite one of them."""

from __future__ import annotations

RESULTS_FOLDER = "results"  # results/<run>.json
RESULTS_FILE = "results.json"
LOCK_FILE = ".lock"  # the merge lock
LOSS_PLOT = "loss_curves.png"
PARETO_PLOT = "pareto.png"
ARTIFACTS_FOLDER = "artifacts"  # artifacts/<run>/
VISUALDL_FOLDER = "vdl"  # vdl/<run>/

RESERVED_NAMES = frozenset(
    {RESULTS_FOLDER, RESULTS_FILE, LOCK_FILE, LOSS_PLOT, PARETO_PLOT, ARTIFACTS_FOLDER, VISUALDL_FOLDER}
)
