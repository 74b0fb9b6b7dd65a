"""What an SD1.5 diffusers folder holds besides weights, for code that writes one (the toy world's export, the test
zoo): the scheduler config the downloads carry and a byte-level CLIP BPE tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

SD15_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    steps_offset=1, clip_sample=False, set_alpha_to_one=False,
)
CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def gpt2_byte_encoder() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    unprintable = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable}
    mapping.update({b: chr(256 + i) for i, b in enumerate(unprintable)})
    return dict(sorted(mapping.items()))


def save_clip_tokenizer(folder: Path, merges: list[tuple[str, str]] = ()):
    """A CLIP BPE tokenizer over the 256 byte characters (alone and word-final), so any text tokenizes, plus the
    tokens that `merges` make; saved with save_pretrained as the downloads are."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(gpt2_byte_encoder().values())
    tokens = chars + [c + "</w>" for c in chars] + [left + right for left, right in merges] + list(CLIP_SPECIAL_TOKENS)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges))
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                              pad_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    return tokenizer
