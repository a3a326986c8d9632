"""Figure 1 sweep (paper section 4.1): backprop, dropout and sparseout q in {1, 1.25, ..., 3} on one seed.

Every run shares the seed (same initial weights, same noise keys) and the data order; only the
regulariser differs. The base fields are those of ``default.py``; ``sweep_runs`` lists the runs.
"""

import ml_collections

from train.autoencoder.configs import default

Q_VALUES = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)


def get_config() -> ml_collections.ConfigDict:
  """Return the Figure 1 sweep config (base training config + ``sweep_runs``)."""
  c = default.get_config()
  c.sweep_runs = "backprop,dropout," + ",".join(f"q={q:g}" for q in Q_VALUES)
  return c
