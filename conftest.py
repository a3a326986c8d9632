"""Doctest set-up: pytest runs the docstring examples of sparseout_jax, models and train with the
fast suite (`--doctest-modules` over the packages in pyproject.toml). Each example imports what it
uses: nothing is injected into its namespace, so it runs as pasted into a fresh interpreter.
"""

# The programs' entry points define absl flags on import; two in one process collide, and they hold
# no examples (tests run them as subprocesses).
collect_ignore_glob = ["train/*/main.py", "train/autoencoder/sweep.py"]
