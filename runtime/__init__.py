"""What every quillgpt program and library stands on: errors, options, atomic files, the device.

Nothing here imports ``model/``, ``data/`` or ``training/``; they all import from here.
"""
