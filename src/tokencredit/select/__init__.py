"""Select stage: → `keep [B]` bool, which responses enter the loss."""

from tokencredit.select import d3s, dynamic_filter, negative_samples  # noqa: F401  (registers)
