"""The effective rank of what training changed in each encoder weight, ΔW = W_after − W_before: the
number of singular directions holding 90% of the update's energy (squared singular values). Full
fine-tuning's updates are measured once at the end of the run, beside the rank LoRA is given
("LoRA Learns Less and Forgets Less", Biderman et al. 2024, found them 10-100x typical LoRA ranks)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

ENERGY = 0.90
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
    for an update of zero. The squared singular values are the eigenvalues of the Gram matrix of the
    update's shorter side (scipy.linalg.eigvalsh): 2.6x faster than svdvals for one ERNIE 3.0 Medium
    layer's six updates (0.33 against 0.85 s here, float64), equal to 1e-14 of the largest."""
    from scipy.linalg import eigvalsh

    matrix = np.asarray(update, dtype=np.float64)
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    squares = np.clip(eigvalsh(gram), 0.0, None)[::-1]  # descending
    total = squares.sum()
    if total == 0:
        return 0
    held = np.cumsum(squares) / total
    return int(np.searchsorted(held, energy - 1e-12) + 1)


def trained_weights(model: Any) -> dict[str, np.ndarray]:
    """A host copy of the encoder weights that will train (none for an adapter: its base stays frozen)."""
    return {name: p.numpy().copy() for name, p in model.named_parameters() if not p.stop_gradient and kind_of(name)}


def update_ranks(before: dict[str, np.ndarray], model: Any) -> dict[str, list[int]]:
    """Kind -> the energy rank of each layer's update, in layer order."""
    ranks: dict[str, list[int]] = {}
    for name, parameter in model.named_parameters():
        if name in before:
            ranks.setdefault(kind_of(name) or "", []).append(energy_rank(parameter.numpy() - before[name]))
    return {kind: ranks[kind] for kind in WEIGHT_KINDS if kind in ranks}
