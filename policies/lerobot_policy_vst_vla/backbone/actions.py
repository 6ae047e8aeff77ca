"""Added special tokens: the discrete action tokens (VST's VLA, OpenVLA-style) and the policy's `<|state|>`."""

from __future__ import annotations

from tokenizers import AddedToken


def action_token(i: int) -> str:
    return f"<|action_{i}|>"


def add_special_tokens(model, processor, names: list[str]) -> list[int]:
    """Add `names` as special tokens and grow the embeddings (and lm_head) to fit; return their ids.

    Idempotent: tokens already present are reused and the model is resized only when the tokenizer
    outgrows the embedding matrix (real Qwen checkpoints have spare rows, so they are not resized).
    New rows start at the mean of the old ones (transformers' mean_resizing): a neutral guess.
    Special: they are control symbols, and decoding answers with skip_special_tokens drops them.
    """
    tokenizer = processor.tokenizer
    missing = [t for t in names if t not in tokenizer.added_tokens_encoder]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return tokenizer.convert_tokens_to_ids(list(names))


def add_action_tokens(model, processor, n: int = 256) -> list[int]:
    """Add `<|action_0|>`…`<|action_{n-1}|>` (`add_special_tokens`); return their ids.

    The ids are contiguous, so a bin is `id - ids[0]`.
    """
    if n <= 0:
        raise ValueError(f"number of action tokens must be positive, got {n}")
    ids = add_special_tokens(model, processor, [action_token(i) for i in range(n)])
    if ids != list(range(ids[0], ids[0] + n)):
        raise ValueError(f"action token ids are not contiguous ({ids[0]}…{ids[-1]}): the tokenizer already "
                         "held some <|action_i|> tokens in another order")
    return ids
