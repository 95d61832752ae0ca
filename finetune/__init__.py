"""Fine-tune reasoning models on chain-of-thought data: the engine, in wings by verb.

- `models/`: load a model (`load.load_model`), its backend, the embedded model, adapters, LoRA merge;
- `data/`: read rows (`sources`), turn them into prompts and training text (`prompts`), split reasoning
  from answer (`think`);
- `generate/`: stream a reply (`reply.stream_reply`), the fast decoder, chat panes;
- `train/`: `trainer.start_training` (returns a `job.TrainingJob`), recipes, FP8 matmuls;
- `evaluate/`: base vs fine-tuned on held-out rows, and how long that takes;
- `export/`: adapter, merged and GGUF folders;
- `config.py` (the typed settings and each closed choice), `runs.py` (the run folder), `hub.py`.

Nothing here imports the app (`ui/`). Run from the command line with
`python -m finetune train|preview|eval|chat|export|push|runs`.
"""
