"""Fine-tuning strategies: the registry of strategy names. A strategy only prepares the loaded model
(which parameters train), names its rows, and knows how to save what it trained; the training loop is
shared (job/training/loop.py) and the run plan (job/config/plan.py) gives each run its settings.

Adding a strategy: write a class with the attributes and methods of `job.training.runs.Strategy`, and
add it to STRATEGIES (with `in_default_plan = False` it runs only when a config lists it in
`strategies`). The config's `strategies` choices, the CLI's `--strategy` choices and the plan derive
from STRATEGIES; `<name>_learning_rate` and `<name>_batch_size` config keys give it its own rate and
batch size.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path
from typing import Any

from job.errors import UserError
from job.training.model import LoadedModel
from job.training.peft_format import PEFT_FOLDER, write_peft_adapter
from job.training.runs import LoRASettings, Run, Strategy, rate_text

# LoRA's target layers by preset (ERNIE's layer names); `lora_target_modules` gives regexes of its own.
LORA_TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attention_qv": (r".*\.self_attn\.q_proj", r".*\.self_attn\.v_proj"),
    # every linear layer of each encoder layer: q, k, v, out and both MLP projections ("LoRA Without Regret")
    "all_linear": (r".*\.self_attn\.(q|k|v|out)_proj", r".*\.linear[12]"),
}
LORA_OPTIONS = ("targets", "rslora", "plus_ratio", "pissa")  # the config's lora_<option> keys


def _head_trains(loaded: LoadedModel) -> list[str]:
    """PEFT wrappers freeze everything but their adapters; the new classifier head must train too."""
    return [re.escape(name) for name in loaded.head_parameter_names]


def _adapted(loaded: LoadedModel, run: Run, config_type: Any, model_type: Any, *, source: str | None = None,
             **settings: Any) -> Any:  # fmt: skip
    """PaddleNLP's adapter model of `model_type` over the run's target layers (checked first), with the head
    trainable; `settings` are the adapter's own config fields, `source` where its config says the base is."""
    assert run.lora is not None
    check_targets_match(layer_kinds(loaded.model), run.lora.target_modules)
    config = config_type(
        target_modules=list(run.lora.target_modules), trainable_modules=_head_trains(loaded),
        base_model_name_or_path=loaded.source if source is None else source, **settings,
    )  # fmt: skip
    return model_type(loaded.model, config)


def _save_whole(model: Any, tokenizer: Any, folder: Path) -> list[Path]:
    """The whole model under folder/model."""
    target = folder / "model"
    model.save_pretrained(str(target), safe_serialization=True)  # safetensors: loading runs no code
    tokenizer.save_pretrained(str(target))
    return [target]


class LoRA:
    name = "lora"
    title = "LoRA"
    adapter_options = LORA_OPTIONS
    is_baseline = False
    in_default_plan = True
    step_passes = 2  # frozen weights: input gradients only

    def label(self, run: Run) -> str:
        assert run.lora is not None
        lora = run.lora
        return (f"lora (r={lora.r}, α={lora.alpha}, dropout={lora.dropout:g}{lora.options_text()}, "
                f"lr={rate_text(run.learning_rate)})")  # fmt: skip

    def shape_key(self, lora: LoRASettings) -> str:
        return f"_r{lora.r}_a{lora.alpha}{lora.suffix()}"

    def shape_settings(self, lora: LoRASettings) -> str:
        return f"r={lora.r} alpha={lora.alpha} dropout={lora.dropout:g}{lora.settings_text()}"

    def prepare(self, loaded: LoadedModel, run: Run) -> Any:
        from paddlenlp.peft import LoRAConfig, LoRAModel

        assert run.lora is not None
        model = _adapted(
            loaded, run, LoRAConfig, LoRAModel,  # the saved adapter's config says what it adapts (its source)
            r=run.lora.r,
            lora_alpha=run.lora.alpha,
            lora_dropout=run.lora.dropout,
            merge_weights=False,
            tensor_parallel_degree=loaded.model.config.tensor_parallel_degree,
            rslora=run.lora.rslora,  # scale alpha / sqrt(r)
            lora_plus_scale=run.lora.plus_ratio,  # B's ParamAttr learning rate: AdamW scales B's rate by it
            pissa=run.lora.pissa,  # A, B from the SVD at the first forward; the weight keeps the residual
        )  # fmt: skip
        if run.lora.pissa:
            _pissa_now(model)
            # A and B hold the weight's principal part: decay would pull the weight itself down
            for name, parameter in model.named_parameters():
                if ".lora_A" in name or ".lora_B" in name:
                    parameter.no_weight_decay = True
        return model

    def save_artifacts(self, model: Any, tokenizer: Any, folder: Path) -> list[Path]:
        adapter, merged = folder / "adapter", folder / "merged"
        pissa = bool(model.lora_config.pissa)
        if not pissa:  # PaddleNLP re-runs PiSSA's SVD at a reloaded adapter's first forward: only merged is usable
            model.save_pretrained(str(adapter))  # LoRA weights + trainable head + lora_config.json + config.json
            tokenizer.save_pretrained(str(adapter))  # `job predict` reads any saved folder the same way
            write_peft_adapter(model, folder / PEFT_FOLDER, model.lora_config.base_model_name_or_path)
        model.merge()  # fold B @ A * scale into the frozen weights, then drop the LoRA layers
        plain = model.restore_original_model()
        plain.save_pretrained(str(merged), safe_serialization=True)  # safetensors: loading runs no code
        tokenizer.save_pretrained(str(merged))
        return [merged] if pissa else [adapter, merged, folder / PEFT_FOLDER]


# Paddle's GPU SVD (paddle/phi/kernels/gpu/svd_kernel.cu) when cuSOLVER's gesvdj reports info != 0, raised
# as PreconditionNotMet, which its pybind translator hands to Python as a RuntimeError.
SVD_UNCONVERGED = "CUSolver SVD is not zero"


def _pissa_now(model: Any) -> None:
    """PiSSA's SVD now, as LoRALinear's first forward would run it (lora_layers.py: `if not
    self.apply_pissa and self.pissa`), on the same frozen weights: under `compile: on` that first
    forward is being traced, and the SVD's set_value there ended in an AttributeError."""
    import paddle

    with paddle.no_grad():
        for name, layer in model.model.named_sublayers():
            if getattr(layer, "pissa", False) and not layer.apply_pissa:
                try:
                    layer.pissa_init(layer.r)
                except RuntimeError as exc:
                    if SVD_UNCONVERGED not in str(exc):
                        raise
                    finite = bool(paddle.isfinite(layer.weight).all())
                    cause = "it holds NaN or infinite values: the checkpoint is damaged" if not finite else (
                        "cuSOLVER's Jacobi SVD (gesvdj) stopped before converging; set lora_pissa: false, or "
                        "run this strategy with --device cpu")  # fmt: skip
                    raise UserError(f"PiSSA could not take the SVD of {name}.weight: {cause}") from None
                layer.apply_pissa = True


class LoKr:
    """LoKr (LyCORIS): each target weight's update is a Kronecker product w1 ⊗ (w2_a @ w2_b), PaddleNLP's
    LoKrModel over the LoRA targets, with `lora_r` as its dimension and a scale of 1."""

    name = "lokr"
    title = "LoKr"
    adapter_options = ("targets",)
    is_baseline = False
    in_default_plan = False
    step_passes = 2

    def label(self, run: Run) -> str:
        assert run.lora is not None
        return f"lokr (dim={run.lora.r}{run.lora.options_text()}, lr={rate_text(run.learning_rate)})"

    # LoKr reads lora_r as its dimension and the targets; alpha and dropout it does not use (scale 1).
    def shape_key(self, lora: LoRASettings) -> str:
        return f"_d{lora.r}{lora.suffix()}"

    def shape_settings(self, lora: LoRASettings) -> str:
        return f"dim={lora.r}{lora.settings_text()}"

    def prepare(self, loaded: LoadedModel, run: Run) -> Any:
        from paddlenlp.peft import LoKrConfig, LoKrModel

        assert run.lora is not None
        with tempfile.TemporaryDirectory() as scratch:
            # LoKrModel reads its base's config from base_model_name_or_path (lokr_model.py, __init__): a
            # model built in memory (job doctor's) has none on disk, so its own config is written there.
            if not loaded.source:
                loaded.model.config.save_pretrained(scratch)
            model = _adapted(loaded, run, LoKrConfig, LoKrModel, source=loaded.source or scratch, lokr_dim=run.lora.r,
                             lokr_alpha=0.0)  # fmt: skip
        model.lokr_config.base_model_name_or_path = loaded.source
        return model

    def save_artifacts(self, model: Any, tokenizer: Any, folder: Path) -> list[Path]:
        """The merged model. PaddleNLP 3.0.0b4's LoKrLinear.merge calls a `get_weight` it does not define
        (lokr_layers.py), so the job folds each update in itself: W += get_adapter_weight(), the
        (in, out) update the forward adds, scale included."""
        from paddlenlp.peft.lokr.lokr_layers import LoKrLinear

        for layer in model.model.sublayers():
            if isinstance(layer, LoKrLinear) and not layer.merged:
                layer.weight.set_value(layer.weight + layer.get_adapter_weight())
                layer.merged = True
        return _save_whole(model.restore_original_model(), tokenizer, folder)


class VeRA:
    """VeRA (Kopiczko et al. 2024): each target weight's update is A diag(d) B diag(b), with A (in x r)
    and B (r x out) random and frozen, and only the vectors d (r) and b (out) trained, plus the head;
    PaddleNLP's VeRAModel on the LoRA targets (its A and B are per layer, the paper shares them), scale 1.

    PaddleNLP 3.0.0b4 starts B at zero, which gives b and d zero gradient: that VeRA never learns (a
    test shows it). The job starts as the paper and HF PEFT do: B drawn like A (Kaiming uniform, from
    the run's seed), b = 0 (the update starts at zero) and d = 0.1."""

    name = "vera"
    title = "VeRA"
    adapter_options = ("targets",)
    is_baseline = False
    in_default_plan = False
    step_passes = 2  # frozen weights: input gradients only

    def label(self, run: Run) -> str:
        assert run.lora is not None
        return f"vera (r={run.lora.r}{run.lora.options_text()}, lr={rate_text(run.learning_rate)})"

    # VeRA reads lora_r as its rank and the targets; alpha and dropout it does not use (scale 1, no dropout).
    def shape_key(self, lora: LoRASettings) -> str:
        return f"_r{lora.r}{lora.suffix()}"

    def shape_settings(self, lora: LoRASettings) -> str:
        return f"r={lora.r}{lora.settings_text()}"

    def prepare(self, loaded: LoadedModel, run: Run) -> Any:
        import paddle
        from paddlenlp.peft import VeRAConfig, VeRAModel
        from paddlenlp.peft.vera.vera_layers import VeRALinear

        assert run.lora is not None
        model = _adapted(loaded, run, VeRAConfig, VeRAModel, r=run.lora.r, vera_alpha=run.lora.r, vera_dropout=0.0)
        model.mark_only_vera_as_trainable()  # VeRAModel leaves every other weight trainable otherwise
        kaiming = paddle.nn.initializer.KaimingUniform(negative_slope=math.sqrt(5), nonlinearity="leaky_relu")
        with paddle.no_grad():
            for layer in model.model.sublayers():
                if isinstance(layer, VeRALinear):
                    kaiming(layer.vera_B)  # as PaddleNLP draws A, from Paddle's generator (the run's seed)
                    layer.vera_b.set_value(paddle.zeros_like(layer.vera_b))
                    layer.vera_d.set_value(paddle.full_like(layer.vera_d, 0.1))
        return model

    def save_artifacts(self, model: Any, tokenizer: Any, folder: Path) -> list[Path]:
        """The merged model only: VeRAModel saves the trained vectors but not its random frozen A and B,
        so a saved adapter could not be reloaded; and its restore_original_model refuses every layer but
        VeRA's, so the job folds each update in (VeRALinear.merge) and puts a plain Linear back itself."""
        from paddlenlp.peft.vera.vera_layers import VeRALinear

        names = [name for name, layer in model.model.named_sublayers() if isinstance(layer, VeRALinear)]
        for name in names:
            model.model.get_sublayer(name).merge()
            model._find_and_restore_module(name)
        return _save_whole(model.model, tokenizer, folder)


class _OwnWeights:
    """The strategies that train some of the model's own weights (no adapter); `trains` says which."""

    adapter_options = None
    is_baseline = False
    in_default_plan = False
    name: str

    def trains(self, name: str, head: set[str]) -> bool:
        raise NotImplementedError

    def label(self, run: Run) -> str:
        return f"{self.name} (lr={rate_text(run.learning_rate)})"

    def prepare(self, loaded: LoadedModel, run: Run) -> Any:
        head = set(loaded.head_parameter_names)
        for name, parameter in loaded.model.named_parameters():
            parameter.stop_gradient = not self.trains(name, head)
        return loaded.model

    def save_artifacts(self, model: Any, tokenizer: Any, folder: Path) -> list[Path]:
        return _save_whole(model, tokenizer, folder)


class BitFit(_OwnWeights):
    """BitFit: only the biases (every layer's, LayerNorm's included) and the classifier head train."""

    name = "bitfit"
    title = "BitFit"
    step_passes = 2  # the embeddings' LayerNorm bias needs gradients all the way down

    def trains(self, name: str, head: set[str]) -> bool:
        return name in head or name.endswith(".bias")


class HeadOnly(_OwnWeights):
    """A linear probe: the encoder stays frozen and only the classifier head trains."""

    name = "head_only"
    title = "head only"
    step_passes = 1  # no gradient flows into the encoder

    def trains(self, name: str, head: set[str]) -> bool:
        return name in head


class FullFinetune(_OwnWeights):
    name = "full_finetune"
    title = "full fine-tuning"
    is_baseline = True
    in_default_plan = True
    step_passes = 3

    def trains(self, name: str, head: set[str]) -> bool:
        return True


# VeRA is left out: in PaddleNLP 3.0.0b4 its B starts at zero (vera_layers.py: vera_B
# `default_initializer=nn.initializer.Constant(value=0.0)`) and stays frozen (mark_only_vera_as_trainable
# trains only vera_b and vera_d), so the update A·diag(d)·B·diag(b) is zero and so are the gradients
# of b and d: it cannot learn (tests/test_methods.py shows it); and restore_original_model raises
# NotImplementedError at the first layer that is not a VeRALinear.


def layer_kinds(model: Any) -> dict[str, str]:
    """Each sublayer's name -> its class name ("Linear", "Embedding", "LayerNorm")."""
    return {name: type(layer).__name__ for name, layer in model.named_sublayers()}


def check_targets_match(layers: dict[str, str], patterns: tuple[str, ...] | list[str]) -> None:
    """Every pattern must match at least one layer name, or LoRA would silently train less; and every
    layer it matches must be a Linear, the one kind of ERNIE's layers PaddleNLP's LoRA, LoKr and VeRA wrap
    (`.*` also matches embeddings and layer norms: found now, not after full fine-tuning has trained)."""
    names = list(layers)
    for pattern in patterns:
        others = [name for name in names if re.fullmatch(pattern, name) and layers[name] != "Linear"]
        if others:
            shown = ", ".join(f"{name} ({layers[name]})" for name in others[:3])
            raise UserError(
                f"config key 'lora_target_modules': {pattern!r} matches {len(others)} layer(s) that are not Linear "
                f"({shown}{', …' if len(others) > 3 else ''}); adapters wrap Linear layers only: match those, "
                r"e.g. '.*\.self_attn\.(q|v)_proj'"
            )
        if not any(re.fullmatch(pattern, name) for name in names):
            examples = ", ".join([name for name in names if name.endswith("_proj")][:3])
            raise UserError(
                f"config key 'lora_target_modules': {pattern!r} matches no layer of the model "
                f"(layer names look like: {examples or names[-1]})"
            )


# The one place strategy names are written; the order is the report's row order.
STRATEGIES: dict[str, Strategy] = {
    strategy.name: strategy for strategy in (LoRA(), LoKr(), VeRA(), BitFit(), HeadOnly(), FullFinetune())
}
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)
DEFAULT_STRATEGIES: tuple[str, ...] = tuple(name for name, s in STRATEGIES.items() if s.in_default_plan)


def baseline() -> Strategy:
    """The strategy every other one is compared with (full fine-tuning)."""
    return next(strategy for strategy in STRATEGIES.values() if strategy.is_baseline)


def compared() -> list[Strategy]:
    """The strategies compared with the baseline, in registry order."""
    return [strategy for strategy in STRATEGIES.values() if not strategy.is_baseline]
