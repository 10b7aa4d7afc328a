"""Per-token speed of the job against the torch + PEFT peer, round by round: `make bench-peer` runs
`job bench` and peer/torch_peft.py interleaved on the same batches, then this prints, for each round
and headline row, both times per padded token at window 0 (plain shuffled batches: equal work) and
peer / job (above 1: the job is faster). Standard library only: it runs in either venv."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: Path) -> None:
    rounds = sorted(folder.glob("bench-round*.json"))
    if not rounds:
        sys.exit(f"no bench-round*.json in {folder}")
    print(f"{'round':>5}  {'row':32} {'job ms/token':>13} {'peer ms/token':>14} {'peer / job':>11}")
    for bench_file in rounds:
        number = bench_file.stem.removeprefix("bench-round")
        job = {
            run["group"]: run for run in json.loads(bench_file.read_text())["runs"] if run["length_bucket_window"] == 0
        }
        peer_file = folder / f"peer-round{number}.jsonl"
        for line in peer_file.read_text().splitlines():
            peer = json.loads(line)
            ours = job.get(peer["group"])
            if ours is None:
                continue
            job_per_token = ours["median_ms_per_step"] / ours["tokens_per_step"]
            print(
                f"{number:>5}  {peer['group']:32} {job_per_token:13.4f} {peer['ms_per_token']:14.4f} "
                f"{peer['ms_per_token'] / job_per_token:10.2f}x"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
