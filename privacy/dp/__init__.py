"""Sample-level DP of each owner's training: Opacus DP-SGD (``sgd.py``), accounting
(``accounting.py``) and the owner's epsilon ledger with its budget policy (``epsilon_ledger.py``);
owner-level DP's per-owner mechanism: quantised update and Skellam noise share (``owner_level.py``)."""
