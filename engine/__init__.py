"""mvclam.engine: molecule views, models, losses, checkpoints (and later store, search, captioning)."""
