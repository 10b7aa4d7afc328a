"""The job's training loop against Hugging Face transformers + PEFT + torch, step by step: each case is
one run the job trains and exports (`job replay`, dropout off), replayed by peer/replay.py in the peer
venv; the table compares their per-step losses, learning rates and final dev predictions.

`python -m tests.parity` (`make parity`) runs every case on three models and prints the table: the tiny
random ERNIE of the tests, the pretrained stand-in (where every strategy learns) and ERNIE 3.0 Medium's
shape with random weights (the last two need ../shared). `--record` also writes the tiny model's and the
stand-in's numbers, the peer's and the job's, to tests/golden/, which tests/test_parity.py holds the job
to in CI, without the peer venv."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
SHARED = ROOT.parent / "shared" / "data"
LOSS_TOLERANCE = 1e-4  # relative, every step (fp32)
AGREEMENT = 0.995  # share of dev titles whose predicted class is the same


@dataclass(frozen=True)
class Case:
    """One row of the table: the config keys of the run, and whether the peer replays PEFT's own
    parameter groups where the job's differ on purpose (`as_peft`: expected to differ)."""

    name: str
    keys: dict[str, Any] = field(default_factory=dict)
    as_peft: bool = False
    rate_scale: float = 1.0  # times the model's learning rate for the strategy

    @property
    def expected_equal(self) -> bool:
        return not self.as_peft


# One row per strategy and per option PEFT also has (each model's learning rates come with its inputs).
CASES = (
    Case("full fine-tuning", {"strategies": ["full_finetune"]}),
    Case("head only", {"strategies": ["head_only"]}),
    Case("BitFit", {"strategies": ["bitfit"]}),
    Case("LoRA (q, v)", {"strategies": ["lora"]}),
    Case("LoRA (all linear)", {"strategies": ["lora"], "lora_targets": "all_linear"}),
    Case("rsLoRA", {"strategies": ["lora"], "lora_rslora": True}),
    # B at 16 times the model's LoRA rate (0.16 on the stand-in) is chaotic: one ulp moved on the peer's own
    # start moved its loss 5% by step 20. At an eighth of the rate, B trains at twice the usual rate.
    Case("LoRA+", {"strategies": ["lora"], "lora_plus_ratio": 16}, rate_scale=1 / 8),
    Case("LoRA+ (PEFT's groups)", {"strategies": ["lora"], "lora_plus_ratio": 16}, as_peft=True, rate_scale=1 / 8),
    Case("PiSSA", {"strategies": ["lora"], "lora_pissa": True, "lora_alpha": 4}),
    Case("VeRA", {"strategies": ["vera"]}),
    Case("LoKr", {"strategies": ["lokr"]}),
)
COMMON = {"batch_size": 16, "device": "cpu", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
          "save_artifacts": False}  # fmt: skip


def rates(full: float, others: float, vera: float) -> dict[str, float]:
    """Each strategy's learning rate: full fine-tuning's, the adapters' and the probes', VeRA's."""
    return {"full_finetune_learning_rate": full, "lora_learning_rate": others, "lokr_learning_rate": others,
            "bitfit_learning_rate": others, "head_only_learning_rate": others, "vera_learning_rate": vera}  # fmt: skip


def tiny_inputs(folder: Path) -> dict[str, Any]:
    """The tiny ERNIE encoder (random weights; the job creates and seeds the head, as it does for a real
    checkpoint) and the keyword-learnable TNEWS-format data: the tests' own fixtures. Full fine-tuning
    learns here (loss 2.71 to 2.03 in 66 steps); the adapters barely do, as on any random encoder."""
    from tests.fixtures import build_tiny_encoder, build_tnews_folder

    model, data = build_tiny_encoder(folder / "model"), build_tnews_folder(folder / "data")
    return {"model_name": str(model), "data_dir": str(data), "max_seq_length": 32, "num_epochs": 3,
            **rates(5e-3, 3e-2, 3e-2)}  # fmt: skip


def standin_inputs(folder: Path) -> dict[str, Any] | None:
    """The pretrained stand-in (a small ERNIE-architecture encoder pretrained by masked language modelling
    on TNEWS train titles; not ERNIE 3.0 Medium) on real TNEWS titles (../shared): every strategy learns
    in 66 steps (dev accuracy 21-26% where chance is 6.7%, 5-8 classes predicted), so the predictions
    compared are a trained model's."""
    model, data = SHARED / "ernie-standin-tnews", SHARED / "tnews"
    if not ((model / "config.json").is_file() and data.is_dir()):
        return None
    return {"model_name": str(model), "data_dir": str(data), "max_train_samples": 1056, "max_eval_samples": 400,
            "num_epochs": 1, "max_seq_length": 64, **rates(1e-3, 1e-2, 3e-2)}  # fmt: skip


def medium_inputs(folder: Path) -> dict[str, Any] | None:
    """ERNIE 3.0 Medium's shape (PaddleNLP's own config: 6 layers, hidden 768) with random weights, the real
    vocab and real TNEWS titles (../shared): the sizes the job trains at, where rounding has most room."""
    vocab, data = SHARED / "ernie-3.0-medium-zh" / "vocab.txt", SHARED / "tnews"
    if not (vocab.is_file() and data.is_dir()):
        return None
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieModel, ErnieTokenizer

    target = folder / "medium"
    paddle.seed(0)
    ErnieModel(ErnieConfig.from_pretrained("ernie-3.0-medium-zh")).save_pretrained(str(target))
    ErnieTokenizer(str(vocab)).save_pretrained(str(target))
    return {"model_name": str(target), "data_dir": str(data), "max_train_samples": 800, "max_eval_samples": 400,
            "num_epochs": 1, "max_seq_length": 64, **rates(5e-5, 5e-4, 5e-3)}  # fmt: skip


def export(case: Case, inputs: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The job's run of `case`, trained and exported; returns the replay."""
    from job.config.schema import load_config
    from job.replay import REPLAY_FILE, export_replay
    from job.runtime.signals import StopRequest

    values = {**COMMON, **inputs, **case.keys, "output_dir": str(folder / "out")}
    rate = f"{case.keys['strategies'][0]}_learning_rate"
    values[rate] = values[rate] * case.rate_scale
    config = load_config(None, values)
    export_replay(config, None, folder, StopRequest())
    return json.loads((folder / REPLAY_FILE).read_text(encoding="utf-8"))


def replay_in_peer(folders: list[Path], as_peft: list[bool]) -> list[dict[str, Any]]:
    """peer/replay.py over each folder, in the peer venv; its results."""
    if not PEER_PYTHON.is_file():
        raise SystemExit(f"no peer venv at {PEER_PYTHON.parent.parent}: make .venv-peer/.installed")
    results = []
    for folder, flag in zip(folders, as_peft, strict=True):
        output = folder / ("peer-as-peft.json" if flag else "peer.json")
        command = [str(PEER_PYTHON), str(ROOT / "peer" / "replay.py"), str(folder), "--output", str(output)]
        subprocess.run(command + (["--as-peft"] if flag else []), check=True, stdout=subprocess.DEVNULL)
        results.append(json.loads(output.read_text(encoding="utf-8")))
    return results


@dataclass(frozen=True)
class Comparison:
    steps: int
    worst_loss: float  # largest relative difference of a step's loss
    worst_step: int  # 1-based
    worst_rate: float  # largest relative difference of a step's learning rate
    agreement: float  # share of dev titles predicted alike
    trainable: tuple[int, int]  # (job, peer)

    @property
    def equal(self) -> bool:
        return (self.worst_loss <= LOSS_TOLERANCE and self.worst_rate <= 1e-6 and self.agreement >= AGREEMENT
                and self.trainable[0] == self.trainable[1])  # fmt: skip


def compare(job: dict[str, Any], peer: dict[str, Any], trainable: tuple[int, int]) -> Comparison:
    a, b = np.asarray(job["losses"]), np.asarray(peer["losses"])
    if len(a) != len(b):
        return Comparison(len(a), math.inf, min(len(a), len(b)) + 1, math.inf, 0.0, trainable)
    relative = np.abs(a - b) / np.maximum(np.abs(b), 1e-12)
    rates = np.abs(np.asarray(job["learning_rates"]) - np.asarray(peer["learning_rates"]))
    scale = max(max(peer["learning_rates"]), 1e-30)
    agreement = float(np.mean(np.asarray(job["dev_predictions"]) == np.asarray(peer["dev_predictions"])))
    worst = int(relative.argmax())
    return Comparison(len(a), float(relative[worst]), worst + 1, float(rates.max() / scale), agreement, trainable)


def table(rows: list[tuple[str, Case, Comparison]]) -> str:
    lines = [
        "| model | case | steps | largest loss difference (relative) | at step | learning rates | dev predictions "
        "alike | trainable (job / peer) | |",
        "|---|---|---:|---:|---:|---|---:|---|---|",
    ]
    for model, case, c in rows:
        verdict = "equal" if c.equal else ("differs, as named" if not case.expected_equal else "**DIFFERS**")
        lines.append(
            f"| {TITLES.get(model, model)} | {case.name} | {c.steps} | {c.worst_loss:.1e} | {c.worst_step} | "
            f"{'alike' if c.worst_rate <= 1e-6 else f'{c.worst_rate:.1e} apart'} | {100 * c.agreement:.1f}% | "
            f"{c.trainable[0]:,} / {c.trainable[1]:,} | {verdict} |"
        )
    return "\n".join(lines)


def run_cases(model: str, inputs: dict[str, Any], work: Path) -> tuple[list[tuple[str, Case, Comparison]], dict]:
    folders, replays = [], []
    for number, case in enumerate(CASES):
        folder = work / f"{model}-{number}"
        if case.as_peft and folders and CASES[number - 1].keys == case.keys:
            folders.append(folders[-1])  # the same job run, replayed with PEFT's groups
            replays.append(replays[-1])
            continue
        folders.append(folder)
        replays.append(export(case, inputs, folder))
    peers = replay_in_peer(folders, [case.as_peft for case in CASES])
    rows, recorded = [], {}
    for case, replay, peer in zip(CASES, replays, peers, strict=True):
        trainable = (sum(math.prod(p["shape"]) for p in replay["parameters"] if p["trains"]),
                     peer["checks"]["trainable_params"])  # fmt: skip
        rows.append((model, case, compare(replay["job"], peer, trainable)))
        kept = {key: peer[key] for key in ("losses", "learning_rates", "dev_predictions")}
        recorded[case.name] = {"job": {**replay["job"], "trainable_params": trainable[0]},
                               "peer": {**kept, "trainable_params": trainable[1]}}  # fmt: skip
    return rows, recorded


MODELS: dict[str, Callable[[Path], dict[str, Any] | None]] = {
    "tiny": tiny_inputs,
    "standin": standin_inputs,
    "medium": medium_inputs,
}
TITLES = {"tiny": "tiny, random", "standin": "stand-in, pretrained", "medium": "Medium's shape, random"}
RECORDED = ("tiny", "standin")  # the models whose numbers tests/test_parity.py holds the job to


def golden_file(model: str) -> Path:
    return GOLDEN / f"parity-{model}.json"


def recorded_rows() -> list[tuple[str, Case, Comparison]]:
    """The table's rows of the recorded models, from tests/golden/ alone (docs/how-it-works.md shows them)."""
    rows = []
    for model in RECORDED:
        cases = json.loads(golden_file(model).read_text(encoding="utf-8"))["cases"]
        for case in CASES:
            job, peer = cases[case.name]["job"], cases[case.name]["peer"]
            rows.append((model, case, compare(job, peer, (job["trainable_params"], peer["trainable_params"]))))
    return rows


DOCS_PAGE = ROOT / "docs" / "how-it-works.md"


def with_block(page: str, name: str, text: str) -> str:
    """`page` with the block between `<!-- parity: name -->` and the next `<!-- /parity -->` set to `text`."""
    start = f"<!-- parity: {name} -->\n"
    head, found, rest = page.partition(start)
    if not found:
        raise SystemExit(f"{DOCS_PAGE.name} has no {start.strip()} block")
    return head + start + text + "\n" + rest[rest.index("<!-- /parity -->") :]


def block(page: str, name: str) -> str:
    start = f"<!-- parity: {name} -->\n"
    return page.split(start, 1)[1].split("<!-- /parity -->", 1)[0].rstrip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    parser.add_argument("--record", action="store_true",
                        help=f"write {', '.join(RECORDED)}'s numbers to {GOLDEN.relative_to(ROOT)}/")  # fmt: skip
    parser.add_argument("--docs", action="store_true", help=f"write the tables into {DOCS_PAGE.relative_to(ROOT)}")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for model in args.models.split(","):
            inputs = MODELS[model](work / f"{model}-inputs")
            if inputs is None:
                print(f"{model}: skipped (its files are not under {SHARED})", file=sys.stderr)
                continue
            found, recorded = run_cases(model, inputs, work)
            rows += found
            if model in RECORDED and args.record:
                GOLDEN.mkdir(parents=True, exist_ok=True)
                golden_file(model).write_text(json.dumps({"cases": recorded}, indent=1) + "\n", encoding="utf-8")
                print(f"recorded {golden_file(model).relative_to(ROOT)}", file=sys.stderr)
    print(table(rows))
    if args.docs:
        page = with_block(DOCS_PAGE.read_text(encoding="utf-8"), "recorded", table(recorded_rows()))
        medium = [row for row in rows if row[0] == "medium"]
        if medium:
            page = with_block(page, "medium", table(medium))
        DOCS_PAGE.write_text(page, encoding="utf-8")
        print(f"wrote {DOCS_PAGE.relative_to(ROOT)}", file=sys.stderr)
    if any(not c.equal and case.expected_equal for _, case, c in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
