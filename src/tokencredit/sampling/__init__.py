"""Generation backends that turn prompts into sampled responses with behaviour log-probs and entropies."""

from tokencredit.sampling.hf import Samples, TransformersSampler, token_logprob_entropy
from tokencredit.sampling.segment_tree import sample_segment_tree

__all__ = ["Samples", "TransformersSampler", "sample_segment_tree", "token_logprob_entropy"]
