"""Market-state prompts, teacher answers (rules, mlx-lm, OpenAI-compatible), canary datasets."""
