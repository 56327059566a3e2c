"""Training stages after the one-shot solve: BQPO (block-wise), E2E-OQP (end to end), and the
per-block checkpoint that makes a compression run resumable."""
