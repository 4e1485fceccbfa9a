"""The training program's parts: options, optimizers, the run's phases, dashboards, distributed setup.

``train.py`` is the loop; ``training.trainer.Trainer`` holds one run and its phases.
"""
