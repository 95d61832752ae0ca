"""Speed benchmark of the engine against the plain Hugging Face path and Unsloth (`python -m bench`)."""
