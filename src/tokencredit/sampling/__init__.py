"""Generation backends that turn prompts into sampled responses with behaviour log-probs and entropies."""

from tokencredit.sampling.hf import Samples, TransformersSampler, token_logprob_entropy

__all__ = ["Samples", "TransformersSampler", "token_logprob_entropy"]
