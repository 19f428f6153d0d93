"""Looking at training: plots, and the token-credit HTML report (which tokens get the credit)."""

from tokencredit.inspect.report import credit_concentration, credit_report

__all__ = ["credit_concentration", "credit_report"]
