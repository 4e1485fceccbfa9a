"""quillgpt's network and generation: ``from model import GPT, GPTConfig``.

The run-folder format (saving, loading, GPT-2 import) is ``model.checkpoint``; generation is
``GPT.generate`` / ``GPT.generate_stream`` (``model.generate``).
"""

from .checkpoint import from_pretrained, load_model, save_model, unwrap
from .config import GPTConfig
from .gpt import GPT
from .kv_cache import KVCache
from runtime.errors import CheckpointError

__all__ = ["GPT", "GPTConfig", "KVCache", "CheckpointError", "from_pretrained", "load_model", "save_model",
           "unwrap"]
