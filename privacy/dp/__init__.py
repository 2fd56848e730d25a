"""Sample-level DP of each owner's training: Opacus DP-SGD (``sgd.py``), accounting
(``accounting.py``) and the owner's epsilon ledger with its budget policy (``epsilon_ledger.py``)."""
