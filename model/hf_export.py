"""Our GPT as a Hugging Face folder that ``transformers`` loads without custom code.

- ``classic`` (learned positions, LayerNorm) -> ``GPT2LMHeadModel``: the names are GPT-2's already;
  the four projections are stored (in, out) as GPT-2's Conv1D wants, absent biases become zeros and
  grouped k/v heads are repeated, which GPT-2 has no room to share.
- ``modern`` (rotary, RMSNorm, QK-norm) -> ``NanoChatForCausalLM``: NanoChat's norms carry no gain, so
  each of ours folds into the bias-free matrix it feeds; its rotary turns the other way, which negating
  the second half of every q and k head undoes (q.k never sees the sign).

Both cut the embedding and head to the tokenizer's ids: the padded rows are never sampled.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from runtime.errors import CheckpointError

from .config import GPTConfig
from .gpt import GPT

GPT2_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu2": "relu2"}
NANOCHAT_ACT = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "relu2": "relu2"}


def _refuse(cfg: GPTConfig, arch: str, checks: list[tuple[str, bool]]) -> None:
    for name, bad in checks:
        if bad:
            raise CheckpointError(f"{name}={getattr(cfg, name)!r} has no equivalent in {arch}; "
                                  "this model cannot be exported to transformers")


def flip_second_half(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Negate rows head_dim/2.. of each head: our rotary and NanoChat's differ by that sign (its own inverse)."""
    w = w.reshape(n_heads, 2, head_dim // 2, -1).clone()
    w[:, 1] = -w[:, 1]
    return w.reshape(n_heads * head_dim, -1)


def gpt2_export(gpt: GPT, vocab: int, eot: int | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(GPT2Config dict, GPT-2 state dict) of a learned-position LayerNorm model."""
    cfg = gpt.config
    _refuse(cfg, "GPT-2", [("norm", cfg.norm != "layernorm"), ("qk_norm", cfg.qk_norm),
                           ("logit_softcap", cfg.logit_softcap is not None), ("embed_norm", cfg.embed_norm)])
    sd = {k: v.detach().float() for k, v in gpt.state_dict().items()}
    C, nh, nkv, hs = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim

    def bias(name: str, n: int) -> torch.Tensor:
        return sd.get(name, torch.zeros(n))

    out = {"transformer.wte.weight": sd["transformer.wte.weight"][:vocab],
           "transformer.wpe.weight": sd["transformer.wpe.weight"]}
    norms = [f"transformer.h.{i}.{n}" for i in range(cfg.n_layer) for n in ("ln_1", "ln_2")] + ["transformer.ln_f"]
    for n in norms:
        out[n + ".weight"], out[n + ".bias"] = sd[n + ".weight"], bias(n + ".bias", C)
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        w, b = sd[p + "attn.c_attn.weight"], bias(p + "attn.c_attn.bias", C + 2 * nkv * hs)
        if nkv != nh:  # every query head gets its own copy of its group's key and value head
            def repeat(t: torch.Tensor) -> torch.Tensor:
                return t.reshape(nkv, hs, *t.shape[1:]).repeat_interleave(nh // nkv, 0).reshape(C, *t.shape[1:])
            (q, k, v), (qb, kb, vb) = w.split([C, nkv * hs, nkv * hs]), b.split([C, nkv * hs, nkv * hs])
            w, b = torch.cat([q, repeat(k), repeat(v)]), torch.cat([qb, repeat(kb), repeat(vb)])
        out[p + "attn.c_attn.weight"], out[p + "attn.c_attn.bias"] = w.t(), b
        for m in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            w = sd[p + m + ".weight"]
            out[p + m + ".weight"], out[p + m + ".bias"] = w.t(), bias(p + m + ".bias", w.size(0))
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"][:vocab]
    drop = cfg.dropout
    hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab,
          "n_positions": cfg.block_size, "n_embd": C, "n_layer": cfg.n_layer, "n_head": nh,
          "n_inner": cfg.mlp_ratio * C, "activation_function": GPT2_ACT[cfg.activation],
          "resid_pdrop": drop, "embd_pdrop": drop, "attn_pdrop": cfg.attn_dropout, "layer_norm_epsilon": cfg.norm_eps,
          "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
          "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": eot, "eos_token_id": eot,
          "pad_token_id": None, "dtype": "float32"}
    return hf, {k: v.contiguous() for k, v in out.items()}


def rescaled_embeddings(e: torch.Tensor, eps: float) -> torch.Tensor:
    """Rows e' with rms_norm(e', eps) == e, for a model trained without ``embed_norm``; needs every row's RMS < 1."""
    m = e.double().pow(2).mean(-1, keepdim=True)
    bad = (m.squeeze(-1) >= 1).nonzero().flatten().tolist()
    if bad:
        raise CheckpointError(f"embed_norm=False and embedding rows {bad[:5]} have RMS >= 1: NanoChat normalises "
                              "its embeddings, so this run cannot be exported exactly (retrain with embed_norm=true)")
    return (e.double() * (eps / (1 - m)).sqrt()).to(e.dtype)


def nanochat_export(gpt: GPT, vocab: int, eot: int | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(NanoChatConfig dict, NanoChat state dict) of a rotary RMSNorm QK-norm model."""
    cfg = gpt.config
    _refuse(cfg, "NanoChat", [("norm", cfg.norm != "rmsnorm"), ("qk_norm", not cfg.qk_norm), ("bias", cfg.bias)])
    sd = {k: v.detach().float() for k, v in gpt.state_dict().items()}
    C, nh, nkv, hs = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim
    out = {}
    for i in range(cfg.n_layer):
        p, h = f"transformer.h.{i}.", f"model.layers.{i}."
        q, k, v = (sd[p + "attn.c_attn.weight"] * sd[p + "ln_1.weight"]).split([C, nkv * hs, nkv * hs])
        out[h + "self_attn.q_proj.weight"] = flip_second_half(q, nh, hs)
        out[h + "self_attn.k_proj.weight"] = flip_second_half(k, nkv, hs)
        out[h + "self_attn.v_proj.weight"] = v
        out[h + "self_attn.o_proj.weight"] = sd[p + "attn.c_proj.weight"]
        out[h + "mlp.fc1.weight"] = sd[p + "mlp.c_fc.weight"] * sd[p + "ln_2.weight"]
        out[h + "mlp.fc2.weight"] = sd[p + "mlp.c_proj.weight"]
    wte = sd["transformer.wte.weight"][:vocab]
    head = sd["lm_head.weight"][:vocab] * sd["transformer.ln_f.weight"]
    emb = wte if cfg.embed_norm else rescaled_embeddings(wte, cfg.norm_eps)
    tie = bool(cfg.tie_embeddings and cfg.embed_norm and torch.equal(head, emb))
    out["model.embed_tokens.weight"] = emb
    if not tie:
        out["lm_head.weight"] = head
    hf = {"model_type": "nanochat", "architectures": ["NanoChatForCausalLM"], "vocab_size": vocab,
          "hidden_size": C, "intermediate_size": cfg.mlp_ratio * C, "num_hidden_layers": cfg.n_layer,
          "num_attention_heads": nh, "num_key_value_heads": nkv, "max_position_embeddings": cfg.block_size,
          "hidden_act": NANOCHAT_ACT[cfg.activation], "attention_dropout": 0.0, "rms_norm_eps": cfg.norm_eps,
          "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
          "final_logit_softcapping": cfg.logit_softcap, "attention_bias": False, "tie_word_embeddings": tie,
          "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, "dtype": "float32"}
    return hf, {k: v.contiguous() for k, v in out.items()}


def hf_export(gpt: GPT, vocab: int, eot: int | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json dict, safetensors state dict) of ``gpt`` in the HF architecture that reproduces it.

    ``vocab``: the tokenizer's id count (the head's padded rows are cut); ``eot``: its EOT id or None.
    """
    cfg = gpt.config
    if cfg.vocab_size < vocab:
        raise CheckpointError(f"the model has {cfg.vocab_size} token rows but the tokenizer {vocab} ids: "
                              "the tokenizer does not belong to this model")
    if cfg.pos_emb == "learned":
        return gpt2_export(gpt, vocab, eot)
    return nanochat_export(gpt, vocab, eot)


# ---------------------------------------------------------------------------- the way back


_NANOCHAT_BACK = {"relu2": "relu2", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}


def nanochat_config(hf: dict[str, Any], **overrides: Any) -> GPTConfig:
    """The modern GPTConfig of a NanoChat config.json dict; a field ours cannot reproduce is refused by name."""
    rope = hf.get("rope_parameters") or {}
    checks = [("rope_parameters.rope_type", rope.get("rope_type", "default") != "default"),
              ("attention_bias", bool(hf.get("attention_bias", False))),
              ("hidden_act", hf.get("hidden_act", "relu2") not in _NANOCHAT_BACK)]
    for name, bad in checks:
        if bad:
            value = rope.get("rope_type") if name.startswith("rope") else hf.get(name.split(".")[0])
            raise CheckpointError(f"NanoChat config {name}={value!r} is not supported by quillgpt")
    try:
        C, nh = hf["hidden_size"], hf["num_attention_heads"]
        inner = hf.get("intermediate_size", 8192)
        if inner % C:
            raise CheckpointError(f"NanoChat config intermediate_size={inner} is not a multiple of hidden_size={C}")
        if C % nh or hf.get("head_dim") not in (None, C // nh):
            raise CheckpointError(f"NanoChat config head_dim={hf.get('head_dim')} does not fit hidden_size={C} "
                                  f"and {nh} heads (quillgpt needs hidden_size / heads)")
        args = dict(block_size=hf.get("max_position_embeddings", 2048), vocab_size=hf["vocab_size"],
                    n_layer=hf["num_hidden_layers"], n_head=nh, n_kv_head=hf.get("num_key_value_heads") or nh,
                    n_embd=C, mlp_ratio=inner // C, activation=_NANOCHAT_BACK[hf.get("hidden_act", "relu2")],
                    norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(rope.get("rope_theta", 10000.0)),
                    # a missing key is transformers' default cap, not "no cap"
                    logit_softcap=hf.get("final_logit_softcapping", 15.0), zero_init=False, dropout=0.0,
                    embed_norm=True, tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
        return GPTConfig.modern(**{**args, **overrides})
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"not a usable NanoChat config.json ({type(e).__name__}: {e})") from None


def load_nanochat_tensors(gpt: GPT, hf: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Load a NanoChat state dict into ``gpt`` (built from ``nanochat_config``): norm gains all 1, rotary
    sign undone, q/k/v stacked; a tied NanoChat head is its embedding."""
    cfg = gpt.config
    tie = bool(hf.get("tie_word_embeddings", False))
    C, nh, nkv, hs = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim
    try:
        emb = tensors["model.embed_tokens.weight"].float()
        ones = torch.ones(C)
        sd = {"transformer.wte.weight": emb if cfg.embed_norm else F.rms_norm(emb, (C,), eps=cfg.norm_eps),
              "transformer.ln_f.weight": ones}
        if not cfg.tie_embeddings:
            sd["lm_head.weight"] = emb if tie else tensors["lm_head.weight"].float()
        for i in range(cfg.n_layer):
            p, h = f"transformer.h.{i}.", f"model.layers.{i}."
            t = {k: tensors[h + k].float() for k in ("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                                     "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                                     "mlp.fc1.weight", "mlp.fc2.weight")}
            sd[p + "ln_1.weight"], sd[p + "ln_2.weight"] = ones, ones
            sd[p + "attn.c_attn.weight"] = torch.cat([flip_second_half(t["self_attn.q_proj.weight"], nh, hs),
                                                      flip_second_half(t["self_attn.k_proj.weight"], nkv, hs),
                                                      t["self_attn.v_proj.weight"]])
            sd[p + "attn.c_proj.weight"] = t["self_attn.o_proj.weight"]
            sd[p + "mlp.c_fc.weight"] = t["mlp.fc1.weight"]
            sd[p + "mlp.c_proj.weight"] = t["mlp.fc2.weight"]
        missing, unexpected = gpt.load_state_dict(sd, strict=False)
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"NanoChat weights do not match their config.json ({type(e).__name__}: "
                              f"{str(e)[:120]})") from None
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise CheckpointError(f"NanoChat weights lack {sorted(set(missing) - {'lm_head.weight'})[:4]}")


# ---------------------------------------------------------------------------- a run folder -> an HF folder


def tokens_trained(meta: dict[str, Any]) -> int | None:
    """Tokens the checkpoint was trained on: its iteration x the run's tokens per iteration (config.json's
    ``resolved`` section); None when the folder does not say (a model saved outside train.py)."""
    it, per = meta.get("iter"), (meta.get("resolved") or {}).get("tokens_per_iter")
    if isinstance(it, int) and isinstance(per, int):
        return it * per
    return meta["tokens"] if isinstance(meta.get("tokens"), int) else None


def model_card(meta: dict[str, Any], hf: dict[str, Any], tok: Any) -> str:
    """README.md with Hub metadata: what the model is, what it was trained on, how well, and how."""
    train = meta.get("train") or {}
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags:", "- quillgpt", f"- {hf['model_type']}", "---", "",
             f"# {hf['architectures'][0]} exported from quillgpt", "",
             f"- architecture: {hf['architectures'][0]}, tokenizer: {tok.kind} ({tok.vocab_size} ids)"]
    if train.get("dataset"):
        lines.append(f"- training data: {train['dataset']}")
    tokens = tokens_trained(meta)
    if tokens is not None:
        lines.append(f"- tokens trained: {tokens:,}")
    if isinstance(meta.get("iter"), int):
        lines.append(f"- iterations: {meta['iter']:,}")
    if isinstance(meta.get("val_loss"), (int, float)):
        lines.append(f"- final val loss: {meta['val_loss']:.4f}")
    if isinstance(meta.get("val_bpb"), (int, float)):
        lines.append(f"- val bits per byte: {meta['val_bpb']:.4f}")
    if train:
        args = " ".join(f"--{k}={v}" for k, v in sorted(train.items()) if v is not None and not isinstance(v, dict))
        lines += ["", "Trained with:", "", "```", f"python train.py {args}", "```"]
    if tok.kind == "char":
        lines += ["", "The character tokenizer has no unknown token: text with a character outside its vocabulary "
                      "is refused on encode."]
    lines += ["", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained(PATH); model = AutoModelForCausalLM.from_pretrained(PATH)", "```", ""]
    return "\n".join(lines)


def write_hf_folder(gpt: GPT, tok: Any, meta: dict[str, Any], folder: Any) -> dict[str, Any]:
    """Write config.json, generation_config.json, model.safetensors, the tokenizer files and README.md."""
    from pathlib import Path

    from safetensors.torch import save_file

    from data.hf_tokenizer import write_hf_tokenizer
    from runtime.atomic import atomic_path, atomic_write_json

    folder = Path(folder)
    eot = getattr(tok, "eot", None)
    hf, tensors = hf_export(gpt, tok.vocab_size, eot)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_json(folder / "generation_config.json", {"bos_token_id": eot, "eos_token_id": eot,
                                                          "pad_token_id": eot})
    write_hf_tokenizer(tok, folder, gpt.config.block_size)
    with atomic_path(folder / "README.md") as tmp:
        tmp.write_text(model_card(meta, hf, tok), encoding="utf-8")
    atomic_write_json(folder / "config.json", hf)
    return hf


def push_to_hub(folder: Any, repo_id: str) -> str:
    """Upload ``folder`` to the hub repo ``repo_id`` (created if needed); the token is huggingface_hub's usual one."""
    try:
        from huggingface_hub import create_repo, upload_folder

        create_repo(repo_id, exist_ok=True)
        return str(upload_folder(repo_id=repo_id, folder_path=str(folder)))
    except Exception as e:  # no token, no network, a refused name: one line, not HTTP internals
        raise CheckpointError(f"could not push to the hub repo {repo_id!r} ({type(e).__name__}: {str(e)[:100]}); "
                              "log in with `hf auth login` or set HF_TOKEN, and check the network") from None
