"""quillgpt's network and generation: ``from model import GPT, GPTConfig``."""

from .config import GPTConfig
from .generate import generate, generate_stream
from .gpt import GPT
from .kv_cache import KVCache
from .weights import CheckpointError, load_model, save_model, unwrap

__all__ = ["GPT", "GPTConfig", "KVCache", "CheckpointError", "generate", "generate_stream", "load_model",
           "save_model", "unwrap"]
