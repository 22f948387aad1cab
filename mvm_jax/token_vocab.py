"""VIMPAC's VQ token vocabulary: the codes and the special token ids around them.

Token ids (DALL-E vocabulary 8192): codes 0..8191, PAD 8193, [MASK] 8196,
8197 embedding rows; `special_token_ids(vocab_size)` derives them for any
vocabulary size. Plain Python (no jax): the model, the token datasets and the
maskers read it without importing one another.
"""

from __future__ import annotations

from typing import NamedTuple

VOCAB_SIZE = 8192  # DALL-E dVAE codebook


class SpecialTokens(NamedTuple):
  """Token ids around a VQ vocabulary of `vocab_size` codes (0 .. vocab_size - 1)."""

  vocab_size: int
  pad_id: int
  mask_id: int
  num_embeddings: int  # rows of the token embedding table


def special_token_ids(vocab_size: int = VOCAB_SIZE) -> SpecialTokens:
  """The reference's layout: PAD = V + 1, [MASK] = V + 4, V + 5 embedding rows
  (V + 0, V + 2, V + 3 are unused; [CLS] is a separate learned vector)."""
  return SpecialTokens(vocab_size, vocab_size + 1, vocab_size + 4, vocab_size + 5)


PAD_ID = special_token_ids().pad_id  # 8193
MASK_ID = special_token_ids().mask_id  # 8196
NUM_EMBEDDINGS = special_token_ids().num_embeddings  # 8197
