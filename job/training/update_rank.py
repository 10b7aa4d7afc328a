"""The effective rank of what training changed in each encoder weight, ΔW = W_after − W_before: the
number of singular directions holding 90% of the update's energy (squared singular values). Full
fine-tuning's updates are measured once at the end of the run, beside the rank LoRA is given
("LoRA Learns Less and Forgets Less", Biderman et al. 2024, found them 10-100x typical LoRA ranks)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

ENERGY = 0.90
# Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence",
# arXiv 2410.21228): of a fine-tuned weight's top singular vectors, those whose largest cosine similarity
# with any of the pretrained weight's singular vectors is below the threshold.
INTRUDER_TOP, INTRUDER_THRESHOLD = 10, 0.5
# Each kind of encoder weight by its ERNIE parameter name (one per layer).
WEIGHT_KINDS: dict[str, str] = {
    "q": r"\.self_attn\.q_proj\.weight$",
    "k": r"\.self_attn\.k_proj\.weight$",
    "v": r"\.self_attn\.v_proj\.weight$",
    "attention out": r"\.self_attn\.out_proj\.weight$",
    "FFN in": r"\.linear1\.weight$",
    "FFN out": r"\.linear2\.weight$",
}


def kind_of(name: str) -> str | None:
    return next((kind for kind, pattern in WEIGHT_KINDS.items() if re.search(pattern, name)), None)


def energy_rank(update: np.ndarray, energy: float = ENERGY) -> int:
    """The smallest k whose top-k singular values hold `energy` of the update's squared Frobenius norm; 0
    for an update of zero."""
    return rank_of(spectrum(update), energy)


def spectrum(update: np.ndarray) -> np.ndarray:
    """The update's squared singular values, descending: the eigenvalues of the Gram matrix of its shorter
    side (scipy.linalg.eigvalsh), 2.6x faster than svdvals for one ERNIE 3.0 Medium layer's six updates
    (0.33 against 0.85 s here, float64), equal to 1e-14 of the largest."""
    from scipy.linalg import eigvalsh

    matrix = np.asarray(update, dtype=np.float64)
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    return np.clip(eigvalsh(gram), 0.0, None)[::-1]


def rank_of(squares: np.ndarray, energy: float = ENERGY) -> int:
    total = squares.sum()
    if total == 0:
        return 0
    held = np.cumsum(squares) / total
    return int(np.searchsorted(held, energy - 1e-12) + 1)


def stable_rank(squares: np.ndarray) -> float:
    """‖ΔW‖²_F / ‖ΔW‖²_2: how many directions the update's energy is spread over, without a threshold (1 for
    a rank-one update; the shorter side for one spread evenly); 0 for an update of zero."""
    return float(squares.sum() / squares[0]) if squares.size and squares[0] > 0 else 0.0


@lru_cache(maxsize=16)
def random_rank(shape: tuple[int, int], energy: float = ENERGY) -> int:
    """The energy rank of a random Gaussian matrix of `shape` (seeded): what an update with no structure
    at all would need. A 768 x 768 one needs 391 of its 768 directions for 90%, a 768 x 3072 one 585, so
    full fine-tuning's ranks read against this, not against the shape."""
    return energy_rank(np.random.default_rng(0).standard_normal(shape), energy)


def singular_directions(weight: np.ndarray, top: int | None = None) -> np.ndarray:
    """The weight's singular vectors on its shorter side (columns, largest singular value first): the
    eigenvectors of that side's Gram matrix (scipy.linalg.eigh), all of them or the `top` ones only. The
    shorter side keeps each a 768 x 768 problem for ERNIE 3.0 Medium, whichever way a Linear faces. In
    float32, with LAPACK's divide-and-conquer driver (evd)."""
    from scipy.linalg import eigh

    matrix = np.asarray(weight, dtype=np.float32)  # cosines need no more; float64 took twice as long
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    size = gram.shape[0]
    subset = None if top is None else [max(0, size - top), size - 1]
    _, vectors = eigh(gram, subset_by_index=subset, driver="evr" if subset else "evd")
    return vectors[:, ::-1]


_BASES: dict[str, tuple[bytes, np.ndarray]] = {}  # weight name -> (digest of the weight, its singular directions)


def pretrained_basis(name: str, weight: np.ndarray) -> np.ndarray:
    """The singular directions of a weight before training, computed once per process for each pretrained
    weight: every full fine-tuning run of a process starts from the same weights, and their 36 eigendecompositions
    were about 3 of the 6 s the intruder count took per run of ERNIE 3.0 Medium here. A weight whose bytes
    differ (another model) is decomposed again; one basis per weight name is kept (85 MB for Medium)."""
    import hashlib

    digest = hashlib.blake2b(np.ascontiguousarray(weight).tobytes(), digest_size=16).digest()
    cached = _BASES.get(name)
    if cached is None or cached[0] != digest:
        _BASES[name] = (digest, singular_directions(weight))
    return _BASES[name][1]


def intruder_count(before: np.ndarray, after: np.ndarray, basis: np.ndarray | None = None,
                   top: int = INTRUDER_TOP, threshold: float = INTRUDER_THRESHOLD) -> int:  # fmt: skip
    """How many of `after`'s top singular vectors have no singular vector of `before` within cosine
    `threshold` (`basis`: before's directions, when already computed)."""
    basis = singular_directions(before) if basis is None else basis
    similarity = np.abs(basis.T @ singular_directions(after, top)).max(axis=0)
    return int((similarity < threshold).sum())


def adapter_intruders(model: Any, threshold: float = INTRUDER_THRESHOLD) -> dict[str, list[int]]:
    """Kind -> each adapted layer's intruder count, for a LoRA model: the frozen weight against the weight
    with the adapter folded in (W + A B x scale, Paddle's [in, out] layout), before anything is merged."""
    found: dict[str, list[int]] = {}
    if getattr(getattr(model, "lora_config", None), "pissa", False):
        return found  # PiSSA's frozen weight is the residual, not the pretrained weight
    for name, layer in model.named_sublayers():
        if not (hasattr(layer, "lora_A") and hasattr(layer, "lora_B") and hasattr(layer, "scaling")):
            continue
        kind = kind_of(f"{name}.weight")
        if kind is None:
            continue
        weight = layer.weight.numpy().astype(np.float64)
        update = layer.lora_A.numpy().astype(np.float64) @ layer.lora_B.numpy().astype(np.float64) * layer.scaling
        found.setdefault(kind, []).append(intruder_count(weight, weight + update, threshold=threshold))
    return {kind: found[kind] for kind in WEIGHT_KINDS if kind in found}


def input_directions(update: np.ndarray, top: int) -> np.ndarray:
    """The update's `top` leading left singular vectors (Paddle's [in, out] layout: directions of the input
    space), as columns, largest first; from the shorter side's Gram matrix: for a tall update the right
    vectors V give the left ones as ΔW V / σ. Fewer columns when the update's rank is lower."""
    from scipy.linalg import eigh

    matrix = np.asarray(update, dtype=np.float64)
    rows, columns = matrix.shape
    tall = rows > columns
    gram = matrix.T @ matrix if tall else matrix @ matrix.T
    size = gram.shape[0]
    top = min(top, size)
    values, vectors = eigh(gram, subset_by_index=[size - top, size - 1], driver="evr")
    values, vectors = values[::-1], vectors[:, ::-1]
    kept = values > values[0] * 1e-12 if values.size and values[0] > 0 else np.zeros(0, dtype=bool)
    values, vectors = values[kept], vectors[:, kept]
    if tall:
        vectors = matrix @ vectors / np.sqrt(values)
    return vectors.astype(np.float32)


def subspace_overlap(lora: np.ndarray, full: np.ndarray) -> float:
    """Hu et al. 2021 (LoRA, section 7)'s normalised subspace similarity of two sets of orthonormal
    directions, ‖U_loraᵀ U_full‖²_F / min(i, j): 1 when one span holds the other, 0 when they are orthogonal,
    about r/d for random r-dimensional subspaces of a d-dimensional space."""
    size = min(lora.shape[1], full.shape[1])
    if size == 0:
        return float("nan")
    return float(np.square(lora.T.astype(np.float64) @ full.astype(np.float64)).sum() / size)


def adapter_updates(model: Any) -> dict[str, tuple[np.ndarray, int]]:
    """Weight name -> (the adapter's update A B x scale in Paddle's [in, out] layout, its rank r), for each
    LoRA layer of a kind in WEIGHT_KINDS (none for PiSSA, whose frozen weight is not the pretrained one)."""
    from paddlenlp.peft.lora.lora_layers import LoRALinear

    found: dict[str, tuple[np.ndarray, int]] = {}
    if getattr(getattr(model, "lora_config", None), "pissa", False):
        return found
    for name, layer in model.named_sublayers():
        if not isinstance(layer, LoRALinear):  # LoKr's and VeRA's updates are built otherwise
            continue
        if kind_of(f"{name}.weight") is None:
            continue
        a, b = layer.lora_A.numpy().astype(np.float64), layer.lora_B.numpy().astype(np.float64)
        found[_base_name(f"{name}.weight")] = (a @ b * layer.scaling, a.shape[1])
    return found


def _base_name(name: str) -> str:
    """The encoder weight's name without the LoRA wrapper's prefix (model.ernie... -> ernie...)."""
    index = name.find("ernie.")
    return name[index:] if index >= 0 else name


def trained_weights(model: Any) -> dict[str, np.ndarray]:
    """A host copy of the encoder weights that will train (none for an adapter: its base stays frozen)."""
    return {name: p.numpy().copy() for name, p in model.named_parameters() if not p.stop_gradient and kind_of(name)}


@dataclass(frozen=True)
class UpdateAnalysis:
    ranks: dict[str, list[int]]  # kind -> each layer's energy rank
    stable: dict[str, list[float]]  # kind -> each layer's stable rank
    random: dict[str, int]  # kind -> a random matrix's energy rank at that kind's shape
    intruders: dict[str, list[int]]  # kind -> each layer's intruder dimensions (INTRUDER_TOP, the threshold)
    # weight name -> its update's leading input directions (job.training.update_rank.input_directions), for
    # the subspace overlap the report measures between LoRA's update and full fine-tuning's
    directions: dict[str, np.ndarray] = field(default_factory=dict)
    spectra: dict[str, np.ndarray] = field(default_factory=dict)  # weight name -> its update's squared singular values


def _each(work: Any, items: list[tuple[str, np.ndarray]]) -> list[Any]:
    """`work(name, weight)` for every item, one weight per core at once, each with one BLAS thread: LAPACK's
    eigensolvers on a 768 x 768 matrix use a second BLAS thread poorly (measured here on 2 cores: 12 such
    weights' spectra and directions took 1.40 s one after another with 2 BLAS threads, 0.78 s two at a time
    with one each). The results are the same in any order (each weight alone)."""
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    from job.runtime.cpu import available_cpus

    try:
        from threadpoolctl import threadpool_limits

        one_thread: Any = threadpool_limits(1)
    except ImportError:
        one_thread = contextlib.nullcontext()
    with one_thread, ThreadPoolExecutor(max(1, min(available_cpus(), len(items)))) as pool:
        return list(pool.map(lambda item: work(*item), items))


def update_analysis(before: dict[str, np.ndarray], model: Any, threshold: float | None = INTRUDER_THRESHOLD,
                    directions: int = 0) -> UpdateAnalysis:  # fmt: skip
    """Each trained encoder weight's update, once: its energy rank and stable rank from one spectrum, the
    random baseline of its shape, (`threshold` not None) its intruder dimensions and (`directions` > 0) its
    leading input directions; for a LoRA model, whose base weights do not train, the adapted layers'
    intruder dimensions and its update's directions (all r of them) alone."""
    ranks: dict[str, list[int]] = {}
    stable: dict[str, list[float]] = {}
    random: dict[str, int] = {}
    intruders: dict[str, list[int]] = {}
    found: dict[str, np.ndarray] = {}
    spectra: dict[str, np.ndarray] = {}

    def measure(name: str, after: np.ndarray) -> tuple[np.ndarray, int | None, np.ndarray | None]:
        update = after - before[name]
        counted = None if threshold is None else intruder_count(
            before[name], after, pretrained_basis(name, before[name]), threshold=threshold)  # fmt: skip
        return spectrum(update), counted, input_directions(update, directions) if directions else None

    trained = [(name, parameter.numpy()) for name, parameter in model.named_parameters() if name in before]
    for (name, _), (squares, counted, leading) in zip(trained, _each(measure, trained), strict=True):
        kind = kind_of(name) or ""
        ranks.setdefault(kind, []).append(rank_of(squares))
        stable.setdefault(kind, []).append(round(stable_rank(squares), 3))
        random.setdefault(kind, random_rank(tuple(before[name].shape)))
        if counted is not None:
            intruders.setdefault(kind, []).append(counted)
        if leading is not None:
            found[_base_name(name)] = leading
            spectra[_base_name(name)] = squares
    order = [kind for kind in WEIGHT_KINDS if kind in ranks]
    if not order and threshold is not None:
        intruders = adapter_intruders(model, threshold)
    if not order and directions:
        updates = adapter_updates(model)
        found = {name: input_directions(update, rank) for name, (update, rank) in updates.items()}
        spectra = {name: spectrum(update)[:rank] for name, (update, rank) in updates.items()}  # the rest are 0
    return UpdateAnalysis({k: ranks[k] for k in order}, {k: stable[k] for k in order}, {k: random[k] for k in order},
                          {k: intruders[k] for k in WEIGHT_KINDS if k in intruders}, found, spectra)  # fmt: skip
