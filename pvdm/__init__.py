"""pvdm: reproducibility pipeline for PVDM (CVPR 2023)."""

__version__ = "0.1.0"
