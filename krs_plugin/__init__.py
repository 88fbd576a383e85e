"""krs-plugin: a Key Receiver Service that installs DNSSEC keys pushed by a KDC."""

import warnings

__version__ = "0.1.0"

# dnspython's DNSSEC module names DSA classes when it is imported; cryptography 51 deprecated
# DSA and warns on that, on every command's stderr. This project neither makes nor accepts DSA
# keys (docs/payload.md lists the algorithms), so the warning says nothing to an operator.
warnings.filterwarnings(
    "ignore",
    message="DSA is deprecated",
    module=r"dns\.dnssecalgs\.dsa",
)
