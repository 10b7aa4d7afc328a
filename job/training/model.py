"""Loading the model and tokenizer (PaddleNLP name, downloaded once into $PPNLP_HOME, or a local
folder), checking that the encoder's weights really loaded, and counting parameters."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import logging
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from job.data.download import model_cache_folder, weights_problem
from job.errors import RetryableError, UserError
from job.runtime.device_faults import raise_if_device_fault


def looks_like_a_path(model_name: str) -> bool:
    """A folder rather than a PaddleNLP name: it holds a path separator or starts with '.' or '~'."""
    return model_name.startswith((".", "~")) or "/" in model_name or "\\" in model_name


ACCEPTED_MODELS = ("model_name is a PaddleNLP name, such as ernie-3.0-medium-zh, or a local folder of a Paddle model "
                   "saved with save_pretrained: config.json, the weights and vocab.txt")  # fmt: skip


def check_model_name(model_name: str) -> None:
    """A URL, or a path that does not exist, is a mistake, not a download to retry (exit 2, not 75)."""
    if "://" in model_name:
        raise UserError(
            f"config key 'model_name': {model_name} is a URL; give a PaddleNLP model name (ernie-3.0-medium-zh) "
            "or a local folder"
        )
    if looks_like_a_path(model_name) and not _existing_folder(model_name):
        org_model = model_name.count("/") == 1 and not model_name.startswith((".", "/", "~"))
        hub = ("; a Hugging Face name (org/model) is neither: download it with its tokenizer and convert it with "
               "`job import-hf`") if org_model else ""  # fmt: skip
        raise UserError(f"config key 'model_name': model folder {model_name} does not exist ({ACCEPTED_MODELS}{hub})")


def check_model_folder(model_name: str) -> str:
    """`model_name` checked as `run` checks it before loading anything (UserError when it cannot be one);
    what it is, for `job validate`."""
    check_model_name(model_name)
    if looks_like_a_path(model_name):
        _check_local_model_folder(model_name)
        return f"local folder {model_name}"
    return f"{model_name} (a PaddleNLP name: downloaded into the cache on the first run, or found there)"


def export_model_folder(model_name: str, target: Path) -> Path:
    """A PaddleNLP model the cache holds (`job prefetch` filled it) as a folder of its own: the encoder's
    config.json and weights (safetensors) and the tokenizer, to carry into an air-gapped cluster and name as
    `model_name`. Written beside `target` and renamed into place: a stopped export leaves no half-model."""
    import shutil

    from job.data.download import builtin_model_files

    if looks_like_a_path(model_name):
        raise UserError(f"config key 'model_name': {model_name} is already a folder; copy it as it is")
    files = builtin_model_files(model_name)
    missing = [file.path for file in files if not file.path.is_file()]
    if not files or missing:
        where = model_cache_folder(model_name)
        raise UserError(f"{model_name} is not in the model cache ({where}): run `job prefetch` with this config on a "
                        "machine with network first, or point PPNLP_HOME at the cache it filled")  # fmt: skip
    if target.exists() or target.is_symlink():
        raise UserError(f"--to {target} exists: give a folder that does not exist yet")
    from paddlenlp.transformers import ErnieModel

    scratch = target.with_name(f".{target.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        ErnieModel.from_pretrained(model_name).save_pretrained(str(scratch), safe_serialization=True)
        load_tokenizer(model_name).save_pretrained(str(scratch))
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


# transformers' ErnieConfig keys PaddleNLP's ErnieConfig reads the same way.
HF_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                  "type_vocab_size", "task_type_vocab_size", "use_task_id", "pad_token_id", "layer_norm_eps",
                  "initializer_range")  # fmt: skip


def import_hf_folder(source: Path, target: Path) -> Path:
    """A Hugging Face-format ERNIE checkpoint (transformers' ErnieModel or ErnieForSequenceClassification:
    config.json, model.safetensors, vocab.txt) as a PaddleNLP model folder: names mapped
    (job.training.peft_format), Linear weights transposed to Paddle's [in, out], the encoder only (a
    classifier head is made for the task, as for any pretrained checkpoint). Renamed into place whole."""
    import shutil

    from safetensors.numpy import load_file

    from job.training.peft_format import is_linear_weight, paddle_name

    weights, config_file, vocab = source / "model.safetensors", source / "config.json", source / "vocab.txt"
    for needed in (config_file, weights, vocab):
        if not needed.is_file():
            raise UserError(f"{source} is not a Hugging Face ERNIE folder: it has no {needed.name} (save it with "
                            "save_pretrained(..., safe_serialization=True), with its tokenizer)")  # fmt: skip
    if target.exists() or target.is_symlink():
        raise UserError(f"--to {target} exists: give a folder that does not exist yet")
    settings = json.loads(config_file.read_text(encoding="utf-8"))
    if settings.get("model_type") != "ernie":
        raise UserError(f"{config_file} describes a {settings.get('model_type')!r} model, not transformers' ERNIE")
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieModel, ErnieTokenizer

    state = {}
    for name, value in load_file(str(weights)).items():
        if name.startswith("classifier.") or name.endswith("position_ids"):
            continue
        converted = paddle_name(name).removeprefix("ernie.")
        state[converted] = value.T.copy() if is_linear_weight(converted, value) else value
    encoder = ErnieModel(ErnieConfig(**{key: settings[key] for key in HF_CONFIG_KEYS if key in settings}))
    expected = set(encoder.state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise UserError(f"{weights} does not map onto PaddleNLP's ERNIE: missing {missing[:3]}, unknown {extra[:3]}")
    encoder.set_state_dict({name: paddle.to_tensor(value) for name, value in state.items()})
    scratch = target.with_name(f".{target.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        encoder.save_pretrained(str(scratch), safe_serialization=True)
        ErnieTokenizer(str(vocab)).save_pretrained(str(scratch))
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _existing_folder(name: str) -> bool:
    try:
        return Path(name).expanduser().is_dir()
    except RuntimeError:  # `~nobody/...`: no such user, so no such home folder
        return False


def model_limits(model_name: str) -> dict[str, int]:
    """hidden_size and max_position_embeddings, read without building the model."""
    check_model_name(model_name)
    folder = Path(model_name)
    if folder.is_dir():
        _check_local_model_folder(model_name)
        config_file = folder / "config.json"
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{config_file} is not valid JSON: {exc}") from None
    else:
        from paddlenlp.transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(model_name).to_dict()
        except (OSError, ValueError) as exc:
            raise RetryableError(f"could not get the config of model '{model_name}': {exc}") from None
    return {key: int(config[key]) for key in ("hidden_size", "max_position_embeddings") if key in config}


def layer_names(model_name: str) -> dict[str, str] | None:
    """The sublayers of the classifier the job would build (name -> class name), from the model's config
    alone (no weights are read or allocated), so LoRA's target patterns are checked before anything
    trains. None for a model type other than ERNIE: its names are checked when LoRA wraps the loaded model."""
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieForSequenceClassification

    try:
        config = ErnieConfig.from_pretrained(model_name)
    except (OSError, ValueError) as exc:
        raise RetryableError(f"could not get the config of model '{model_name}': {exc}") from None
    if getattr(config, "model_type", "ernie") != "ernie":
        return None
    with paddle.LazyGuard():  # parameters are declared, not allocated or initialised
        model = ErnieForSequenceClassification(config)
    return {name: type(layer).__name__ for name, layer in model.named_sublayers()}


def quiet_paddlenlp() -> None:
    """PaddleNLP logs every file it touches at INFO; keep warnings and errors only."""
    from paddlenlp.utils.log import logger

    logger.set_level("WARNING")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def captured_paddlenlp_warnings() -> Iterator[list[str]]:
    """PaddleNLP reports missing or re-initialised weights only as log warnings; collect them."""
    from paddlenlp.utils.log import logger

    collector = _Collect()
    logger.logger.addHandler(collector)
    logger.logger.removeHandler(logger.handler)
    try:
        yield collector.messages
    finally:
        logger.logger.removeHandler(collector)
        logger.logger.addHandler(logger.handler)


def newly_initialised_keys(messages: list[str]) -> list[str]:
    """Parameter names PaddleNLP says were not loaded from the checkpoint (missing or resized)."""
    keys: list[str] = []
    for message in messages:
        match = re.search(r"newly initialized: (\[.*?\])", message, re.S)
        if match:
            keys.extend(ast.literal_eval(match.group(1)))
        keys.extend(re.findall(r"^- (\S+): found shape", message, re.M))
    return keys


@dataclass
class LoadedModel:
    model: Any
    head_parameter_names: list[str]  # parameters outside the encoder (classifier head)
    reinitialised: list[str]  # parameters not taken from the checkpoint
    source: str = ""  # what was loaded: a PaddleNLP name, or a folder's absolute path


def model_source(model_name: str) -> str:
    """How a saved adapter names its base model: the absolute path of a local folder, else the name."""
    folder = Path(model_name)
    return str(folder.resolve()) if folder.is_dir() else model_name


def load_model(model_name: str, num_classes: int) -> LoadedModel:
    """AutoModelForSequenceClassification with `num_classes` outputs. The encoder must load in full;
    only the classifier head may be new (a pretrained encoder, or a head of another size)."""
    from paddlenlp.transformers import AutoModelForSequenceClassification

    _check_local_model_folder(model_name)
    with captured_paddlenlp_warnings() as messages:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                model_name, num_classes=num_classes, ignore_mismatched_sizes=True
            )
        except OSError as exc:
            raise_if_device_fault(exc)  # the weights are placed on the GPU as they load
            raise RetryableError(f"could not load model '{model_name}': {exc}") from None
        except (ValueError, EOFError, RuntimeError, pickle.UnpicklingError, SafetensorError) as exc:
            raise_if_device_fault(exc)
            if not Path(model_name).is_dir():
                damaged = [path for path in weight_files(model_cache_folder(model_name)) if weights_problem(path)]
                if damaged:
                    raise purged_download(model_name, damaged, exc) from None
                raise
            weights = ", ".join(sorted(p.name for p in weight_files(Path(model_name))))
            raise UserError(
                f"model folder {model_name}: its weights ({weights}) cannot be read, truncated or corrupt? "
                f"({str(exc).strip()[:200]})"
            ) from None
    prefix = f"{model.base_model_prefix}."
    names = [name for name, _ in model.named_parameters()]
    head = [name for name in names if not name.startswith(prefix)]
    reinitialised = sorted(set(newly_initialised_keys(messages)))
    encoder_missing = [key for key in reinitialised if key.startswith(prefix)]
    if encoder_missing:
        raise UserError(
            f"model '{model_name}': {len(encoder_missing)} encoder weights are not in the checkpoint or have "
            f"another shape (first: {encoder_missing[0]}); is this an ERNIE checkpoint of this size?"
        )
    return LoadedModel(
        model=model, head_parameter_names=head, reinitialised=reinitialised, source=model_source(model_name)
    )


def weight_files(folder: Path) -> list[Path]:
    return list(folder.glob("*.pdparams")) + list(folder.glob("*.safetensors"))


def _check_local_model_folder(model_name: str) -> None:
    folder = Path(model_name)
    if not folder.is_dir():
        return
    if not (folder / "config.json").is_file():
        raise UserError(f"model folder {folder} has no config.json (save the model with save_pretrained)")
    if not weight_files(folder):
        raise UserError(f"model folder {folder} has no weights (*.pdparams or *.safetensors)")


def load_tokenizer(model_name: str) -> Any:
    from paddlenlp.transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_name)
    except (OSError, ValueError, AssertionError) as exc:  # AssertionError: paddlenlp.data.Vocab's checks of
        # vocab.txt (empty: "token_to_idx should not be None"; no [UNK]: "[UNK] is not in token_to_idx")
        if Path(model_name).is_dir():  # nothing to download: the folder itself is incomplete
            raise UserError(f"model folder {model_name} has no usable tokenizer files: {exc}") from None
        raise RetryableError(f"could not load the tokenizer of '{model_name}': {exc}") from None


def purged_download(model_name: str, files: list[Path], problem: object) -> RetryableError:
    """Cached weights that do not load (a copy damaged after job.data.download.fetch_model checked it)
    are removed, so the retry (75) downloads them again instead of failing on the cached copy for good."""
    for path in files:
        path.unlink(missing_ok=True)
    names = ", ".join(str(path) for path in files)
    return RetryableError(
        f"model '{model_name}': the cached {names} could not be read ({str(problem).strip()[:200]}); removed "
        "from the cache, a retry downloads it again"
    )


def classifier_of(model: Any) -> Any:
    """The classifier itself: a LoRAModel keeps the model it wraps as `.model`."""
    return getattr(model, "model", model)


def classify(model: Any, tensors: dict[str, Any]) -> Any:
    """The logits of one batch whose tensors are on the device (job.runtime.device.batch_on_device)."""
    return model(input_ids=tensors["input_ids"], token_type_ids=tensors["token_type_ids"])


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) element counts."""
    trainable = total = 0
    for parameter in model.parameters():
        size = int(parameter.numel())
        total += size
        if not parameter.stop_gradient:
            trainable += size
    return trainable, total


def trainable_bytes(model: Any) -> int:
    """Size of the trainable weights: what a checkpoint of this strategy must store beyond the base model."""
    return sum(int(p.numel()) * int(p.element_size()) for p in model.parameters() if not p.stop_gradient)


def weights_fingerprint(model: Any) -> str:
    """sha256 over every parameter's bytes, in name order: proves two runs started from the same weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]
