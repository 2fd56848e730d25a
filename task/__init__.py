"""The ML task both sides use: model loading + LoRA (``model.py``), the tiny model (``tiny.py``),
data formats (``data.py``), demo data (``demo_data.py``), local training and evaluation (``train.py``)."""
