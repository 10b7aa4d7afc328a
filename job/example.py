"""The example report and every excerpt of it in the docs, written from one run (`make example`).

`make example-run` runs the default config (configs/tnews_answer.yaml) on the pretrained stand-in (a small
ERNIE-architecture encoder pretrained by masked LM on the TNEWS train titles; not ERNIE 3.0 Medium) and the
real TNEWS titles, on this machine's CPU. `python -m job.example RUN_DIR DOCS_DIR` then writes:

- DOCS_DIR/example-report/: the run's records (results/*.json), and the report, results.json and plots that
  `job report` builds from them, under a paragraph stating the conditions;
- every block of the docs and the README between `<!-- example: NAME -->` and `<!-- /example -->`: parts
  of that report (the answer, the headline table, the observations), the run's log, `job plan` of the
  default config and of the grid, and `job predict` with the run's LoRA adapter.

tests/test_example_report.py builds the report again from the committed records with the current code and
checks it, and every report excerpt, against the docs: a change to the report's format fails there until
`python -m job.example --refresh docs` (no training: the same records, the new format) writes them again."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from job.output.layout import DIRECTIONS_FOLDER, RESULTS_FOLDER
from job.output.storage import open_output

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "example-report"
REPORT = "report.md"
DEFAULT_CONFIG = "configs/tnews_answer.yaml"
PREDICT_TITLES = ("苹果发布新款手机", "国足晋级世界杯预选赛")
MARKER = re.compile(r"(<!-- example: ([a-z-]+) -->\n)(.*?)(<!-- /example -->)", re.S)
CONDITIONS_END = "<!-- /conditions -->"


# ---------------------------------------------------------------- parts of a report


def sections(report: str) -> dict[str, str]:
    """The report's `## ` sections by heading, each without its heading line."""
    parts = re.split(r"^## (.+)\n", report, flags=re.M)
    return {heading: body.strip("\n") for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def report_excerpts(report: str) -> dict[str, str]:
    """The parts of a report the docs quote: the answer (the summary's bullets, the cost table, the margin
    line and the warnings), the headline table, the observations, and the capacity and serving tables."""
    parts = sections(report)
    summary = parts["Summary"].split("\n\n")
    shared = next(index for index, block in enumerate(summary) if block.startswith(("Every run", "Runs of")))
    results = parts["Results"].split("\n\n")
    split = re.split(r"^### (.+)\n", parts["Results"], flags=re.M)
    subsections = {heading: text.strip("\n") for heading, text in zip(split[1::2], split[2::2], strict=True)}
    return {
        "answer": "\n\n".join(summary[:shared]),
        "headline": results[0],
        "observations": parts["Observations"],
        **({"capacity": subsections["Capacity"]} if "Capacity" in subsections else {}),
        **({"serving": subsections["Serving"]} if "Serving" in subsections else {}),
    }


def body(report: str) -> str:
    """The report as the job wrote it: the example's file without its conditions paragraph."""
    return report.split(CONDITIONS_END + "\n\n", 1)[-1]


# ---------------------------------------------------------------- the example's own files


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return "CPU"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return found[1].strip() if found else "CPU"


def conditions(report: str, when: str, cpu: str) -> str:
    runs = re.search(r"runs: (\d+) \(seeds ([^)]*)\)", report)
    threads = re.search(r"Device: cpu \((\d+) threads?\)", report)
    return (
        f"> **Conditions of this example.** `make example` on {when}: the default config "
        f"(`{DEFAULT_CONFIG}`, {runs[1] if runs else 'its'} runs, seeds {runs[2] if runs else ''}) on {cpu} "
        f"({threads[1] if threads else 2} threads, no GPU). The model is **a stand-in, not ERNIE 3.0 Medium**: "
        "a small ERNIE-architecture encoder (4 layers, hidden size 128, 2.1 million parameters against ERNIE "
        "3.0 Medium's 75 million) "
        "pretrained by masked language modelling on the TNEWS train titles (their text only), because the "
        "published ERNIE 3.0 weights could not be downloaded where this example ran. Being 35 "
        "times smaller, it trains at 6 times the config's rates, in the same ratio (full fine-tuning 3e-4, "
        "LoRA 3e-3; the Makefile's `STANDIN_SETTINGS`). The titles are the real TNEWS ones. So the accuracies "
        "sit far below ERNIE 3.0 Medium's (PaddleNLP: 57.00 on dev), and LoRA's share of the weights is larger "
        "(1.6% against 0.4%); the comparison, its statistics and the shape of the costs are a real run's. "
        "Training times were measured while the machine also ran other work at times (their spread over the "
        "seeds shows it); `make bench` measures speed. The report below is the job's own, unedited.\n" + CONDITIONS_END
    )


def write_example_report(run_dir: Path, docs: Path) -> str:
    """docs/example-report from the run's records: the records, then `job report`'s files built from
    them, then the conditions above the report."""
    target = docs / EXAMPLE
    records = target / RESULTS_FOLDER
    shutil.rmtree(records, ignore_errors=True)
    records.mkdir(parents=True)
    for path in sorted((run_dir / RESULTS_FOLDER).glob("*.json")):
        shutil.copyfile(path, records / path.name)
    directions = target / DIRECTIONS_FOLDER  # each run's update directions: the report's subspace overlap reads them
    shutil.rmtree(directions, ignore_errors=True)
    if (run_dir / DIRECTIONS_FOLDER).is_dir():
        shutil.copytree(run_dir / DIRECTIONS_FOLDER, directions)
    return refresh_example_report(docs, cpu_name())


def refresh_example_report(docs: Path, cpu: str | None = None) -> str:
    """The example report built again from its committed records with this version's code (no training)."""
    from job.pipeline import write_report

    target = docs / EXAMPLE
    old = (target / REPORT).read_text(encoding="utf-8") if (target / REPORT).is_file() else ""
    if cpu is None:
        found = re.search(r"\) on ([^(]+?) \(\d+ threads, no GPU\)", old)
        cpu = found[1] if found else cpu_name()
    write_report(open_output(str(target)), REPORT)
    for leftover in (".lock", "results.json"):  # the merge lock, and the records again (700 KB): not docs
        (target / leftover).unlink(missing_ok=True)
    report = (target / REPORT).read_text(encoding="utf-8")
    finished = max(re.findall(r'"finished_at": ?"(\d{4}-\d\d-\d\d)', "".join(
        path.read_text(encoding="utf-8") for path in sorted((target / RESULTS_FOLDER).glob("*.json")))))  # fmt: skip
    (target / REPORT).write_text(conditions(report, finished, cpu) + "\n\n" + report, encoding="utf-8")
    return report


# ---------------------------------------------------------------- the excerpts in the docs


def log_excerpt(log: str) -> str:
    """The run's log as a reader needs it: what was read, the first run from start to end, the last
    run's end and the report's place (the steps between are left out as `...`)."""
    lines = [line for line in log.splitlines() if line.startswith("+") or line.startswith("report:")]
    lines = [line for line in lines if not re.search(r"evaluating (dev|test): ", line)]  # the quarters
    head = [line for line in lines if "[run " not in line and not line.startswith("report:")][:4]
    first = [line for line in lines if "[run 1/" in line]
    steps = [index for index, line in enumerate(first) if " step " in line]
    if steps:
        first = [*first[: steps[0] + 2], "...", *first[steps[-1] + 1 :]]
    tail = [line for line in lines if "done]" in line][-1:] + [line for line in lines if line.startswith("report:")]
    return "\n".join([*head, *first, "...", *tail])


def command_output(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "job", *args], cwd=ROOT, capture_output=True, text=True,
                            check=True, timeout=600)  # fmt: skip
    return result.stdout.rstrip("\n")


PLANS = {"plan": DEFAULT_CONFIG, "plan-grid": "configs/tnews_lora_vs_full_grid.yaml"}  # marker: the config


def plan_excerpt(config: str) -> str:
    """`job plan` of a shipped config as a reader sees it: the first two runs and the last (the runs
    between left out as `...`), then what the plan can show and the array size."""
    lines = command_output("plan", "--config", config).splitlines()
    runs = [line for line in lines if re.match(r"\s*\d+  ", line)]
    if len(runs) > 4:
        lines = [*runs[:2], "...", *lines[len(runs) - 1 :]]
    return "\n".join([f"$ python -m job plan --config {config}", *lines])


def plan_blocks() -> dict[str, str]:
    return {name: fenced(plan_excerpt(config)) for name, config in PLANS.items()}


def fenced(text: str) -> str:
    return f"```text\n{text}\n```"


def fill(text: str, blocks: dict[str, str]) -> str:
    """`text` with each marked block replaced by its new content (blocks not given stay as they are)."""

    def replace(match: re.Match[str]) -> str:
        name = match[2]
        return match[1] + blocks[name] + "\n" + match[4] if name in blocks else match[0]

    return MARKER.sub(replace, text)


def marked_blocks(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for match in MARKER.finditer(text):
        found.setdefault(match[2], []).append(match[3].rstrip("\n"))
    return found


def doc_pages(docs: Path) -> list[Path]:
    return [ROOT / "README.md", *sorted(docs.glob("*.md"))]


def report_blocks(report: str) -> dict[str, str]:
    return {f"report-{name}": text for name, text in report_excerpts(report).items()}


def write_excerpts(docs: Path, blocks: dict[str, str]) -> None:
    for page in doc_pages(docs):
        text = page.read_text(encoding="utf-8")
        new = fill(text, blocks)
        if new != text:
            page.write_text(new, encoding="utf-8")


TIMINGS = "timings.json"  # docs/timings.json: the times the docs quote, measured by `make timings`
DEMO_TIME = re.compile(r"in under a minute \((\d+) s on (?:a )?2(?:-core CPU| cores)\)")  # README, Makefile


def time_demo(docs: Path) -> dict[str, object]:
    """Run `python -m job demo` end to end in a fresh folder (a new process: imports, pretraining, six runs,
    the report) and write its wall time, with this version and the CPU it ran on, to docs/timings.json."""
    import json
    import os
    import platform
    import tempfile
    import time
    import tomllib

    from job.runtime.cpu import available_cpus

    with tempfile.TemporaryDirectory(prefix="job-demo-time-") as folder:
        began = time.monotonic()
        subprocess.run([sys.executable, "-m", "job", "demo", "--output-dir", f"{folder}/demo"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        seconds = time.monotonic() - began
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    timings = {"job_version": version, "demo_seconds": round(seconds, 1), "cores": available_cpus(), "cpu": cpu}
    (docs / TIMINGS).write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
    for page in (ROOT / "README.md", ROOT / "Makefile"):  # the quoted figure follows the measurement
        text = page.read_text(encoding="utf-8")
        page.write_text(DEMO_TIME.sub(lambda m: m.group(0).replace(m.group(1), f"{round(seconds)}"), text),
                        encoding="utf-8")  # fmt: skip
    return timings


def main(argv: list[str]) -> int:
    if argv[:1] == ["--time-demo"] and len(argv) == 2:
        print(time_demo(Path(argv[1])))
        return 0
    if argv[:1] == ["--refresh"] and len(argv) == 2:
        docs = Path(argv[1])
        report = refresh_example_report(docs)
        write_excerpts(docs, {**report_blocks(report), **plan_blocks()})
        return 0
    if len(argv) != 2:
        print("usage: python -m job.example RUN_DIR DOCS_DIR | --refresh DOCS_DIR | --time-demo DOCS_DIR",
              file=sys.stderr)  # fmt: skip
        return 2
    run_dir, docs = Path(argv[0]), Path(argv[1])
    report = write_example_report(run_dir, docs)
    blocks = {**report_blocks(report), **plan_blocks()}
    log = run_dir / "run.log"
    if log.is_file():
        blocks["log"] = fenced(log_excerpt(log.read_text(encoding="utf-8")))
    adapters = sorted((run_dir / "artifacts").glob("lora*_s1/adapter"))
    if adapters:
        blocks["predict"] = fenced(
            f"$ python -m job predict --model {adapters[0]} " + " ".join(f'"{title}"' for title in PREDICT_TITLES)
            + "\n" + command_output("predict", "--model", str(adapters[0]), *PREDICT_TITLES)
        )  # fmt: skip
    write_excerpts(docs, blocks)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
