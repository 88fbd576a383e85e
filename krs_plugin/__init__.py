"""krs-plugin: a Key Receiver Service that installs DNSSEC keys pushed by a KDC."""

__version__ = "0.1.0"
