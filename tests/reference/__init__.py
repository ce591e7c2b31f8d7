"""Independent plain-PyTorch references used by the parity tests (never imported by the package)."""
