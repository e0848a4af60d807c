"""agrepa: reproducible experiment suite for AG-REPA (attribution-guided
representation alignment for audio flow matching)."""

__version__ = "0.1.0"
