"""Select stages: `select` → `keep [B]` bool, which responses enter the loss; `token_select` → `[B,T]` bool,
which tokens enter the loss and its normaliser."""

from tokencredit.select import d3s, dynamic_filter, low_probability, negative_samples  # noqa: F401  (registers)
