"""Fine-tune reasoning models on chain-of-thought data.

The verbs, each in the module named for its concern: `models.load_model`, `formats.prepare_dataset`,
`train.start_training` (returns a `job.TrainingJob`); chat is `finetune.generate.reply.stream_reply`.
Run from the command line with `python -m finetune train|preview`.
"""
