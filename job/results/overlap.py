"""How much of LoRA's update lies in full fine-tuning's: Hu et al. 2021 (LoRA, section 7)'s normalised subspace
similarity between a LoRA run's update and the top-r input directions of full fine-tuning's update of the same
weight, at the same seed (same sample, same initial weights). Each run's directions are stored beside its
record (directions/<config hash>/<run>.safetensors, float16: about 1.3 MB for full fine-tuning of ERNIE 3.0
Medium at r = 16) by job.training.update_rank; the report reads both runs' files and measures the overlap."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np

from job.output.layout import DIRECTIONS_FOLDER
from job.output.storage import Output
from job.results.schema import Combined, Comparison
from job.training.update_rank import WEIGHT_KINDS, kind_of, subspace_overlap


def directions_name(config_hash: str, key: str) -> str:
    return f"{DIRECTIONS_FOLDER}/{config_hash}/{key}.safetensors"


SPECTRUM = "spectrum/"  # the file's other tensors: each update's squared singular values (float32)


def write_directions(output: Output, config_hash: str, key: str, directions: dict[str, np.ndarray],
                     spectra: dict[str, np.ndarray] | None = None) -> None:  # fmt: skip
    """Store a run's update directions (weight name -> [in, k] orthonormal columns, float16) and spectra
    (weight name -> squared singular values, float32), whole or not at all."""
    from safetensors.numpy import save_file

    tensors = {name: np.ascontiguousarray(value, dtype=np.float16) for name, value in directions.items()}
    tensors.update({SPECTRUM + name: np.ascontiguousarray(value, dtype=np.float32)
                    for name, value in (spectra or {}).items()})  # fmt: skip
    with output.file(directions_name(config_hash, key)) as path:
        save_file(tensors, str(path))


def read_stored(output: Output, config_hash: str, key: str) -> dict[str, np.ndarray]:
    """Every tensor of a run's file, or {} when it has none (made before they were kept, `analysis: false`,
    a strategy without them) or it cannot be read."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    with output.fetched(directions_name(config_hash, key)) as path:
        if path is None:
            return {}
        try:
            return {name: value.astype(np.float32) for name, value in load_file(str(path)).items()}
        except (SafetensorError, OSError, ValueError):
            return {}


def read_directions(output: Output, config_hash: str, key: str) -> dict[str, np.ndarray]:
    return {name: v for name, v in read_stored(output, config_hash, key).items() if not name.startswith(SPECTRUM)}


def read_spectra(output: Output, config_hash: str, key: str) -> dict[str, np.ndarray]:
    stored = read_stored(output, config_hash, key)
    return {name[len(SPECTRUM) :]: v for name, v in stored.items() if name.startswith(SPECTRUM)}


def seed_overlaps(lora: dict[str, np.ndarray], full: dict[str, np.ndarray]) -> dict[str, float]:
    """Kind -> the median over layers of the overlap between LoRA's directions (all r) and full fine-tuning's
    top r, for the weights both have."""
    by_kind: dict[str, list[float]] = {}
    for name, directions in lora.items():
        kind = kind_of(name)
        if kind is None or name not in full or directions.shape[1] == 0:
            continue
        rank = directions.shape[1]
        by_kind.setdefault(kind, []).append(subspace_overlap(directions, full[name][:, :rank]))
    return {kind: statistics.median(by_kind[kind]) for kind in WEIGHT_KINDS if kind in by_kind}


def comparison_overlaps(output: Output, config_hash: str, comparison: Comparison, baseline: str,
                        ) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """Kind -> the overlap (mean over the seeds both runs have directions for) and kind -> what a random
    r-dimensional subspace would give (r / the input dimension)."""
    strategy = next(name for name in comparison.selected if name != baseline)
    found: list[dict[str, float]] = []
    random: dict[str, float] = {}
    for lora_key, full_key in zip(comparison.selected[strategy], comparison.selected[baseline], strict=True):
        lora, full = read_directions(output, config_hash, lora_key), read_directions(output, config_hash, full_key)
        if lora and full:
            found.append(seed_overlaps(lora, full))
            for name, directions in lora.items():
                if (kind := kind_of(name)) is not None:
                    random.setdefault(kind, directions.shape[1] / directions.shape[0])
    kinds = [kind for kind in WEIGHT_KINDS if found and all(kind in seed for seed in found)]
    return {kind: round(statistics.fmean(seed[kind] for seed in found), 4) for kind in kinds}, {
        kind: round(random[kind], 4) for kind in kinds
    }


def with_overlaps(output: Output, combined: Combined, baseline: str) -> Combined:
    """`combined` with each comparison's subspace overlap filled in from the stored directions."""
    updated: list[Comparison] = []
    for comparison in combined.comparisons:
        overlap, random = comparison_overlaps(output, combined.run.config_hash, comparison, baseline)
        updated.append(comparison.model_copy(update={"subspace_overlap": overlap, "subspace_random": random}))
    first = next((c for c in updated if combined.comparison and c.group == combined.comparison.group), None)
    return combined.model_copy(update={"comparisons": updated, "comparison": first or combined.comparison})


def overlap_line(comparisons: Sequence[Comparison]) -> str | None:
    """The report's line: each compared row's overlap per kind of weight beside the random baseline."""
    parts = []
    for c in comparisons:
        if c.subspace_overlap:
            name = c.labels[next(iter(c.labels))]
            parts.append(f"{name}: " + ", ".join(f"{kind} {value:.2f} (random {c.subspace_random[kind]:.3f})"
                                                 for kind, value in c.subspace_overlap.items()))  # fmt: skip
    if not parts:
        return None
    return (
        "Subspace overlap (how much of LoRA's update lies in full fine-tuning's top-r input directions of the same "
        "weight at the same seed: 1 inside, 0 orthogonal; a random r-dimensional subspace gives r/d; median over "
        "layers, mean over seeds; Hu et al. 2021, section 7): " + "; ".join(parts) + "."
    )


def cumulative_energy(squares: np.ndarray, length: int) -> np.ndarray:
    """The share of the update's energy in its top 1..length directions (1 after its last)."""
    held = np.cumsum(squares.astype(np.float64)) / max(float(squares.sum()), 1e-300)
    return np.concatenate([held, np.ones(max(0, length - held.size))])[:length]


def spectrum_curves(output: Output, combined: Combined, comparison: Comparison, baseline: str, kind: str,
                    ) -> dict[str, np.ndarray]:  # fmt: skip
    """For one kind of weight: the cumulative energy of full fine-tuning's update, of the row's (LoRA's), and
    of a random Gaussian matrix of the weight's shape, over 1..d directions; medians over layers and seeds.
    {} when the runs stored no spectra."""
    from job.training.update_rank import spectrum

    strategy = next(name for name in comparison.selected if name != baseline)
    curves: dict[str, list[np.ndarray]] = {"full": [], "row": []}
    shape: tuple[int, int] | None = None
    for role, keys in (("full", comparison.selected[baseline]), ("row", comparison.selected[strategy])):
        for key in keys:
            for name, squares in read_spectra(output, combined.run.config_hash, key).items():
                if kind_of(name) == kind:
                    curves[role].append(squares)
    if not curves["full"] or not curves["row"]:
        return {}
    length = max(s.size for s in curves["full"])
    directions = read_directions(output, combined.run.config_hash, comparison.selected[baseline][0])
    shape = next((tuple(v.shape) for n, v in directions.items() if kind_of(n) == kind), None)
    rows = shape[0] if shape else length
    random = spectrum(np.random.default_rng(0).standard_normal((rows, length)))
    return {
        "full": np.median([cumulative_energy(s, length) for s in curves["full"]], axis=0),
        "row": np.median([cumulative_energy(s, length) for s in curves["row"]], axis=0),
        "random": cumulative_energy(random, length),
    }
