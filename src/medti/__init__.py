"""medti: textual inversion for medical imaging on one GPU (or a CPU)."""

__version__ = "0.1.0"
