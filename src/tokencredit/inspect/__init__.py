"""Looking at training: plots (and, later, the token-credit HTML report)."""
