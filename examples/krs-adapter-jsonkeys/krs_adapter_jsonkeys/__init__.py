"""An example krs-plugin adapter shipped as a package of its own: ``jsonkeys`` (adapter.py) keeps
each zone's DNSSEC keys in one JSON file; lab.py is what the storage-level scenario table needs
to drive it. Nothing here is imported until krs asks for ``adapter.type: jsonkeys``."""
