"""dfarchive: archive sequencing run folders into verified OpenPGP-encrypted tarballs."""

__version__ = "0.1.0"
