"""Training programs (``python -m train.<program>.main``) and their shared toolkit ``train.common``."""
