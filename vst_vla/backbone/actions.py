"""Discrete action tokens (VST's VLA, OpenVLA-style): one added token per action bin."""

from __future__ import annotations

from tokenizers import AddedToken


def action_token(i: int) -> str:
    return f"<|action_{i}|>"


def add_action_tokens(model, processor, n: int = 256) -> list[int]:
    """Add `<|action_0|>`…`<|action_{n-1}|>` and grow the embeddings (and lm_head) to fit; return their ids.

    Idempotent: tokens already present are reused and the model is resized only when the tokenizer
    outgrows the embedding matrix (real Qwen checkpoints have spare rows, so they are not resized).
    The ids are contiguous, so a bin is `id - ids[0]`.
    """
    if n <= 0:
        raise ValueError(f"number of action tokens must be positive, got {n}")
    tokenizer = processor.tokenizer
    names = [action_token(i) for i in range(n)]
    missing = [t for t in names if t not in tokenizer.added_tokens_encoder]
    # Special: they are control symbols, and decoding answers with skip_special_tokens drops them.
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(names)
    if ids != list(range(ids[0], ids[0] + n)):
        raise ValueError(f"action token ids are not contiguous ({ids[0]}…{ids[-1]}): the tokenizer already "
                         "held some <|action_i|> tokens in another order")
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        # New rows start at the mean of the old ones (transformers' mean_resizing): a neutral guess.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return ids
