"""lpasrn: license-plate super-resolution trainer (LP-ASRN)."""

__version__ = "0.1.0"
