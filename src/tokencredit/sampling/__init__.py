"""Generation backends that turn prompts into sampled responses with behaviour log-probs (and, for the
transformers sampler, entropies). `make_sampler` picks one; `tokencredit.sampling.vllm` (vLLM) is imported only
when asked for."""

from tokencredit.sampling.base import SAMPLERS, Sampler, make_sampler
from tokencredit.sampling.hf import Samples, TransformersSampler, token_logprob_entropy
from tokencredit.sampling.segment_tree import sample_segment_tree

__all__ = ["SAMPLERS", "Sampler", "Samples", "TransformersSampler", "make_sampler", "sample_segment_tree",
           "token_logprob_entropy"]
