"""``tenseal``: homomorphic encryption (BFV by default, or CKKS); the server adds ciphertexts it cannot read.

``ckks.py`` (encryption, the backend, both schemes), ``config.py`` (parameters, chosen for the
cohort), ``checks.py`` (owners' per-update checks), ``bfv.py`` (BFV's fixed-point digit encoding and
its bounds), ``keys.py`` (key generation, sealing to owners, installing),
``global_codec.py`` (the encrypted global the server holds).
"""
