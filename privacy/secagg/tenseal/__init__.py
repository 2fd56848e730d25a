"""``tenseal``: CKKS homomorphic encryption; the server adds ciphertexts it cannot read.

``ckks.py`` (parameters, encryption, the backend), ``keys.py`` (key generation, sealing to
owners, installing), ``global_codec.py`` (the encrypted global the server holds).
"""
