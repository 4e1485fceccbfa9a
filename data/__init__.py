"""Text -> tokens -> batches: corpus sources, tokenizers, preparation and the batch loader.

Modules are imported directly (``from data.loader import BatchLoader``) so that importing
one part never pulls in the heavy dependencies of another. Nothing here imports ``model/``.
"""
