"""``tenseal``: homomorphic encryption (BFV by default, or CKKS); the server adds ciphertexts it cannot read.

``backend.py`` (the owner side and the server side), ``bfv.py`` and ``ckks.py`` (the two encodings;
BFV's fixed-point digits and their bounds), ``context.py`` (contexts and their bytes), ``config.py``
(parameters, chosen for the cohort), ``checks.py`` (owners' per-update checks), ``keys.py`` (key
generation, sealing to owners, installing), ``global_codec.py`` (the encrypted global the server holds).
"""
