"""The ``finetune:`` section of a preset: keys and defaults (like mlx-lm's ``CONFIG_DEFAULTS``).

Defaults are the real-model settings (Qwen2.5-3B on an 18 GB Mac); ``presets/tiny.yaml``
overrides them for the offline tiny student. See docs/finetune_mlx.md for the memory sums.
"""

from __future__ import annotations

DEFAULTS = {
    # Student base model: a Hugging Face repo or a local MLX/HF model dir. In the tiny preset
    # the pipeline builds it with `ape-finetune build-tiny` and passes --model explicitly.
    "base_model": "Qwen/Qwen2.5-3B",
    "fine_tune_type": "lora",  # lora | dora | full
    "num_layers": 16,  # transformer blocks (from the top) that get adapters; -1 = all
    "lora_rank": 8,
    "lora_scale": 20.0,
    "lora_dropout": 0.0,
    "optimizer": "adam",
    "learning_rate": 1e-5,
    "lr_schedule": "cosine_decay",  # cosine_decay | linear_schedule | constant
    "warmup_steps": 50,
    "min_lr_ratio": 0.1,  # final LR of the decay, as a fraction of learning_rate
    "batch_size": 1,
    "iters": 600,
    "grad_accumulation_steps": 1,
    "grad_checkpoint": True,
    "mask_prompt": True,  # loss on the assistant answer only
    "max_seq_length": 1024,
    "canary_weight": 2.5,  # canary-word tokens weigh this many times in the loss
    "val_batches": 25,
    "steps_per_report": 10,
    "steps_per_eval": 100,
    "save_every": 100,
    "seed": 0,
    "num_processes": 1,  # >1: data-parallel through `mlx.launch --backend ring`
    # eval / generate
    "max_tokens": 128,
    "eval_limit": 0,  # test examples evaluated (0 = all)
    # build-tiny (the offline student for the tiny preset and tests)
    "tiny_hidden_size": 128,
    "tiny_num_layers": 4,
    "tiny_num_heads": 4,
    "tiny_num_kv_heads": 2,
    "tiny_intermediate_size": 0,  # 0: 4 x hidden
    "tiny_vocab_size": 1024,
    "tiny_pretrain_steps": 300,
    "tiny_pretrain_batch_size": 16,
    "tiny_pretrain_lr": 2e-3,
    # Untied: the input embeddings start at N(0, 1) and the answers' bigrams are learnt in a
    # fraction of the steps (tied ones must start tiny, drowned by the blocks' outputs).
    "tiny_tie_embeddings": False,
    # False: pre-train on user + answer only (~40 % shorter sequences, cheaper steps); it
    # measured worse: the model then stumbles on the system prompt it meets in use.
    "tiny_pretrain_system": True,
}
