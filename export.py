"""Export a quillgpt run to a Hugging Face folder that transformers loads as it is (no custom code).

    python export.py --out_dir=out --to=hf_model
    python export.py --out_dir=out --to=hf_model --checkpoint=latest --push_to_hub=user/name

classic runs become GPT2LMHeadModel, modern runs NanoChatForCausalLM; the folder also holds
tokenizer.json + tokenizer_config.json (AutoTokenizer encodes as ours) and a model card.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from runtime.errors import UsageError
from runtime.options import opt, parse, run_main


@dataclass
class ExportOptions:
    out_dir: str = opt("out", "run folder written by train.py")
    to: str = opt("", "folder to write the Hugging Face model into (must not hold a run)")
    checkpoint: str = opt("auto", "which checkpoint: best, latest, or auto = best if saved, else latest",
                          choices=("auto", "best", "latest"))
    gpt2_ranks: str | None = opt(None, "a local gpt2.tiktoken rank file for gpt2-tokenizer runs offline; "
                                       "none = $QUILLGPT_GPT2_RANKS, else tiktoken's download")
    push_to_hub: str = opt("", "then upload the folder to this hub repo (user/name); empty = do not push")


def main(argv: Sequence[str] | None = None) -> int:
    o = parse(ExportOptions, argv, prog="export.py", description=__doc__, config_files=False)
    if not o.to:
        raise UsageError("--to is required: the folder to write the Hugging Face model into")
    from model.checkpoint import checkpoint_folder, holds_run, load_model, tokenizer_home
    from model.hf_export import push_to_hub, write_hf_folder
    from data.tokenizer import load_tokenizer

    if holds_run(o.to):
        raise UsageError(f"{o.to} holds a training run ({', '.join(holds_run(o.to))}); choose another --to")
    folder, which = checkpoint_folder(o.out_dir, o.checkpoint)
    gpt, meta = load_model(folder)
    spec, home = tokenizer_home(folder, meta)
    tok = load_tokenizer(spec, home, gpt2_ranks=o.gpt2_ranks)
    hf = write_hf_folder(gpt, tok, meta, o.to)
    print(f"wrote {o.to}: {hf['architectures'][0]} from {folder} ({which})")
    if o.push_to_hub:
        print(f"pushed: {push_to_hub(o.to, o.push_to_hub)}")
    return 0


if __name__ == "__main__":
    run_main(main)
