"""petlab: a notebook-first workbench for privacy-enhancing technologies in
cross-border payments.

A payments gateway and an e-wallet partner train a customer-engagement model jointly
with CrypTen MPC, each party in its own process holding only its own data, and every
run compares it with plaintext training on pooled data and with each party alone.

Start with :func:`petlab.pipeline.run_poc` (or ``petlab poc`` / ``make poc``).
"""

__version__ = "0.1.0"
