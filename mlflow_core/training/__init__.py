"""The one shared trainer and what it needs: data, models, checkpoints, seeding. Imports torch."""
