"""The training program's parts: options, optimizers, the run's phases, dashboards, distributed setup.

``train.py`` is the loop; ``training.setup.set_up`` makes a run phase by phase, and the
``training.trainer.Trainer`` it returns holds that run and the phases the loop calls.
"""
