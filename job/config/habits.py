"""Config keys of transformers' TrainingArguments, PEFT and litgpt that users bring along, each with
what the job has in its place: the message for such a key says that, not the nearest spelling
(`report_to` is not a misspelt `report_note`)."""

from __future__ import annotations

FOREIGN_KEYS: dict[str, str] = {
    "num_train_epochs": "the job's key is 'num_epochs'",
    "per_device_train_batch_size": "the job's key is 'batch_size' (per strategy: '<strategy>_batch_size')",
    "per_device_eval_batch_size": "the job's key is 'eval_batch_size'",
    "train_batch_size": "the job's key is 'batch_size'",
    "warmup_steps": "the job's key is 'warmup_ratio' (the share of steps; warm-up steps are rounded up)",
    "lr": "the job's key is 'learning_rate' (per strategy: '<strategy>_learning_rate')",
    "lora_target_modules_preset": "the job's key is 'lora_targets'",
    "target_modules": "the job's keys are 'lora_targets' (a preset) or 'lora_target_modules' (regexes)",
    "r": "the job's key is 'lora_r'",
    "use_rslora": "the job's key is 'lora_rslora'",
    "init_lora_weights": "PiSSA's start is 'lora_pissa: true'; otherwise A is drawn as PEFT draws it and B is 0",
    "loraplus_lr_ratio": "the job's key is 'lora_plus_ratio'",
    "fp16": "the job's key is 'precision' (fp32, bf16, fp16 or auto)",
    "bf16": "the job's key is 'precision' (fp32, bf16, fp16 or auto)",
    "tf32": "fp32 matmuls run as TF32 from compute capability 8.0 (Paddle's default; each record's 'tf32' says "
    "so); the job's key is 'precision'",
    "evaluation_strategy": "dev is scored every 'eval_steps' steps (and at the end)",
    "eval_strategy": "dev is scored every 'eval_steps' steps (and at the end)",
    "load_best_model_at_end": "the job's key is 'select_checkpoint: best_dev' (with 'eval_steps')",
    "metric_for_best_model": "the best checkpoint is chosen by dev accuracy ('select_checkpoint: best_dev')",
    "save_strategy": "mid-run checkpoints: 'save_steps' or 'save_minutes'; the trained models: 'save_artifacts'",
    "save_total_limit": "the job keeps one checkpoint per unfinished run ('save_steps', 'save_minutes') and removes it "
    "once the run's record is saved",
    "resume_from_checkpoint": "a rerun of the same command resumes: finished runs are skipped, an unfinished one "
    "goes on from its checkpoint ('save_steps', 'save_minutes')",
    "lr_scheduler_type": "the job's schedule is linear warm-up ('warmup_ratio') then linear decay to 0",
    "seed_everything": "the job's key is 'seed'",
    "max_length": "the job's key is 'max_seq_length'",
    "model_name_or_path": "the job's key is 'model_name'",
}


def foreign_key_hint(key: str) -> str | None:
    """What the job has in place of `key`, a key of another trainer, or None."""
    return FOREIGN_KEYS.get(key)
