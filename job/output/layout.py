"""The names the job writes inside output_dir, in one place: the config refuses a report_file that
would overwrite one of them."""

from __future__ import annotations

import os
from pathlib import Path

RESULTS_FOLDER = "results"  # results/<run>.json
RESULTS_FILE = "results.json"
LOCK_FILE = ".lock"  # the merge lock
LOSS_PLOT = "loss_curves.png"
PARETO_PLOT = "pareto.png"
SPECTRUM_PLOT = "update_spectrum.png"  # the learned updates' spectra (full fine-tuning, LoRA, random)
LEARNING_PLOT = "learning_curve.png"  # with several training sizes (max_train_samples as a list)
ARTIFACTS_FOLDER = "artifacts"  # artifacts/<run>/
VISUALDL_FOLDER = "vdl"  # vdl/<run>/
TENSORBOARD_FOLDER = "tensorboard"  # tensorboard/<run>/
MLFLOW_DATABASE = "mlflow.db"  # MLflow's SQLite store when no MLFLOW_TRACKING_URI is set
MLFLOW_ARTIFACTS_FOLDER = "mlartifacts"  # its artifacts then
DIRECTIONS_FOLDER = "directions"  # directions/<config hash>/<run>.safetensors: each update's leading directions
CHECKPOINTS_FOLDER = "checkpoints"  # checkpoints/<run>.safetensors: an unfinished run's state

FILE_MODE = 0o644  # what the job writes is readable by all and writable by its owner only,
FOLDER_MODE = 0o755  # whatever the umask (under umask 000 nothing becomes world-writable)
PRIVATE_FOLDER_MODE = 0o700  # a folder that can hold a credential (the launcher's copies of the environment)
PRIVATE_UMASK = 0o077  # for a process whose files can hold one: they are 600, its folders 700


def below(root: Path, name: str | Path) -> Path:
    """root/name, refusing a symbolic link at any level below `root` (`root` itself may be one): a planted
    `results`, `artifacts`, `demo-inputs` or `launch-logs` link would send the job's reads and writes, and
    its mode settling, to whatever it points at. UserError (exit 2) naming the link."""
    from job.errors import UserError

    path = root
    for part in Path(name).parts:
        path = path / part
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link: the job reads and writes nothing through a link inside "
                            f"{root}; remove it")  # fmt: skip
    return root / name


def private_folder(folder: Path) -> list[Path]:
    """`folder` made (its parents as make_folders makes them) or, when it is the job's own and exists,
    tightened to PRIVATE_FOLDER_MODE: only the job's user may list or read it. Returns what it created."""
    created = make_folders(folder.parent)
    try:
        folder.mkdir(mode=PRIVATE_FOLDER_MODE)
        created.append(folder)
    except FileExistsError:
        pass
    os.chmod(folder, PRIVATE_FOLDER_MODE)  # an older run's 755 folder included (callers refuse a link first)
    return created


def make_folders(folder: Path) -> list[Path]:
    """mkdir -p with FOLDER_MODE for every level it creates (Path.mkdir gives parents the umask's mode).
    Returns the folders it created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    created = []
    for level in reversed(missing):
        try:
            level.mkdir(mode=FOLDER_MODE)
        except FileExistsError:  # another array task made it first
            continue
        os.chmod(level, FOLDER_MODE)  # mkdir's mode is still masked by the umask
        created.append(level)
    return created


def settle_modes(folder: Path) -> None:
    """FILE_MODE and FOLDER_MODE on everything under `folder` (what a library wrote there)."""
    for root, _, files in os.walk(folder):
        os.chmod(root, FOLDER_MODE)
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                os.chmod(path, FILE_MODE)


RESERVED_NAMES = frozenset(
    {
        RESULTS_FOLDER,
        RESULTS_FILE,
        LOCK_FILE,
        LOSS_PLOT,
        PARETO_PLOT,
        LEARNING_PLOT,
        ARTIFACTS_FOLDER,
        VISUALDL_FOLDER,
        CHECKPOINTS_FOLDER,
        DIRECTIONS_FOLDER,
        TENSORBOARD_FOLDER,
        MLFLOW_DATABASE,
        MLFLOW_ARTIFACTS_FOLDER,
        SPECTRUM_PLOT,
    }
)
